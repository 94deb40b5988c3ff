// The control plane in distributed mode, over real proxies sharing a real
// redis-server: the fleet's workers, fleet counts, Redis state and readiness.
import assert from "node:assert/strict";
import { RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { connectRequest, startProxy, type TestProxy } from "./_helpers/proxy.ts";
import { startUpstream } from "./_helpers/upstream.ts";
import { BufferedConn, readHead, statusOf, waitFor } from "./_helpers/raw.ts";
import { ProxyRateLimiter } from "../mod.ts";

async function tunnel(tp: TestProxy, authority: string): Promise<BufferedConn> {
  const c = await BufferedConn.connect(tp.addr);
  await c.write(connectRequest(authority));
  const head = await readHead(c);
  assert.ok(head && statusOf(head) === 200, "the tunnel opens");
  return c;
}

async function get(base: URL, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(new URL(path, base));
  return { status: res.status, body: await res.text() };
}

await redisTest(
  "in distributed mode the admin server lists the fleet's workers and fleet counts, and /readyz is 503 while Redis is down in failure mode closed",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = await startUpstream();
    const options = { redis: redis.url, lease: 1500, redisTimeout: 300 };
    await using a = await startProxy({ ...options, admin: { port: 0 } });
    await using b = await startProxy({ ...options, admin: { port: 0 } });
    const base = a.proxy.adminUrl!;
    const open = [await tunnel(a, up.authority), await tunnel(b, up.authority)];
    try {
      let workers: { adminUrl?: string; open: number }[] = [];
      await waitFor(async () => {
        workers = JSON.parse((await get(base, "/api/workers")).body).workers;
        return workers.length === 2;
      }, () => `two workers, have ${JSON.stringify(workers)}`);
      assert.deepEqual(
        workers.map((w) => w.adminUrl).sort(),
        [a.proxy.adminUrl!.href, b.proxy.adminUrl!.href].sort(),
      );

      let metrics = "";
      await waitFor(async () => {
        metrics = (await get(base, "/metrics")).body;
        return metrics.includes(`dprl_fleet_upstream_connections{host="${up.authority}"} 2\n`);
      }, () => `fleet count 2 in:\n${metrics}`);
      assert.match(metrics, /^dprl_upstream_connections\{host="[^"]+"\} 1$/m);
      assert.match(metrics, /^dprl_redis_up 1$/m);
      assert.match(metrics, /^dprl_redis_call_duration_seconds_count [1-9]\d*$/m);
      const status = JSON.parse((await get(base, "/api/status")).body);
      assert.equal(status.mode, "redis");
      assert.equal(status.redis, "up");
      assert.equal(typeof status.workerId, "string");
      assert.equal((await get(base, "/readyz")).status, 200);

      await redis.kill();
      let ready = { status: 0, body: "" };
      await waitFor(
        async () => (ready = await get(base, "/readyz")).status === 503,
        () => `503 from /readyz, have ${JSON.stringify(ready)}`,
      );
      assert.equal(ready.body, "not ready: Redis unreachable and failure mode is closed\n");
      assert.match((await get(base, "/metrics")).body, /^dprl_redis_up 0$/m);
      assert.equal((await get(base, "/healthz")).status, 200);
    } finally {
      for (const c of open) c.close();
    }
  },
);

await redisTest(
  "in failure mode open /readyz stays 200 while Redis is down",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using tp = await startProxy({
      redis: redis.url,
      redisTimeout: 300,
      failureMode: "open",
      admin: { port: 0 },
    });
    const base = tp.proxy.adminUrl!;
    await using up = await startUpstream();
    (await tunnel(tp, up.authority)).close();
    await redis.kill();
    let metrics = "";
    await waitFor(
      async () => (metrics = (await get(base, "/metrics")).body).includes("dprl_redis_up 0"),
      () => metrics,
    );
    assert.equal((await get(base, "/readyz")).status, 200);
  },
);

await redisTest(
  "a start that fails at the admin port closes what it opened: the worker leaves the fleet's registry",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    using busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const failed = new ProxyRateLimiter({
      redis: redis.url,
      lease: 1500,
      admin: { port: busy.addr.port },
    });
    await assert.rejects(failed.start(), Deno.errors.AddrInUse);
    assert.equal(failed.proxyUrl, null);
    await using b = await startProxy({ redis: redis.url, lease: 1500, admin: { port: 0 } });
    let workers: { adminUrl?: string }[] = [];
    // The failed worker closed its limiter, which took it out of the registry.
    await waitFor(async () => {
      workers = JSON.parse((await get(b.proxy.adminUrl!, "/api/workers")).body).workers;
      return workers.length === 1;
    }, () => `only the running worker, have ${JSON.stringify(workers)}`);
    assert.equal(workers[0].adminUrl, b.proxy.adminUrl!.href);
    await failed.stop();
  },
);
