import assert from "node:assert/strict";
import { createAdminHandler } from "../lib/admin/admin_handler.ts";
import { isLoopback, startAdminServer } from "../lib/admin/admin_server.ts";
import { TableAdminSource } from "./_helpers/admin_source.ts";
import { rawExchange, request, text } from "./_helpers/raw.ts";

const BASE = "http://admin.test";

function call(
  handler: (req: Request) => Promise<Response>,
  method: string,
  path: string,
  body?: string,
  headers: Record<string, string> = {},
): Promise<Response> {
  const init: RequestInit = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = body;
    (init.headers as Record<string, string>)["content-type"] ??= "application/json";
  }
  return handler(new Request(BASE + path, init));
}

async function assertProblem(res: Response, status: number, detail?: RegExp): Promise<void> {
  assert.equal(res.status, status);
  assert.equal(res.headers.get("content-type"), "application/problem+json");
  const body = await res.json();
  assert.equal(body.status, status);
  assert.equal(body.type, "about:blank");
  assert.equal(typeof body.title, "string");
  if (detail) assert.match(body.detail, detail);
}

Deno.test("healthz answers 200 and readyz 503 with the reason while not ready", async () => {
  const source = new TableAdminSource();
  const handler = createAdminHandler(source);
  const health = await call(handler, "GET", "/healthz");
  assert.equal(health.status, 200);
  assert.equal(await health.text(), "ok\n");
  const ready = await call(handler, "GET", "/readyz");
  assert.equal(ready.status, 200);
  await ready.body?.cancel();
  source.readiness = { ok: false, reason: "shutting down" };
  const notReady = await call(handler, "GET", "/readyz");
  assert.equal(notReady.status, 503);
  assert.equal(await notReady.text(), "not ready: shutting down\n");
  const head = await call(handler, "HEAD", "/healthz");
  assert.equal(head.status, 200);
  assert.equal(head.body, null);
});

Deno.test("PUT /api/limits/{host} sets the limit and GET /api/limits shows it", async () => {
  const source = new TableAdminSource({ defaultLimit: 5 });
  const handler = createAdminHandler(source);
  const res = await call(handler, "PUT", "/api/limits/API.Example.com:443", '{"limit": 3}');
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { host: "api.example.com", limit: 3 });
  assert.equal(source.limitFor("api.example.com"), 3);
  const limits = await call(handler, "GET", "/api/limits");
  const table = await limits.json();
  assert.deepEqual([table.default, table.hosts], [5, { "api.example.com": 3 }]);
  assert.deepEqual(table.sources.hosts, { "api.example.com": "runtime" });

  const ipv6 = await call(handler, "PUT", "/api/limits/%5B::1%5D:9000", '{"limit": 2}');
  assert.deepEqual(await ipv6.json(), { host: "[::1]:9000", limit: 2 });

  const removed = await call(handler, "DELETE", "/api/limits/api.example.com");
  assert.deepEqual(await removed.json(), { host: "api.example.com", limit: 5 });
  assert.equal(source.limitFor("api.example.com"), 5);

  const def = await call(handler, "PUT", "/api/limits", '{"default": 7}');
  assert.equal(def.status, 200);
  const after = await def.json();
  assert.deepEqual([after.default, after.hosts], [7, { "[::1]:9000": 2 }]);
  assert.equal(source.table.defaultLimit, 7);
});

Deno.test("bad limit input gets a problem+json 4xx and changes nothing", async () => {
  const source = new TableAdminSource({ defaultLimit: 5, hostLimits: { "a.example": 2 } });
  const handler = createAdminHandler(source);
  const cases: [string, string, string | undefined, number, RegExp, Record<string, string>?][] = [
    ["PUT", "/api/limits/a.example", "{limit: 3}", 400, /not valid JSON/],
    [
      "PUT",
      "/api/limits/a.example",
      '{"limit": -1}',
      400,
      /^limit must be an integer >= 0, got -1$/,
    ],
    ["PUT", "/api/limits/a.example", '{"limit": 2.5}', 400, /^limit must be an integer >= 0/],
    [
      "PUT",
      "/api/limits/a.example",
      '{"limit": "3"}',
      400,
      /^limit must be an integer >= 0, got "3"/,
    ],
    ["PUT", "/api/limits/a.example", '{"limit": 1e400}', 400, /^limit must be an integer >= 0/],
    ["PUT", "/api/limits/a.example", '{"limit": 3, "x": 1}', 400, /^x is not a host rule field/],
    ["PUT", "/api/limits/a.example", "[3]", 400, /\{"limit": N\} or a host rule/],
    ["PUT", "/api/limits/a.example", "{}", 400, /^limit must be an integer >= 0, got nothing/],
    ["PUT", "/api/limits/a.example", '{"rate": "fast"}', 400, /^rate must be a rate such as 10\/s/],
    ["PUT", "/api/limits/a.example", '{"adaptive": "yes"}', 400, /^adaptive must be true or false/],
    [
      "PUT",
      "/api/limits/a.example",
      '{"retry-after-max": "1 m"}',
      400,
      /^retry-after-max must be a duration/,
    ],
    ["PUT", "/api/limits/a.example", "", 400, /not valid JSON/],
    ["PUT", "/api/limits/a.example", '{"limit": 3}', 415, /application\/json/, {
      "content-type": "text/plain",
    }],
    ["PUT", "/api/limits/a.example", `{"limit": ${" ".repeat(70_000)}3}`, 413, /larger/],
    ["PUT", "/api/limits/bad%20host", '{"limit": 3}', 400, /Not a host name/],
    ["PUT", "/api/limits/%E0%A4%A", '{"limit": 3}', 400, /percent-encoding/],
    ["PUT", "/api/limits/a.example%2Fb", '{"limit": 3}', 400, /Not a host name/],
    ["PUT", "/api/limits", '{"default": -4}', 400, /non-negative integer/],
    ["PUT", "/api/limits", '{"limit": 4}', 400, /exactly \{"default"/],
    ["POST", "/api/limits/a.example", '{"limit": 3}', 405, /not allowed/],
    ["GET", "/api/nothing", undefined, 404, /No endpoint/],
    ["GET", "/api/limits/a.example/x", undefined, 404, /No endpoint/],
  ];
  for (const [method, path, body, status, detail, headers] of cases) {
    const res = await call(handler, method, path, body, headers);
    await assertProblem(res, status, detail);
  }
  assert.deepEqual([source.defaultLimit, source.table.entries()], [5, { "a.example": 2 }]);
  assert.deepEqual(source.changes, []);
});

Deno.test("PUT /api/limits/{host} takes a rule's settings too: rate, adaptive, retry-after-max", async () => {
  const source = new TableAdminSource({ defaultLimit: 5 });
  const handler = createAdminHandler(source);
  const body = '{"limit": 3, "rate": "600/m", "adaptive": true, "retry-after-max": "30s"}';
  const res = await call(handler, "PUT", "/api/limits/a.example", body);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {
    host: "a.example",
    limit: 3,
    rate: "600/m",
    adaptive: true,
    "retry-after-max": "30s",
  });
  assert.deepEqual(source.changes, [
    `set a.example {"limit":3,"rate":"600/m","adaptive":true,"retry-after-max":"30s"}`,
  ]);
});

Deno.test("a wrong method gets 405 with an Allow header", async () => {
  const handler = createAdminHandler(new TableAdminSource());
  const res = await call(handler, "DELETE", "/api/limits");
  await assertProblem(res, 405);
  assert.equal(res.headers.get("allow"), "GET, PUT, HEAD");
  const host = await call(handler, "GET", "/api/limits/a.example");
  assert.equal(host.headers.get("allow"), "PUT, DELETE");
  await host.body?.cancel();
  const metrics = await call(handler, "POST", "/metrics", "{}");
  assert.equal(metrics.headers.get("allow"), "GET, HEAD");
  await metrics.body?.cancel();
});

Deno.test("GET /api/hosts lists hosts busiest first with their counters", async () => {
  const source = new TableAdminSource({ defaultLimit: 4, hostLimits: { "b.example": 3 } });
  source.setPool("a.example", 1, 1);
  source.setPool("b.example", 3, 0);
  source.stats.onAdmitted("b.example");
  source.stats.onRefused("b.example", "limit");
  source.stats.onRefused("b.example", "limit");
  source.stats.onUpstreamError("c.example", "dns_error");
  const handler = createAdminHandler(source);
  const res = await call(handler, "GET", "/api/hosts");
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.total, 3);
  assert.deepEqual(body.hosts.map((h: { host: string }) => h.host), [
    "b.example",
    "a.example",
    "c.example",
  ]);
  assert.deepEqual(body.hosts[0], {
    host: "b.example",
    open: 3,
    idle: 0,
    queued: 0,
    fleetOpen: null,
    pausedUntil: null,
    limit: 3,
    effectiveLimit: null,
    limitReason: null,
    rate: null,
    admitted: 1,
    refused: 2,
    refusedByReason: {
      limit: 2,
      limiter_unavailable: 0,
      queue_timeout: 0,
      queue_full: 0,
      paused: 0,
      rate: 0,
    },
    upstreamErrors: {},
  });
  assert.deepEqual(body.hosts[2].upstreamErrors, { dns_error: 1 });

  const top = await (await call(handler, "GET", "/api/hosts?limit=1")).json();
  assert.equal(top.hosts.length, 1);
  assert.equal(top.total, 3);
  await assertProblem(await call(handler, "GET", "/api/hosts?limit=0"), 400, /limit/);
  await assertProblem(await call(handler, "GET", "/api/hosts?limit=x"), 400, /limit/);

  const one = await (await call(handler, "GET", "/api/hosts/A.example:80")).json();
  assert.equal(one.host, "a.example");
  assert.equal(one.idle, 1);
  const quiet = await (await call(handler, "GET", "/api/hosts/quiet.example")).json();
  assert.deepEqual([quiet.open, quiet.limit, quiet.admitted], [0, 4, 0]);
});

Deno.test("GET /api/status reports version, mode, Redis, worker and addresses", async () => {
  const source = new TableAdminSource({
    workers: [{ id: "w1", hostname: "box", pid: 42, version: "0.0.0-test", startedAt: 0, open: 2 }],
  });
  source.redis = false;
  const handler = createAdminHandler(source);
  const status = await (await call(handler, "GET", "/api/status")).json();
  assert.equal(status.version, "0.0.0-test");
  assert.equal(status.mode, "redis");
  assert.equal(status.redis, "down");
  assert.equal(status.workerId, "w1");
  assert.equal(status.proxyUrl, "http://127.0.0.1:8080/");
  assert.ok(status.uptimeSeconds >= 60);
  const workers = await (await call(handler, "GET", "/api/workers")).json();
  assert.deepEqual(workers.workers.map((w: { id: string }) => w.id), ["w1"]);

  const memory = createAdminHandler(new TableAdminSource());
  const mstatus = await (await call(memory, "GET", "/api/status")).json();
  assert.equal(mstatus.mode, "memory");
  assert.equal(mstatus.redis, null);
  await assertProblem(await call(memory, "GET", "/api/workers"), 404, /distributed mode/);
});

Deno.test("the dashboard page is self-contained and locked down by its CSP", async () => {
  const res = await call(createAdminHandler(new TableAdminSource()), "GET", "/");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/html; charset=utf-8");
  const csp = res.headers.get("content-security-policy") ?? "";
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'sha256-/);
  const html = await res.text();
  assert.doesNotMatch(html, /(src|href)="(https?:)?\/\//, "no external resource");
  assert.doesNotMatch(html, /innerHTML/, "text is set with textContent");
});

Deno.test("with a token every endpoint but the health checks and the page needs the bearer", async () => {
  const source = new TableAdminSource();
  const handler = createAdminHandler(source, { token: "s3cret-token" });
  for (const path of ["/healthz", "/readyz", "/"]) {
    const res = await call(handler, "GET", path);
    assert.equal(res.status, 200, path);
    await res.body?.cancel();
  }
  for (const path of ["/metrics", "/api/status", "/api/hosts", "/api/limits", "/api/nothing"]) {
    for (
      const auth of [
        undefined,
        "Bearer wrong",
        "Bearer s3cret-tokenX",
        "Basic s3cret-token",
        "Bearer",
      ]
    ) {
      const res = await call(handler, "GET", path, undefined, auth ? { authorization: auth } : {});
      await assertProblem(res, 401);
      assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="dprl admin"');
    }
    const ok = await call(handler, "GET", path, undefined, {
      authorization: "Bearer s3cret-token",
    });
    assert.equal(ok.status, path === "/api/nothing" ? 404 : 200, path);
    await ok.body?.cancel();
  }
  const put = await call(handler, "PUT", "/api/limits/a.example", '{"limit": 1}');
  await assertProblem(put, 401);
  assert.deepEqual(source.changes, []);
  assert.throws(() => createAdminHandler(source, { token: "" }), RangeError);
  assert.throws(() => createAdminHandler(source, { token: "two words" }), RangeError);
});

Deno.test("the admin server serves on Deno.serve with a free port and the token", async () => {
  const source = new TableAdminSource({ hostLimits: { "a.example": 2 } });
  source.setPool("a.example", 2);
  const admin = await startAdminServer({ source, port: 0, token: "t0ken" });
  try {
    assert.equal(admin.url.hostname, "127.0.0.1");
    assert.notEqual(admin.url.port, "0");
    const health = await fetch(new URL("/healthz", admin.url));
    assert.equal(await health.text(), "ok\n");
    const denied = await fetch(new URL("/metrics", admin.url));
    assert.equal(denied.status, 401);
    await denied.body?.cancel();
    const metrics = await fetch(new URL("/metrics", admin.url), {
      headers: { authorization: "Bearer t0ken" },
    });
    assert.match(await metrics.text(), /^dprl_upstream_connections\{host="a.example"\} 2$/m);
    const put = await fetch(new URL("/api/limits/a.example", admin.url), {
      method: "PUT",
      headers: { authorization: "Bearer t0ken", "content-type": "application/json" },
      body: JSON.stringify({ limit: 9 }),
    });
    assert.deepEqual(await put.json(), { host: "a.example", limit: 9 });
    assert.equal(source.limitFor("a.example"), 9);
  } finally {
    await admin.close();
  }
  await assert.rejects(fetch(new URL("/healthz", admin.url)));
});

Deno.test("a non-loopback admin address without a token is refused", async () => {
  const source = new TableAdminSource();
  await assert.rejects(
    startAdminServer({ source, port: 0, hostname: "0.0.0.0" }),
    (err: unknown) =>
      err instanceof RangeError && /^Admin address 0\.0\.0\.0 is not a loopback/.test(err.message),
  );
  await assert.rejects(startAdminServer({ source, port: 70000 }), RangeError);
  assert.ok(isLoopback("127.0.0.1"));
  assert.ok(isLoopback("127.1.2.3"));
  assert.ok(isLoopback("::1"));
  assert.ok(isLoopback("[::1]"));
  assert.ok(isLoopback("localhost"));
  assert.ok(!isLoopback("0.0.0.0"));
  assert.ok(!isLoopback("::"));
  assert.ok(!isLoopback("10.0.0.1"));
});

Deno.test("without a token the admin server answers only loopback host names", async () => {
  const source = new TableAdminSource({ hostLimits: { "a.example": 2 } });
  const admin = await startAdminServer({ source, port: 0 });
  try {
    const put = (host: string) =>
      rawExchange(
        admin.url,
        request("PUT", "/api/limits/a.example", {
          Host: host,
          "Content-Type": "application/json",
          Connection: "close",
        }, '{"limit": 9}'),
      );
    const rebound = await put(`attacker.example:${admin.url.port}`);
    assert.equal(rebound.status, 403);
    assert.match(text(rebound.body), /loopback host names/);
    assert.equal(source.limitFor("a.example"), 2);
    for (const host of [`localhost:${admin.url.port}`, `127.0.0.1:${admin.url.port}`]) {
      const res = await put(host);
      assert.equal(res.status, 200, host);
    }
    assert.equal(source.limitFor("a.example"), 9);
  } finally {
    await admin.close();
  }
});

Deno.test("a bug in the source is a 500, a Redis failure a 503, and only the handler's own checks a 400", async () => {
  const source = new TableAdminSource({ defaultLimit: 5 });
  const handler = createAdminHandler(source);
  source.setHostLimit = () => {
    throw new TypeError("Cannot read properties of undefined (reading 'set')");
  };
  await assertProblem(
    await call(handler, "PUT", "/api/limits/a.example", '{"limit": 3}'),
    500,
    /Admin request failed: Cannot read properties/,
  );
  source.setHostLimit = () => Promise.reject(new Error("Redis did not answer within 300 ms"));
  await assertProblem(
    await call(handler, "PUT", "/api/limits/a.example", '{"limit": 3}'),
    503,
    /The limit was not changed: Redis did not answer/,
  );
  source.setDefaultLimit = () => {
    throw new RangeError("Invalid array length");
  };
  await assertProblem(await call(handler, "PUT", "/api/limits", '{"default": 3}'), 500);
  // A pattern the rules refuse is bad input, found before the source is asked.
  await assertProblem(
    await call(handler, "PUT", "/api/limits/a*b.example", '{"limit": 3}'),
    400,
    /Host "a\*b\.example"/,
  );
  assert.deepEqual(source.changes, []);
});
