// The control plane over a real proxy: metrics after real traffic, readiness
// while stopping, limits changed through the API, the admin handler mounted
// in an application's own server, and the command line's admin flags.
import assert from "node:assert/strict";
import { ProxyRateLimiter, VERSION } from "../mod.ts";
import {
  BufferedConn,
  rawExchange,
  readHead,
  readResponse,
  request,
  statusOf,
  text,
  waitFor,
} from "./_helpers/raw.ts";
import { FIXED_BODY, startUpstream, type Upstream } from "./_helpers/upstream.ts";
import { connectRequest, startProxy, type TestProxy } from "./_helpers/proxy.ts";
import { runCli, startCli } from "./_helpers/spawn.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** Opens a CONNECT tunnel to the upstream through the proxy; returns the status and the socket. */
async function tunnel(tp: TestProxy, up: Upstream): Promise<{ status: number; c: BufferedConn }> {
  const c = await BufferedConn.connect(tp.addr);
  await c.write(connectRequest(up.authority));
  const head = await readHead(c);
  assert.ok(head, "a CONNECT answer");
  const status = statusOf(head);
  if (status !== 200) {
    await readResponse(new BufferedConn(c.conn)).catch(() => {});
    c.close();
  }
  return { status, c };
}

/** GETs an admin path and returns the status and the body. */
async function admin(
  base: URL,
  path: string,
  init: RequestInit = {},
): Promise<{ status: number; body: string; type: string | null }> {
  const res = await fetch(new URL(path, base), init);
  return { status: res.status, body: await res.text(), type: res.headers.get("content-type") };
}

/** One sample's value in a Prometheus text exposition, or `undefined`. */
function sample(
  exposition: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).sort();
  for (const line of exposition.split("\n")) {
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = (m[2] ?? "").split(/,(?=[a-z_]+=")/).filter(Boolean).sort();
    if (want.every((w) => have.includes(w)) && have.length === want.length) return Number(m[3]);
  }
  return undefined;
}

Deno.test("metrics after real traffic show admitted, refused, open tunnels, bytes and request kinds", async () => {
  await using up = await startUpstream();
  const host = up.authority;
  await using tp = await startProxy({ hostLimits: { [host]: 1 }, admin: { port: 0 } });
  const base = tp.proxy.adminUrl!;
  assert.ok(base, "adminUrl is set once started");

  const res = await rawExchange(
    tp.addr,
    request("GET", up.url("/fixed"), { Host: host, Connection: "close" }),
  );
  assert.equal(res.status, 200);
  assert.equal(text(res.body), FIXED_BODY);

  const held = await tunnel(tp, up);
  assert.equal(held.status, 200);
  try {
    const refused = await tunnel(tp, up);
    assert.equal(refused.status, 500, "the second tunnel is over the limit of 1");

    let metrics = "";
    await waitFor(async () => {
      metrics = (await admin(base, "/metrics")).body;
      return (sample(metrics, "dprl_bytes_relayed_total", { direction: "downstream" }) ?? 0) >=
        FIXED_BODY.length;
    }, () => `downstream bytes counted:\n${metrics}`);
    const h = { host };
    assert.equal(sample(metrics, "dprl_upstream_connections", h), 1, "the tunnel is open");
    assert.equal(sample(metrics, "dprl_host_limit", h), 1);
    assert.equal(sample(metrics, "dprl_connections_admitted_total", h), 2);
    assert.equal(sample(metrics, "dprl_connections_refused_total", { host, reason: "limit" }), 1);
    assert.equal(sample(metrics, "dprl_requests_total", { kind: "http" }), 1);
    assert.equal(sample(metrics, "dprl_requests_total", { kind: "connect" }), 2);
    assert.ok((sample(metrics, "dprl_client_connections") ?? 0) >= 1);
    assert.ok((sample(metrics, "dprl_bytes_relayed_total", { direction: "upstream" }) ?? 0) > 0);
    assert.equal(sample(metrics, "dprl_build_info", { version: VERSION }), 1);
    assert.ok((sample(metrics, "dprl_connect_duration_seconds_count") ?? 0) >= 2);
    assert.equal(sample(metrics, "dprl_redis_up"), undefined, "no Redis series in memory mode");

    const hosts = JSON.parse((await admin(base, "/api/hosts")).body);
    assert.deepEqual(
      { host: hosts.hosts[0].host, open: hosts.hosts[0].open, limit: hosts.hosts[0].limit },
      { host, open: 1, limit: 1 },
    );
    const status = JSON.parse((await admin(base, "/api/status")).body);
    assert.equal(status.mode, "memory");
    assert.equal(status.proxyUrl, tp.url);
    assert.equal(status.adminUrl, base.href);
    const workers = await admin(base, "/api/workers");
    assert.equal(workers.status, 404, "no fleet in memory mode");
    assert.equal(workers.type, "application/problem+json");
  } finally {
    held.c.close();
  }
});

Deno.test("/readyz answers 503 with the reason while the proxy stops, then the admin port closes", async () => {
  await using up = await startUpstream();
  const proxy = new ProxyRateLimiter({ admin: { port: 0 } });
  await proxy.start();
  const base = proxy.adminUrl!;
  assert.deepEqual(await admin(base, "/readyz"), {
    status: 200,
    body: "ready\n",
    type: "text/plain; charset=utf-8",
  });
  const tp = { addr: { hostname: "127.0.0.1", port: Number(proxy.proxyUrl!.port) } } as TestProxy;
  const held = await tunnel(tp, up);
  assert.equal(held.status, 200);
  const stopped = proxy.stop({ graceMs: 10_000 });
  try {
    const ready = await admin(base, "/readyz");
    assert.equal(ready.status, 503);
    assert.equal(ready.body, "not ready: shutting down\n");
    assert.equal((await admin(base, "/healthz")).status, 200, "alive while draining");
  } finally {
    held.c.close();
    await stopped;
  }
  assert.equal(proxy.adminUrl, null);
  await assert.rejects(fetch(new URL("/healthz", base)), "the admin port is closed");
});

Deno.test("PUT and DELETE /api/limits/{host} change what the proxy enforces", async () => {
  await using up = await startUpstream();
  const host = up.authority;
  await using tp = await startProxy({ rules: { hosts: { [host]: 1 } }, admin: { port: 0 } });
  const base = tp.proxy.adminUrl!;
  const open: BufferedConn[] = [];
  const put = (limit: unknown) =>
    admin(base, `/api/limits/${host}`, {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ limit }),
    });
  try {
    const first = await tunnel(tp, up);
    assert.equal(first.status, 200);
    open.push(first.c);
    assert.equal((await tunnel(tp, up)).status, 500, "limit 1 holds");

    assert.deepEqual(JSON.parse((await put(2)).body), { host, limit: 2 });
    const second = await tunnel(tp, up);
    assert.equal(second.status, 200, "a second tunnel passes at limit 2");
    open.push(second.c);
    assert.equal((await tunnel(tp, up)).status, 500, "limit 2 holds");

    const bad = await put(-1);
    assert.equal(bad.status, 400);
    assert.equal(bad.type, "application/problem+json");
    assert.equal((await tunnel(tp, up)).status, 500, "a refused change changes nothing");

    const removed = await admin(base, `/api/limits/${host}`, { method: "DELETE" });
    assert.deepEqual(JSON.parse(removed.body), { host, limit: 1 });
    open.pop()!.close();
    await tp.waitCount(host, 1);
    assert.equal(
      (await tunnel(tp, up)).status,
      500,
      "without the runtime limit the file's 1 holds",
    );

    const defaults = await admin(base, "/api/limits", {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: '{"default": 3}',
    });
    const table = JSON.parse(defaults.body);
    assert.deepEqual([table.default, table.hosts], [3, { [host]: 1 }]);
    assert.deepEqual(table.sources, { default: "runtime", hosts: { [host]: "file" }, groups: {} });
  } finally {
    for (const c of open) c.close();
  }
});

Deno.test("the admin handler mounts in an application's own Deno.serve with its token", async () => {
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 7 });
  assert.equal(tp.proxy.adminUrl, null, "no admin server without the admin option");
  const handler = tp.proxy.adminHandler({ token: "app-secret" });
  await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
  const base = new URL(`http://127.0.0.1:${server.addr.port}/`);
  assert.equal((await admin(base, "/api/limits")).status, 401);
  const limits = await admin(base, "/api/limits", {
    headers: { authorization: "Bearer app-secret" },
  });
  const table = JSON.parse(limits.body);
  assert.deepEqual([table.default, table.hosts, table.sources.default], [7, {}, "override"]);
  assert.equal((await admin(base, "/healthz")).status, 200);
});

Deno.test("an admin address that is not loopback needs a token", () => {
  assert.throws(
    () => new ProxyRateLimiter({ admin: { port: 0, hostname: "0.0.0.0" } }),
    RangeError,
  );
});

Deno.test("the CLI with --admin-port 0 and --log-format json logs the admin URL as a JSON line and serves /healthz", async () => {
  await using cli = startCli(["--port", "0", "--admin-port", "0", "--log-format", "json"]);
  try {
    const url: string = await waitFor((): string | undefined => {
      for (const line of cli.stderr.split("\n").filter(Boolean)) {
        const record = JSON.parse(line);
        if (/^Admin server listening on /.test(record.message)) return record.url as string;
      }
      return undefined;
    }, () => `the admin URL in:\n${cli.stderr}`) as string;
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    assert.deepEqual(await admin(new URL(url), "/healthz"), {
      status: 200,
      body: "ok\n",
      type: "text/plain; charset=utf-8",
    });
    assert.equal((await admin(new URL(url), "/readyz")).status, 200);
  } finally {
    cli.child.kill("SIGTERM");
  }
  assert.equal(await cli.exit(), 0, cli.transcript);
  const lines = cli.stderr.trim().split("\n");
  assert.ok(lines.length >= 3, cli.stderr);
  for (const line of lines) {
    const record = JSON.parse(line);
    assert.deepEqual(
      Object.keys(record).slice(0, 4),
      ["time", "level", "category", "message"],
      `a JSON log line: ${line}`,
    );
    assert.ok(!Number.isNaN(Date.parse(record.time)));
  }
  assert.ok(lines.some((l) => JSON.parse(l).message === "Proxy stopped"));
});

Deno.test("the CLI refuses a non-loopback admin address without a token in one line, exit 2", async () => {
  for (
    const args of [
      ["--admin-port", "0", "--admin-hostname", "0.0.0.0"],
      ["--admin-port", "70000"],
      ["--log-format", "yaml"],
      ["--metrics-max-hosts", "-1"],
    ]
  ) {
    const r = await runCli(["--port", "0", ...args]);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(
      r.stderr,
      /^dprl: --(admin-hostname|admin-port|log-format|metrics-max-hosts) /,
    );
  }
});

Deno.test("the image's health check passes while /healthz answers, fails when nothing listens, passes without an admin port", async () => {
  await using tp = await startProxy({ admin: { port: 0 } });
  const run = async (env: Record<string, string>): Promise<number> => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-q",
        "--allow-net=127.0.0.1",
        "--allow-env=DPRL_ADMIN_PORT",
        `${ROOT}scripts/healthcheck.ts`,
      ],
      clearEnv: true,
      env: { PATH: Deno.env.get("PATH") ?? "", HOME: Deno.env.get("HOME") ?? "", ...env },
      stdout: "null",
      stderr: "null",
    }).output();
    return out.code;
  };
  assert.equal(await run({ DPRL_ADMIN_PORT: tp.proxy.adminUrl!.port }), 0);
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = String(closed.addr.port);
  closed.close();
  assert.equal(await run({ DPRL_ADMIN_PORT: port }), 1);
  assert.equal(await run({}), 0);
});

Deno.test("a busy admin port fails the start and leaves the proxy port closed", async () => {
  using busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const free = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = free.addr.port;
  free.close();
  const proxy = new ProxyRateLimiter({ port, admin: { port: busy.addr.port } });
  await assert.rejects(proxy.start(), Deno.errors.AddrInUse);
  assert.equal(proxy.proxyUrl, null);
  await assert.rejects(
    Deno.connect({ hostname: "127.0.0.1", port }),
    Deno.errors.ConnectionRefused,
  );
  assert.equal(proxy.adminUrl, null);
  await proxy.stop();
});
