import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import type { Page } from "npm:playwright-core@1.65.1";
import { startAdminServer } from "../lib/admin/admin_server.ts";
import { DASHBOARD_CSP, DASHBOARD_HTML } from "../lib/admin/dashboard.ts";
import { TableAdminSource } from "./_helpers/admin_source.ts";
import { chromiumPath, launchChromium, waitForExpression } from "./_helpers/browser.ts";
import { connectRequest, startProxy, type TestProxy } from "./_helpers/proxy.ts";
import { BufferedConn, readHead, statusOf, WAIT_MS, waitFor } from "./_helpers/raw.ts";
import { startUpstream } from "./_helpers/upstream.ts";

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

/** Waits until the page shows `text` as the usage of `host` (it polls the API every second). */
async function waitForUsage(page: Page, host: string, text: string): Promise<void> {
  let last: string | null = null;
  await waitFor(
    async () => (last = await usage(page, host)) === text,
    () => `${host} to show ${JSON.stringify(text)} (shows ${JSON.stringify(last)})`,
  );
}

/** What a host's row shows in its pause badge, or null while the row or the badge is absent. */
interface BadgeView {
  text: string;
  title: string;
  visible: boolean;
}

function pauseBadge(page: Page, host: string): Promise<BadgeView | null> {
  return page.evaluate(`(() => {
    const badge = ${row(host)}?.querySelector(".paused");
    return badge ? { text: badge.textContent, title: badge.title, visible: badge.checkVisibility() } : null;
  })()`);
}

/** Waits until a host's pause badge is visible and shows between 1 and `max` seconds. */
async function waitForPause(page: Page, host: string, max: number): Promise<BadgeView> {
  let last: BadgeView | null = null;
  await waitFor(
    async () => {
      last = await pauseBadge(page, host);
      const seconds = Number(/^paused (\d+) s$/.exec(last?.text ?? "")?.[1]);
      return last !== null && last.visible && seconds >= 1 && seconds <= max;
    },
    () => `${host} to show a pause of 1 to ${max} s (shows ${JSON.stringify(last)})`,
  );
  return last!;
}

/** Opens a CONNECT tunnel to `authority` through the proxy; returns the status and the socket. */
async function tunnel(proxy: TestProxy, authority: string): Promise<[number, BufferedConn]> {
  const c = await BufferedConn.connect(proxy.addr);
  await c.write(connectRequest(authority));
  const head = await readHead(c);
  assert.ok(head, "a CONNECT answer");
  return [statusOf(head), c];
}

/**
 * A test that drives Chromium, given its path: skipped without Chromium,
 * failed under CI=true without it.
 */
function browserTest(name: string, fn: (chromium: string) => Promise<void>): void {
  Deno.test({
    name,
    ignore: chromium === null && !inCi,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      assert.ok(chromium !== null, "Chromium is required under CI=true");
      await fn(chromium);
    },
  });
}

browserTest(
  "the dashboard shows a proxy's 3 tunnels at limit 3, and a limit raised on the page lets a 4th through",
  async (chromium) => {
    await using up = await startUpstream();
    const host = up.authority;
    await using proxy = await startProxy({
      defaultMaxConnectionsPerHost: 10,
      hostLimits: { [host]: 3 },
      admin: { port: 0, token: "page-token" },
    });
    const open: BufferedConn[] = [];
    const browser = await launchChromium(chromium);
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on("pageerror", (err) => errors.push(err.message));
      page.on("dialog", (dialog) => {
        errors.push(`dialog: ${dialog.message()}`);
        dialog.dismiss();
      });
      const [first, c1] = await tunnel(proxy, host);
      open.push(c1);
      assert.equal(first, 200);
      await page.goto(new URL("/#token=page-token", proxy.proxy.adminUrl!).href);
      await waitForUsage(page, host, "1 / 3");
      assert.equal(new URL(page.url()).hash, "", "the token leaves the address bar");

      // Two more tunnels: the host is at its limit, and a fourth is refused.
      for (let i = 0; i < 2; i++) {
        const [status, c] = await tunnel(proxy, host);
        open.push(c);
        assert.equal(status, 200);
      }
      await waitForUsage(page, host, "3 / 3");
      const [refused, c4] = await tunnel(proxy, host);
      c4.close();
      assert.equal(refused, 500, "the 4th tunnel is over the limit of 3");

      // Raise the limit from the page: the proxy enforces the new one.
      await page.fill("#f-host", host);
      await page.fill("#f-limit", "4");
      await page.click("#set");
      await waitForExpression(
        page,
        `document.getElementById("message")?.textContent?.includes("now 4")`,
        WAIT_MS,
      );
      const [fourth, c5] = await tunnel(proxy, host);
      open.push(c5);
      assert.equal(fourth, 200, "the 4th tunnel passes at limit 4");
      await waitForUsage(page, host, "4 / 4");
      const [fifth, c6] = await tunnel(proxy, host);
      c6.close();
      assert.equal(fifth, 500, "the 5th tunnel is over the new limit");
      assert.deepEqual(errors, []);
    } finally {
      for (const c of open) c.close();
      await browser.close();
    }
  },
);

browserTest(
  "the dashboard shows a host name from a client as text, never as markup",
  async (chromium) => {
    const source = new TableAdminSource({ defaultLimit: 10 });
    const hostile = "<img src=x onerror=alert(1)>";
    source.stats.onAdmitted(hostile);
    const admin = await startAdminServer({ source, port: 0 });
    const browser = await launchChromium(chromium);
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on("pageerror", (err) => errors.push(err.message));
      page.on("dialog", (dialog) => {
        errors.push(`dialog: ${dialog.message()}`);
        dialog.dismiss();
      });
      await page.goto(admin.url.href);
      await waitForUsage(page, hostile, "0 / 10");
      const cell = await page.evaluate(`(() => {
        const td = ${row(hostile)}?.querySelector("td.host");
        return td ? { text: td.textContent, children: td.children.length } : null;
      })()`);
      assert.deepEqual(cell, { text: hostile, children: 0 });
      assert.equal(await page.locator("img").count(), 0);
      assert.deepEqual(errors, []);
    } finally {
      await browser.close();
      await admin.close();
    }
  },
);

browserTest("the dashboard asks for the token once and then shows the hosts", async (chromium) => {
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
    await waitForUsage(page, "b.example", "2 / 4");
    assert.deepEqual(prompts, ["prompt"]);
    assert.equal(new URL(page.url()).hash, "");
  } finally {
    await browser.close();
    await admin.close();
  }
});

browserTest(
  "a page on another loopback origin cannot make the admin server reload, by fetch or by form",
  async (chromium) => {
    let reloads = 0;
    await using proxy = await startProxy({
      admin: { port: 0 },
      loadRules: () => {
        reloads++;
        return {};
      },
    });
    const target = new URL("/api/reload", proxy.proxy.adminUrl!).href;
    const html = `<!doctype html><form id="f" method="POST" action="${target}"
      enctype="text/plain"><input name="a" value="b"></form><script>
      (async () => {
        const tries = [
          { method: "POST", mode: "no-cors" },
          { method: "POST", mode: "no-cors", body: "x" },
          { method: "POST", mode: "no-cors", headers: { "content-type": "text/plain" }, body: "{}" },
        ];
        for (const init of tries) await fetch(${JSON.stringify(target)}, init).catch(() => {});
        document.title = "sent";
      })();
    </script>`;
    await using page = Deno.serve(
      { hostname: "127.0.0.2", port: 0, onListen: () => {} },
      () => new Response(html, { headers: { "content-type": "text/html" } }),
    );
    const browser = await launchChromium(chromium);
    try {
      const tab = await browser.newPage();
      await tab.goto(`http://127.0.0.2:${page.addr.port}/`);
      await waitForExpression(tab, `document.title === "sent"`, WAIT_MS);
      const [answer] = await Promise.all([
        tab.waitForNavigation(),
        tab.evaluate(`document.getElementById("f").submit()`),
      ]);
      assert.equal(answer?.status(), 403);
      assert.equal(reloads, 0, "no request of the page reloaded the config");
    } finally {
      await browser.close();
    }
  },
);

browserTest(
  "the dashboard shows the pause a host asked for with a 429 and Retry-After, counting down",
  async (chromium) => {
    let answered = 0;
    await using up = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
      answered++;
      return new Response("busy\n", { status: 429, headers: { "retry-after": "30" } });
    });
    const host = `127.0.0.1:${up.addr.port}`;
    await using proxy = await startProxy({ accessLog: false, admin: { port: 0 } });
    const client = Deno.createHttpClient({ proxy: { url: proxy.url } });
    try {
      const res = await fetch(`http://${host}/`, { client });
      await res.body?.cancel();
      assert.equal(res.status, 429);
    } finally {
      client.close();
    }
    const browser = await launchChromium(chromium);
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on("pageerror", (err) => errors.push(err.message));
      await page.goto(proxy.proxy.adminUrl!.href);
      const badge = await waitForPause(page, host, 30);
      assert.match(badge.title, /Retry-After\) until /);
      const seconds = Number(badge.text.split(" ")[1]);
      await waitForPause(page, host, seconds - 1);
      assert.equal(answered, 1);
      assert.deepEqual(errors, []);
    } finally {
      await browser.close();
    }
  },
);

/** Host rows as `/api/hosts` gives them, with the fields named in `extra`. */
function hostEntry(host: string, open: number, limit: number, extra: Record<string, unknown>) {
  return {
    host,
    open,
    idle: 0,
    queued: 0,
    fleetOpen: null,
    pausedUntil: null,
    limit,
    admitted: open,
    refused: 0,
    ...extra,
  };
}

browserTest(
  "the dashboard shows a host's rate, an adaptive limit with its reason, and a pause given in ms, each only when present",
  async (chromium) => {
    let hosts = [
      hostEntry("a.example", 16, 100, {
        rate: "10/s",
        effectiveLimit: 64,
        limitReason: "latency rose",
        pausedUntil: Date.now() + 12_000,
      }),
      hostEntry("b.example", 2, 10, { effectiveLimit: 10, pausedUntil: Date.now() - 1_000 }),
    ];
    const status = {
      version: "0.0.0-test",
      mode: "memory",
      redis: null,
      ready: { ok: true },
      uptimeSeconds: 1,
      workerId: null,
      proxyUrl: null,
      clientConnections: 0,
      defaultLimit: 10,
    };
    await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/api/status") return Response.json(status);
      if (path === "/api/hosts") return Response.json({ hosts, total: hosts.length });
      return new Response(DASHBOARD_HTML, {
        headers: { "content-type": "text/html", "content-security-policy": DASHBOARD_CSP },
      });
    });
    const browser = await launchChromium(chromium);
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on("pageerror", (err) => errors.push(err.message));
      await page.goto(`http://127.0.0.1:${server.addr.port}/`);
      await waitForUsage(page, "a.example", "16 / 64 (adaptive)");
      const shown = (host: string) =>
        page.evaluate(`(() => {
          const r = ${row(host)};
          const rate = r.querySelector("td.rate");
          return {
            bar: r.querySelector(".bar > i").style.width,
            usageTitle: r.querySelector(".usage").title,
            reason: r.querySelector(".reason")?.textContent ?? null,
            rate: rate.checkVisibility() ? rate.textContent : null,
          };
        })()`);
      assert.deepEqual(await shown("a.example"), {
        bar: "25%",
        usageTitle: "configured limit 100; last change: latency rose",
        reason: "latency rose",
        rate: "10/s",
      });
      await waitForPause(page, "a.example", 12);
      assert.equal(await usage(page, "b.example"), "2 / 10");
      assert.deepEqual(await shown("b.example"), {
        bar: "20%",
        usageTitle: "",
        reason: null,
        rate: "-",
      });
      assert.equal((await pauseBadge(page, "b.example"))?.visible, false);

      // Without a rate on any host the column goes away.
      hosts = [hostEntry("a.example", 3, 100, {})];
      await waitForUsage(page, "a.example", "3 / 100");
      assert.equal((await shown("a.example") as { rate: string | null }).rate, null);
      assert.equal((await pauseBadge(page, "a.example"))?.visible, false);
      assert.deepEqual(errors, []);
    } finally {
      await browser.close();
    }
  },
);
