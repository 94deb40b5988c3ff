// Adaptive limits through real proxies: an upstream that serves 4 requests
// at a time and fails past 12 in flight, 40 clients hammering it through
// dprl with --adaptive --max-connections 64 --queue-timeout 10s. The limit
// finds what the host serves: few 503s, a small queue at the host, and the
// goodput of a well-chosen static limit.
import assert from "node:assert/strict";
import { connectRequest, startProxy } from "./_helpers/proxy.ts";
import { BufferedConn, readHead, statusOf, waitFor } from "./_helpers/raw.ts";
import { startEchoUpstream } from "./_helpers/upstream.ts";
import { type CapacityUpstream, startCapacityUpstream } from "./_helpers/capacity_upstream.ts";
import { RedisClusterServers, RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { ProxyRateLimiter, type ProxyRateLimiterOptions } from "../mod.ts";

const UPSTREAM = { capacity: 4, serviceMs: 50, maxInFlight: 12 };
const RUN_MS = 10_000;

/** What a run of 40 clients for 10 s saw at the upstream. */
interface Run {
  /** Share of the upstream's answers that were 503. */
  dropped: number;
  /** Median in flight at the upstream, at each arrival. */
  medianInFlight: number;
  /** 200 answers per second. */
  goodput: number;
}

/** 40 clients, spread over `proxies`, send requests one after the other for 10 s. */
async function hammer(up: CapacityUpstream, proxies: string[]): Promise<Run> {
  const start = performance.now();
  await Promise.all(Array.from({ length: 40 }, async (_, i) => {
    const client = Deno.createHttpClient({ proxy: { url: proxies[i % proxies.length] } });
    try {
      // Bounded in time and in count.
      for (let n = 0; n < 10_000 && performance.now() - start < RUN_MS; n++) {
        const res = await fetch(up.url, { client });
        await res.body?.cancel();
      }
    } finally {
      client.close();
    }
  }));
  const seconds = (performance.now() - start) / 1000;
  const ok = up.answers.get(200) ?? 0;
  const failed = up.answers.get(503) ?? 0;
  const sorted = [...up.inflight].sort((a, b) => a - b);
  return {
    dropped: failed / Math.max(1, ok + failed),
    medianInFlight: sorted[Math.floor(sorted.length / 2)] ?? 0,
    goodput: ok / seconds,
  };
}

/** The goodput of a static limit of 4 on this machine, measured once. */
let staticGoodput: Promise<number> | undefined;
function baseline(): Promise<number> {
  staticGoodput ??= (async () => {
    await using up = startCapacityUpstream(UPSTREAM);
    await using tp = await startProxy({ defaultMaxConnectionsPerHost: 4, queueTimeout: 10_000 });
    return (await hammer(up, [tp.url])).goodput;
  })();
  return staticGoodput;
}

function assertGoal(run: Run, goodput: number): void {
  const seen = JSON.stringify({ ...run, staticGoodput: goodput });
  assert.ok(run.dropped <= 0.02, `at most 2% 503s: ${seen}`);
  assert.ok(run.medianInFlight <= 8, `median in flight at most 8: ${seen}`);
  assert.ok(run.goodput >= 0.8 * goodput, `goodput at least 0.8x the static 4's: ${seen}`);
}

const ADAPTIVE = {
  adaptive: true,
  defaultMaxConnectionsPerHost: 64,
  queueTimeout: 10_000,
} satisfies ProxyRateLimiterOptions;

Deno.test("--adaptive through one proxy: few 503s, a short queue at the host, the goodput of a static 4", async () => {
  const goodput = await baseline();
  await using up = startCapacityUpstream(UPSTREAM);
  await using tp = await startProxy(ADAPTIVE);
  const run = await hammer(up, [tp.url]);
  assertGoal(run, goodput);
  const res = await tp.proxy.adminHandler()(
    new Request(`http://admin/api/hosts/${encodeURIComponent(up.authority)}`),
  );
  const view = await res.json();
  assert.ok(view.effectiveLimit >= 1 && view.effectiveLimit <= 64, JSON.stringify(view));
  assert.equal(view.limit, 64);
  assert.match(view.limitReason, /^(probe|restore|grow|backoff-drop|backoff-latency|hold)$/);
  const metrics = await (await tp.proxy.adminHandler()(new Request("http://admin/metrics"))).text();
  assert.match(
    metrics,
    /dprl_host_effective_limit\{host="127\.0\.0\.1:\d+",reason="[a-z-]+"\} \d+/,
  );
});

await redisTest(
  "--adaptive with three proxies on one Redis: one limit for the fleet, the same goal",
  "server",
  async () => {
    const goodput = await baseline();
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
      const run = await hammer(up, fleet.map((p) => p.proxyUrl!.href));
      assertGoal(run, goodput);
      // The state lives in Redis under the host's hash tag.
      const limit = Number(await redis.cli("HGET", `dprl:{${up.authority}}:a`, "limit"));
      assert.ok(limit >= 1 && limit <= 64, `limit ${limit}`);
    } finally {
      await Promise.all(fleet.map((p) => p.stop({ graceMs: 200 })));
    }
  },
);

/** The adaptive limit of `host` and its reason, as /api/hosts shows them (null while not listed). */
async function adaptiveView(proxy: ProxyRateLimiter, host: string) {
  const res = await proxy.adminHandler()(
    new Request(`http://admin/api/hosts/${encodeURIComponent(host)}`),
  );
  const view = await res.json();
  return { limit: view.effectiveLimit as number | null, reason: view.limitReason as string | null };
}

Deno.test("--adaptive: a host that serves fast grows its limit, and 503s back it off at once", async () => {
  let failing = false;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async () => {
    if (failing) return new Response("down\n", { status: 503 });
    await new Promise((done) => setTimeout(done, 5)); // the host's service time
    return new Response("ok\n");
  });
  await using _server = { [Symbol.asyncDispose]: () => server.shutdown() };
  const { port } = server.addr as Deno.NetAddr;
  const host = `127.0.0.1:${port}`;
  await using tp = await startProxy({ adaptive: true, defaultMaxConnectionsPerHost: 16 });
  let stop = false;
  const clients = Array.from({ length: 16 }, async () => {
    const client = Deno.createHttpClient({ proxy: { url: tp.url } });
    try {
      // Bounded in count; stopped once the test has seen what it waits for.
      for (let n = 0; n < 20_000 && !stop; n++) {
        const res = await fetch(`http://${host}/`, { client });
        await res.body?.cancel();
      }
    } finally {
      client.close();
    }
  });
  try {
    let seen = await adaptiveView(tp.proxy, host);
    await waitFor(
      async () => ((seen = await adaptiveView(tp.proxy, host)).limit ?? 0) >= 4,
      () => `a limit of 4 or more (seen ${JSON.stringify(seen)})`,
    );
    failing = true;
    await waitFor(
      async () => (seen = await adaptiveView(tp.proxy, host)).reason === "backoff-drop",
      () => `a back-off on 503s (seen ${JSON.stringify(seen)})`,
    );
  } finally {
    stop = true;
    await Promise.all(clients);
  }
});

Deno.test("--adaptive: tunnels feed their connect times, so a host reached by CONNECT grows too", async () => {
  await using echo = startEchoUpstream();
  const host = `127.0.0.1:${echo.port}`;
  await using tp = await startProxy({ adaptive: true, defaultMaxConnectionsPerHost: 16 });
  let stop = false;
  const loops = Array.from({ length: 16 }, async () => {
    for (let n = 0; n < 20_000 && !stop; n++) {
      const conn = await BufferedConn.connect(tp.addr);
      try {
        await conn.write(connectRequest(host));
        const head = await readHead(conn);
        if (head === null || statusOf(head) !== 200) continue;
      } finally {
        conn.close();
      }
    }
  });
  try {
    let seen = await adaptiveView(tp.proxy, host);
    await waitFor(
      async () => ((seen = await adaptiveView(tp.proxy, host)).limit ?? 0) >= 4,
      () => `a limit of 4 or more (seen ${JSON.stringify(seen)})`,
    );
  } finally {
    stop = true;
    await Promise.all(loops);
  }
});

Deno.test("--adaptive: a connect error is a drop, and the host shows its back-off with no connection open", async () => {
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const host = `127.0.0.1:${(closed.addr as Deno.NetAddr).port}`;
  closed.close();
  await using tp = await startProxy({ adaptive: true, defaultMaxConnectionsPerHost: 16 });
  const conn = await BufferedConn.connect(tp.addr);
  try {
    await conn.write(connectRequest(host));
    assert.equal(statusOf((await readHead(conn))!), 502);
  } finally {
    conn.close();
  }
  assert.deepEqual(await adaptiveView(tp.proxy, host), { limit: 1, reason: "backoff-drop" });
});

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
