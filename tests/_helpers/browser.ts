/**
 * Headless Chromium for the dashboard test and the screenshot script: the
 * Debian `chromium` package (or `CHROMIUM_PATH`) driven by playwright-core.
 *
 * @module
 */

// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import { type Browser, chromium, type Page } from "npm:playwright-core@1.65.1";

/** The Chromium executable: `CHROMIUM_PATH`, else the first `chromium` found on PATH. */
export function chromiumPath(): string | null {
  const given = Deno.env.get("CHROMIUM_PATH");
  if (given) return given;
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    for (const name of ["chromium", "chromium-browser"]) {
      const path = `${dir}/${name}`;
      try {
        if (Deno.statSync(path).isFile) return path;
      } catch {
        // Not in this directory.
      }
    }
  }
  return null;
}

/** Launches headless Chromium (without its sandbox, which needs a non-root user). */
export function launchChromium(executablePath: string): Promise<Browser> {
  return chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    timeout: 60_000,
  });
}

/**
 * Waits until a script expression is truthy in the page, polling with
 * `page.evaluate` (Playwright's `waitForFunction` polls with `eval`, which the
 * dashboard's Content-Security-Policy forbids). Throws after `ms`.
 */
export async function waitForExpression(page: Page, expression: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await page.evaluate(expression))) {
    if (Date.now() > deadline) {
      throw new Error(`Page never satisfied ${expression} within ${ms} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
