import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { startAdminServer } from "../lib/admin/admin_server.ts";
import { TableAdminSource } from "./_helpers/admin_source.ts";
import { chromiumPath, launchChromium, waitForExpression } from "./_helpers/browser.ts";

const chromium = chromiumPath();
const inCi = Deno.env.get("CI") === "true";
if (chromium === null && !inCi) {
  console.warn(
    "SKIPPED: the dashboard test needs Chromium (apt-get install chromium, or set CHROMIUM_PATH)",
  );
}

/** Finds a host's row in the page (a script expression; the page's DOM is not typed here). */
function row(host: string): string {
  return `[...document.querySelectorAll("#hosts tr")].find((r) => r.dataset.host === ${
    JSON.stringify(host)
  })`;
}

/** The text of a host's usage cell, or null while the row is absent. */
function usage(page: Page, host: string): Promise<string | null> {
  return page.evaluate(`${row(host)}?.querySelector(".usage")?.textContent ?? null`);
}

async function waitForUsage(page: Page, host: string, text: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  let last: string | null = null;
  while (Date.now() < deadline) {
    last = await usage(page, host);
    if (last === text) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.fail(`${host} shows ${JSON.stringify(last)}, not ${JSON.stringify(text)}, after ${ms} ms`);
}

Deno.test({
  name: "the dashboard shows a host at 3 / 3 within 2 s and changes its limit from the page",
  ignore: chromium === null && !inCi,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    assert.ok(chromium !== null, "Chromium is required under CI=true");
    const source = new TableAdminSource({ defaultLimit: 10, hostLimits: { "api.example.com": 3 } });
    source.setPool("api.example.com", 1);
    const hostile = "<img src=x onerror=alert(1)>";
    source.stats.onAdmitted(hostile);
    const admin = await startAdminServer({ source, port: 0, token: "page-token" });
    const browser = await launchChromium(chromium);
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on("pageerror", (err) => errors.push(err.message));
      page.on("dialog", (dialog) => {
        errors.push(`dialog: ${dialog.message()}`);
        dialog.dismiss();
      });
      await page.goto(new URL("/#token=page-token", admin.url).href);
      await waitForUsage(page, "api.example.com", "1 / 3", 10_000);
      assert.equal(new URL(page.url()).hash, "", "the token leaves the address bar");

      // The proxy now holds 3 tunnels to the host.
      source.setPool("api.example.com", 3);
      source.stats.onRefused("api.example.com", "limit");
      await waitForUsage(page, "api.example.com", "3 / 3", 2_000);

      // A host name from a client is shown as text, never as markup.
      const cell = await page.evaluate(`(() => {
        const td = ${row(hostile)}?.querySelector("td.host");
        return td ? { text: td.textContent, children: td.children.length } : null;
      })()`);
      assert.deepEqual(cell, { text: hostile, children: 0 });
      assert.equal(await page.locator("img").count(), 0);

      // Change the limit from the page.
      await page.fill("#f-host", "api.example.com");
      await page.fill("#f-limit", "5");
      await page.click("#set");
      await waitForExpression(
        page,
        `document.getElementById("message")?.textContent?.includes("now 5")`,
        5_000,
      );
      assert.deepEqual(source.changes, ["set api.example.com 5"]);
      assert.equal(source.limitFor("api.example.com"), 5);
      await waitForUsage(page, "api.example.com", "3 / 5", 3_000);
      assert.deepEqual(errors, []);
    } finally {
      await browser.close();
      await admin.close();
    }
  },
});

Deno.test({
  name: "the dashboard asks for the token once and then shows the hosts",
  ignore: chromium === null && !inCi,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    assert.ok(chromium !== null, "Chromium is required under CI=true");
    const source = new TableAdminSource({ defaultLimit: 4 });
    source.setPool("b.example", 2);
    const admin = await startAdminServer({ source, port: 0, token: "asked-token" });
    const browser = await launchChromium(chromium);
    try {
      const page = await browser.newPage();
      const prompts: string[] = [];
      page.on("dialog", (dialog) => {
        prompts.push(dialog.type());
        dialog.accept("asked-token");
      });
      await page.goto(admin.url.href);
      await waitForUsage(page, "b.example", "2 / 4", 10_000);
      assert.deepEqual(prompts, ["prompt"]);
      assert.equal(new URL(page.url()).hash, "");
    } finally {
      await browser.close();
      await admin.close();
    }
  },
});
