// The control plane as a target: a client of one proxy must not change the
// fleet's limits through a sibling's admin server, and a web page of another
// origin must not change anything. Real proxies on a real redis-server, real
// clients and raw sockets.
import assert from "node:assert/strict";
import type { ProxyRateLimiter } from "../mod.ts";
import { RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { startProxy, type TestProxy } from "./_helpers/proxy.ts";
import {
  BufferedConn,
  header,
  readHead,
  readResponse,
  request,
  statusOf,
  text,
  waitFor,
} from "./_helpers/raw.ts";

/** The proxy reads the registry every 5 s: three reads at most. */
const FLEET_REFRESH_BOUND = 15_000;

/** The status of a CONNECT through `tp` to `authority`, and the open connection. */
async function connect(tp: TestProxy, authority: string): Promise<[number, BufferedConn]> {
  const c = await BufferedConn.connect(tp.addr);
  await c.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  const head = await readHead(c);
  if (head === null) throw new Error("No answer to the CONNECT");
  return [statusOf(head), c];
}

async function connectStatus(tp: TestProxy, authority: string): Promise<number> {
  const [status, c] = await connect(tp, authority);
  c.close();
  return status;
}

/** Sends a request for `url` through the proxy as plain HTTP; the body is dropped. */
async function throughProxy(tp: TestProxy, url: URL, init: RequestInit = {}): Promise<Response> {
  using client = Deno.createHttpClient({ proxy: { url: tp.url } });
  const res = await fetch(url, { ...init, client });
  await res.body?.cancel();
  return res;
}

async function defaultLimit(proxy: ProxyRateLimiter): Promise<number> {
  return (await (await fetch(new URL("/api/limits", proxy.adminUrl!))).json()).default;
}

await redisTest(
  "a proxy refuses as destinations the admin and proxy ports of every fleet worker, in every spelling, and forgets a worker that left",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    const options = { redis: redis.url, lease: 1500, redisTimeout: 500, admin: { port: 0 } };
    await using a = await startProxy({ ...options, rules: { default: 9 } });
    const b = await startProxy({ ...options, rules: { default: 9 } });
    let stopped = false;
    try {
      const adminB = b.proxy.adminUrl!;
      const portB = Number(adminB.port);
      // A learns of B from the worker registry.
      await waitFor(
        async () => (await connectStatus(a, `127.0.0.1:${portB}`)) === 403,
        "a CONNECT through A to B's admin port is refused",
        FLEET_REFRESH_BOUND,
      );
      const [status, tunnel] = await connect(a, `localhost:${portB}`);
      tunnel.close();
      assert.equal(status, 403);
      for (
        const authority of [`[::ffff:127.0.0.1]:${portB}`, `127.1:${portB}`, b.url.slice(7, -1)]
      ) {
        assert.equal(await connectStatus(a, authority), 403, authority);
      }
      // Plain HTTP: the worker list and a change of the fleet's default.
      const list = await throughProxy(a, new URL("/api/workers", adminB));
      assert.equal(list.status, 403);
      assert.match(list.headers.get("proxy-status") ?? "", /destination_ip_prohibited/);
      const put = await throughProxy(a, new URL("/api/limits", adminB), {
        method: "PUT",
        headers: { "content-type": "application/json" },
        body: '{"default":1}',
      });
      assert.equal(put.status, 403);
      assert.equal(await defaultLimit(b.proxy), 9, "the fleet's default is unchanged");

      // A worker that left is no longer protected: its port is just closed.
      await b.proxy.stop({ graceMs: 100 });
      stopped = true;
      await waitFor(
        async () => (await connectStatus(a, `127.0.0.1:${portB}`)) === 502,
        "B's old admin port is an ordinary (closed) destination again",
        FLEET_REFRESH_BOUND,
      );
    } finally {
      if (!stopped) await b.proxy.stop({ graceMs: 100 });
    }
  },
);

await redisTest(
  "in distributed mode an admin server without a token refuses changes, also from a client of a proxy that is no fleet member, plain and in a CONNECT tunnel",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    // A is unknown to the fleet (memory mode, no registry): only B can defend itself.
    await using a = await startProxy();
    await using b = await startProxy({
      redis: redis.url,
      redisTimeout: 500,
      rules: { default: 9 },
      admin: { port: 0 },
    });
    const adminB = b.proxy.adminUrl!;

    const plain = await BufferedConn.connect(a.addr);
    try {
      await plain.write(
        request("PUT", new URL("/api/limits", adminB).href, {
          host: adminB.host,
          "content-type": "application/json",
        }, '{"default":1}'),
      );
      const res = await readResponse(plain);
      assert.equal(res.status, 403, text(res.body));
      assert.equal(header(res.head, "content-type"), "application/problem+json");
      assert.match(text(res.body), /needs an admin token/);
    } finally {
      plain.close();
    }

    const [status, tunnel] = await connect(a, adminB.host);
    try {
      assert.equal(status, 200, "A does not know B's admin port");
      await tunnel.write(
        request("PUT", "/api/limits", {
          host: adminB.host,
          "content-type": "application/json",
        }, '{"default":1}'),
      );
      const res = await readResponse(tunnel);
      assert.equal(res.status, 403, text(res.body));
    } finally {
      tunnel.close();
    }
    assert.equal(await defaultLimit(b.proxy), 9, "the fleet's default is unchanged");

    // Reading stays open; a change with the token passes.
    await using c = await startProxy({
      redis: redis.url,
      redisTimeout: 500,
      admin: { port: 0, token: "fleet-secret" },
    });
    const ok = await fetch(new URL("/api/limits", c.proxy.adminUrl!), {
      method: "PUT",
      headers: { "content-type": "application/json", authorization: "Bearer fleet-secret" },
      body: '{"default":4}',
    });
    assert.equal(ok.status, 200, await ok.text());
    await waitFor(async () => (await defaultLimit(b.proxy)) === 4, "B applies the fleet's change");
  },
);

Deno.test("a state-changing admin request from another origin, or with a body that is not JSON, changes nothing", async () => {
  let reloads = 0;
  await using tp = await startProxy({
    admin: { port: 0 },
    loadRules: () => {
      reloads++;
      return { default: 3 };
    },
  });
  const reload = (headers: Record<string, string>) =>
    fetch(new URL("/api/reload", tp.proxy.adminUrl!), { method: "POST", headers, body: "x" });
  const base = tp.proxy.adminUrl!;
  const refused: [Record<string, string>, number][] = [
    [{ origin: "http://127.0.0.2:8000", "content-type": "text/plain" }, 403],
    [{ origin: "http://127.0.0.2:8000", "content-type": "application/json" }, 403],
    [{ origin: "null", "content-type": "application/json" }, 403],
    [{ "sec-fetch-site": "cross-site", "content-type": "application/json" }, 403],
    [{ "sec-fetch-site": "same-site", "content-type": "application/json" }, 403],
    [{ "content-type": "text/plain" }, 415],
    [{ origin: base.origin, "content-type": "application/x-www-form-urlencoded" }, 415],
  ];
  for (const [headers, status] of refused) {
    const res = await reload(headers);
    assert.equal(res.status, status, `${JSON.stringify(headers)}: ${await res.text()}`);
  }
  const put = await fetch(new URL("/api/limits/a.example", base), {
    method: "PUT",
    headers: { origin: "http://evil.example", "content-type": "text/plain" },
    body: '{"limit":1}',
  });
  assert.equal(put.status, 403, await put.text());
  assert.equal(reloads, 0, "no reload ran");
  assert.equal(tp.proxy.rules.hosts, undefined, "no limit changed");

  // The same origin (as the dashboard), or no browser at all (curl), passes.
  const same = await fetch(new URL("/api/reload", base), {
    method: "POST",
    headers: { origin: base.origin, "sec-fetch-site": "same-origin" },
  });
  assert.equal(same.status, 200, await same.text());
  const curl = await fetch(new URL("/api/reload", base), { method: "POST" });
  assert.equal(curl.status, 200, await curl.text());
  assert.equal(reloads, 2);
});
