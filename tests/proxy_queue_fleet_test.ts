// Waiting for a slot across a fleet: real proxies share one real redis-server
// and one line per host, so a slot freed anywhere goes to the longest-waiting
// request anywhere; a client that leaves, or a proxy that dies, never blocks
// the line.
import assert from "node:assert/strict";
import {
  BufferedConn,
  header,
  readResponse,
  request,
  waitFor,
  withTimeout,
} from "./_helpers/raw.ts";
import { startUpstream } from "./_helpers/upstream.ts";
import { startProxy, type TestProxy } from "./_helpers/proxy.ts";
import {
  listeners,
  rawCommand,
  RedisClusterServers,
  RedisServer,
  redisTest,
} from "./_helpers/redis_server.ts";
import { leaseDeadlines, redisNow, startProxyWorker, waitLeasesRenewed } from "./_helpers/fleet.ts";
import { RedisLimiter } from "../lib/limit/redis_limiter.ts";
import { giveBack, take } from "./_helpers/held_slots.ts";

/** Sends one request on a fresh connection; resolves its status (0: the connection broke). */
async function exchange(addr: { hostname: string; port: number }, req: string): Promise<number> {
  const c = await BufferedConn.connect(addr);
  try {
    await c.write(req);
    return (await readResponse(c, { ms: 30_000 })).status;
  } catch {
    return 0;
  } finally {
    c.close();
  }
}

/** The number of tickets in the fleet's line of `host`. */
async function lineLength(redis: RedisServer, host: string): Promise<number> {
  const reply = await rawCommand(redis.port, "ZCARD", `dprl:{${host}}:q`);
  return Number(/^:(\d+)/.exec(reply)?.[1] ?? NaN);
}

/** Waits until the fleet's line of `host` holds `n` tickets. */
async function waitLine(redis: RedisServer, host: string, n: number): Promise<void> {
  let last = -1;
  await waitFor(
    async () => (last = await lineLength(redis, host)) === n,
    () => `${n} tickets in the line of ${host} (have ${last})`,
  );
}

async function fleet(n: number, redisUrl: string, options: Record<string, number>) {
  const proxies: TestProxy[] = [];
  for (let i = 0; i < n; i++) {
    proxies.push(await startProxy({ redis: redisUrl, ...options }));
  }
  return {
    proxies,
    async [Symbol.asyncDispose]() {
      await Promise.all(proxies.map((p) => p[Symbol.asyncDispose]()));
    },
  };
}

await redisTest(
  "3 proxies x 20 clients at limit 4: all served, never more than 4 at once, no proxy's clients served later than another's",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = await startUpstream();
    await using f = await fleet(3, redis.url, {
      defaultMaxConnectionsPerHost: 4,
      queueTimeout: 10_000,
    });
    const finished: number[] = []; // proxy index, in finishing order
    const all: Promise<void>[] = [];
    const started = performance.now();
    for (let i = 0; i < 60; i++) {
      const p = i % 3;
      const req = request("GET", up.url("/slow?ms=150"), {
        Host: up.authority,
        Connection: "close",
      });
      all.push(
        exchange(f.proxies[p].addr, req).then((status) => {
          assert.equal(status, 200, `client ${i} through proxy ${p}`);
          finished.push(p);
        }),
      );
      // A clear arrival order: the next client comes once this one waits in line or reached the
      // upstream.
      await waitFor(async () => {
        let queued = 0;
        for (const tp of f.proxies) queued += await tp.queued(up.authority);
        return up.requests.length + queued > i;
      }, `client ${i} in line`);
    }
    await Promise.all(all);
    const seconds = (performance.now() - started) / 1000;
    assert.ok(up.peakInFlight <= 4, `upstream peak ${up.peakInFlight}`);
    const means = [0, 1, 2].map((p) => {
      const ranks = finished.flatMap((q, rank) => q === p ? [rank] : []);
      return ranks.reduce((a, b) => a + b, 0) / ranks.length;
    });
    console.log(
      `60 requests in ${seconds.toFixed(2)} s (15 x 150 ms = 2.25 s); ` +
        `mean finishing rank per proxy ${means.map((m) => m.toFixed(1)).join(", ")} (fair: 29.5)`,
    );
    // Arrivals alternate between the proxies, so a fair line gives each the
    // same mean rank; one proxy keeping its slots for its own line does not.
    assert.ok(Math.max(...means) - Math.min(...means) < 10, `mean ranks ${means}`);
    await waitLine(redis, up.authority, 0);
  },
);

await redisTest(
  "a client that disconnects while queued in Redis mode leaves the fleet's line at once",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = await startUpstream();
    // A long lease: only the client's leaving can take its ticket out in time.
    await using f = await fleet(2, redis.url, {
      defaultMaxConnectionsPerHost: 1,
      queueTimeout: 20_000,
      lease: 15_000,
    });
    const [a, b] = f.proxies;
    const holder = exchange(a.addr, request("GET", up.url("/slow"), { Host: up.authority }));
    await up.waitHeld(1);
    const leaver = await BufferedConn.connect(b.addr);
    await leaver.write(request("GET", up.url("/fixed?leaver"), { Host: up.authority }));
    await waitLine(redis, up.authority, 1);
    leaver.close();
    const leftAt = Date.now();
    await waitLine(redis, up.authority, 0);
    const tookMs = Date.now() - leftAt;
    // Before the lease ran out: the leaving took the ticket out, not the loss of a worker.
    assert.ok(tookMs < 15_000, `the ticket left after ${tookMs} ms`);
    // The next in line, on the other proxy, gets the slot as soon as it frees.
    const next = exchange(a.addr, request("GET", up.url("/fixed?next"), { Host: up.authority }));
    await waitLine(redis, up.authority, 1);
    up.release();
    assert.equal(await holder, 200);
    assert.equal(await next, 200);
    assert.equal(up.requests.filter((r) => r.target.includes("leaver")).length, 0);
    assert.equal(await lineLength(redis, up.authority), 0);
  },
);

await redisTest(
  "a proxy killed with SIGKILL while its clients wait in line stalls the others' clients only until its lease runs out",
  "server",
  async () => {
    const lease = 1_500;
    const queueTimeout = 20_000;
    await using redis = await RedisServer.start();
    await using up = await startUpstream();
    await using survivor = await startProxy({
      redis: redis.url,
      defaultMaxConnectionsPerHost: 1,
      queueTimeout,
      lease,
    });
    await using doomed = await startProxyWorker({
      redis: redis.url,
      limit: 1,
      lease,
      queueTimeout,
    });
    const slow = request("GET", up.url("/slow"), { Host: up.authority, Connection: "close" });
    const fast = request("GET", up.url("/fixed"), { Host: up.authority, Connection: "close" });
    const holder = exchange(survivor.addr, slow);
    await up.waitHeld(1);
    // Three clients of the doomed proxy wait first, three of the survivor after them.
    const lost = [0, 1, 2].map(() => exchange(doomed.addr, fast));
    await waitLine(redis, up.authority, 3);
    const served = [0, 1, 2].map(() => exchange(survivor.addr, fast));
    await waitLine(redis, up.authority, 6);
    // The worst case: the doomed proxy has just renewed its place in the line.
    const waitingWorkers = `dprl:{${up.authority}}:qw`;
    await waitLeasesRenewed(redis, waitingWorkers);
    doomed.proc.child.kill("SIGKILL");
    await doomed.proc.child.status;
    const killedAt = Date.now();
    const leases = await leaseDeadlines(redis, waitingWorkers);
    const now = await redisNow(redis); // read after: every deadline is at most now + lease
    for (const [worker, deadline] of leases) {
      assert.ok(deadline - now <= lease, `${worker}'s lease runs ${deadline - now} ms more`);
    }
    up.release();
    assert.equal(await holder, 200);
    // Behind tickets that nobody pruned they would wait out their queue timeout and be refused.
    assert.deepEqual(await Promise.all(served), [200, 200, 200]);
    const tookMs = Date.now() - killedAt;
    console.log(`the survivor's clients were served ${tookMs} ms after the kill (lease ${lease})`);
    assert.ok(tookMs < queueTimeout, `took ${tookMs} ms`);
    assert.deepEqual(await Promise.all(lost), [0, 0, 0], "the doomed proxy's clients lost it");
    assert.equal(await lineLength(redis, up.authority), 0);
  },
);

for (const cluster of [false, true]) {
  await redisTest(
    `a release wakes a worker waiting in the fleet's line at once, by ${
      cluster ? "sharded pub/sub on Redis Cluster" : "pub/sub"
    }`,
    "server",
    async () => {
      await using servers = cluster ? await RedisClusterServers.start() : await RedisServer.start();
      const redis = servers instanceof RedisServer ? servers.url : { cluster: servers.nodes };
      const a = new RedisLimiter({ redis, timeout: 2_000 });
      const b = new RedisLimiter({ redis, timeout: 2_000 });
      try {
        const host = "api.example:8443";
        assert.ok(await take(a, host, 1));
        const ticket = b.enqueue(host);
        assert.equal(await take(b, host, 1, { ticket }), false, "the slot is taken");
        // No timer asks again here: only a wake-up can tell b.
        const woken = Promise.withResolvers<string>();
        b.onWake = woken.resolve;
        const ports = servers instanceof RedisServer
          ? [servers.port]
          : servers.nodes.map((n) => n.port);
        await waitFor(
          async () => (await listeners(ports, [`dprl:{${host}}:q`], cluster))[0] > 0,
          "b's subscription to the line's channel",
        );
        const releasedAt = Date.now();
        giveBack(a, host);
        assert.equal(await withTimeout(woken.promise, 10_000, "a wake-up"), host);
        console.log(`woken ${Date.now() - releasedAt} ms after the release`);
        assert.ok(await take(b, host, 1, { ticket }), "the ticket is granted");
        assert.equal(await take(a, host, 1), false);
      } finally {
        await Promise.all([a.close(), b.close()]);
      }
    },
  );
}

for (const [mode, expected] of [["closed", 503], ["open", 200]] as const) {
  await redisTest(
    `Redis going away while requests wait: failure mode ${mode} answers them with ${expected}`,
    "server",
    async () => {
      const redis = await RedisServer.start();
      try {
        await using up = await startUpstream();
        await using tp = await startProxy({
          redis: redis.url,
          failureMode: mode,
          defaultMaxConnectionsPerHost: 1,
          queueTimeout: 20_000,
          timeouts: { connect: 2_000 },
        });
        const holder = exchange(tp.addr, request("GET", up.url("/slow"), { Host: up.authority }));
        await up.waitHeld(1);
        const waiter = exchange(tp.addr, request("GET", up.url("/fixed"), { Host: up.authority }));
        await waitLine(redis, up.authority, 1);
        await redis.kill();
        const killedAt = Date.now();
        assert.equal(await waiter, expected);
        const tookMs = Date.now() - killedAt;
        console.log(`answered ${tookMs} ms after Redis went away`);
        // Not left to its queue timeout (which would answer 500, "waited").
        assert.ok(tookMs < 20_000, `answered ${tookMs} ms after Redis went away`);
        up.release();
        await holder;
      } finally {
        await redis.stop().catch(() => {});
      }
    },
  );
}

await redisTest(
  "a refusal's Retry-After counts the fleet's line, not only this proxy's",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = await startUpstream();
    await using waits = await startProxy({
      redis: redis.url,
      defaultMaxConnectionsPerHost: 1,
      queueTimeout: 20_000,
    });
    await using refuses = await startProxy({ redis: redis.url, defaultMaxConnectionsPerHost: 1 });
    const held = [exchange(waits.addr, request("GET", up.url("/slow"), { Host: up.authority }))];
    await up.waitHeld(1);
    for (let i = 0; i < 7; i++) {
      held.push(exchange(waits.addr, request("GET", up.url("/slow"), { Host: up.authority })));
    }
    await waitLine(redis, up.authority, 7);
    const c = await BufferedConn.connect(refuses.addr);
    try {
      await c.write(request("GET", up.url("/fixed"), { Host: up.authority, Connection: "close" }));
      const res = await readResponse(c);
      assert.match(new TextDecoder().decode(res.body), /Connection limit reached/);
      // Nothing held or waits here: only the fleet's line of 7 says 8 holds to go.
      const retryAfter = Number(header(res.head, "retry-after"));
      assert.ok(retryAfter >= 8, `Retry-After: ${retryAfter}`);
    } finally {
      c.close();
    }
    // One at a time, each held request is let go once it reached the upstream.
    for (let i = 0; i < held.length; i++) {
      await up.waitHeld(1);
      up.release();
    }
    assert.deepEqual(await Promise.all(held), Array(8).fill(200));
  },
);
