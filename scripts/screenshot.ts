/**
 * Renders the dashboard to `docs/dashboard.png` (the README's picture) in
 * headless Chromium, against an admin server showing a small example fleet.
 *
 * `deno run -A scripts/screenshot.ts [output.png]`
 *
 * @module
 */

import denoJson from "../deno.json" with { type: "json" };
import { startAdminServer } from "../lib/admin/admin_server.ts";
import { TableAdminSource } from "../tests/_helpers/admin_source.ts";
import { chromiumPath, launchChromium, waitForExpression } from "../tests/_helpers/browser.ts";

const output = Deno.args[0] ?? new URL("../docs/dashboard.png", import.meta.url).pathname;
const executable = chromiumPath();
if (executable === null) {
  console.error("screenshot: Chromium not found (apt-get install chromium, or set CHROMIUM_PATH)");
  Deno.exit(2);
}

const VERSION = denoJson.version;
const now = Date.now();
const source = new TableAdminSource({
  version: VERSION,
  defaultLimit: 20,
  hostLimits: { "api.github.com": 3, "registry.npmjs.org": 8, "s3.amazonaws.com": 50 },
  workers: [
    {
      id: "proxy-a-7f3c",
      hostname: "proxy-a",
      pid: 4121,
      version: "0.1.0",
      startedAt: now - 7_200_000,
      open: 31,
      adminUrl: "http://10.0.0.11:9090/",
    },
    {
      id: "proxy-b-19e2",
      hostname: "proxy-b",
      pid: 3980,
      version: "0.1.0",
      startedAt: now - 7_140_000,
      open: 27,
      adminUrl: "http://10.0.0.12:9090/",
    },
    {
      id: "proxy-c-c0d1",
      hostname: "proxy-c",
      pid: 4410,
      version: "0.1.0",
      startedAt: now - 1_800_000,
      open: 19,
      adminUrl: "http://10.0.0.13:9090/",
    },
  ],
});
const hosts: [string, number, number, number, number][] = [
  // host, open here, idle here, fleet open, admitted
  ["api.github.com", 1, 0, 3, 1_840],
  ["registry.npmjs.org", 3, 1, 7, 12_406],
  ["s3.amazonaws.com", 12, 4, 38, 30_112],
  ["pypi.org", 2, 2, 5, 2_270],
  ["deb.debian.org", 4, 1, 11, 9_054],
  ["internal-billing.svc:8443", 1, 0, 2, 311],
];
for (const [host, open, idle, fleet, admitted] of hosts) {
  source.setPool(host, open, idle, fleet);
  source.stats.host(host).admitted = admitted;
}
source.stats.host("api.github.com").refused.limit = 410;
source.stats.clientConnections = 43;

const admin = await startAdminServer({ source, port: 0 });
const browser = await launchChromium(executable);
try {
  const page = await browser.newPage({
    viewport: { width: 1280, height: 720 },
    deviceScaleFactor: 1,
  });
  await page.emulateMedia({ colorScheme: "light" });
  await page.goto(admin.url.href);
  await page.waitForSelector('#hosts tr[data-host="api.github.com"]');
  // Refusals between two polls give the refusals-per-second column a value.
  source.stats.host("api.github.com").refused.limit += 24;
  await waitForExpression(
    page,
    `[...document.querySelectorAll("#hosts .refusals")].some((td) => td.textContent !== "0.0")`,
    5_000,
  );
  await page.fill("#f-host", "api.github.com");
  await page.fill("#f-limit", "5");
  await page.screenshot({ path: output, fullPage: true });
  console.log(`wrote ${output}`);
} finally {
  await browser.close();
  await admin.close();
}
