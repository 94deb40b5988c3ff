// Adaptive limits across a fleet: three proxies share one limit per host,
// its state in Redis, on one server and on a Cluster.
import assert from "node:assert/strict";
import {
  ADAPTIVE,
  adaptiveView,
  assertGoal,
  hammer,
  staticGoodput,
  UPSTREAM,
} from "./_helpers/adaptive_goal.ts";
import { startCapacityUpstream } from "./_helpers/capacity_upstream.ts";
import { waitFor } from "./_helpers/raw.ts";
import { RedisClusterServers, RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { ProxyRateLimiter } from "../mod.ts";

await redisTest(
  "--adaptive with three proxies on one Redis: one limit for the fleet, the same goal",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = startCapacityUpstream(UPSTREAM);
    const fleet: ProxyRateLimiter[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const p = new ProxyRateLimiter({
          port: 0,
          hostname: "127.0.0.1",
          redis: redis.url,
          ...ADAPTIVE,
        });
        fleet.push(p);
        await p.start();
      }
      const [run, goodput] = await Promise.all([
        hammer(up, fleet.map((p) => p.proxyUrl!.href)),
        staticGoodput(),
      ]);
      assertGoal(run, goodput);
      // The state lives in Redis under the host's hash tag.
      const limit = Number(await redis.cli("HGET", `dprl:{${up.authority}}:a`, "limit"));
      assert.ok(limit >= 1 && limit <= 64, `limit ${limit}`);
    } finally {
      await Promise.all(fleet.map((p) => p.stop({ graceMs: 200 })));
    }
  },
);

await redisTest(
  "--adaptive with three proxies on a Redis Cluster: the fleet's one limit grows, and 503s back it off for all",
  "server",
  async () => {
    await using cluster = await RedisClusterServers.start();
    let failing = false;
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async () => {
      if (failing) return new Response("down\n", { status: 503 });
      await new Promise((done) => setTimeout(done, 5)); // the host's service time
      return new Response("ok\n");
    });
    await using _server = { [Symbol.asyncDispose]: () => server.shutdown() };
    const host = `127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
    const fleet: ProxyRateLimiter[] = [];
    let stop = false;
    const clients: Promise<void>[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const p = new ProxyRateLimiter({
          port: 0,
          hostname: "127.0.0.1",
          redis: { cluster: cluster.nodes },
          adaptive: true,
          defaultMaxConnectionsPerHost: 16,
        });
        fleet.push(p);
        await p.start();
      }
      for (let i = 0; i < 15; i++) {
        clients.push((async () => {
          const client = Deno.createHttpClient({ proxy: { url: fleet[i % 3].proxyUrl!.href } });
          try {
            // Bounded in count; stopped once the test has seen what it waits for.
            for (let n = 0; n < 20_000 && !stop; n++) {
              const res = await fetch(`http://${host}/`, { client });
              await res.body?.cancel();
            }
          } finally {
            client.close();
          }
        })());
      }
      const views = () => Promise.all(fleet.map((p) => adaptiveView(p, host)));
      let seen = await views();
      await waitFor(
        async () => (seen = await views()).every((v) => (v.limit ?? 0) >= 4),
        () => `a limit of 4 or more on every proxy (seen ${JSON.stringify(seen)})`,
      );
      failing = true;
      await waitFor(
        async () => (seen = await views()).every((v) => v.reason === "backoff-drop"),
        () => `a back-off on every proxy (seen ${JSON.stringify(seen)})`,
      );
    } finally {
      stop = true;
      await Promise.all(clients);
      await Promise.all(fleet.map((p) => p.stop({ graceMs: 200 })));
    }
  },
);
