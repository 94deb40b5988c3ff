// Fleet tests: several real proxies share one real redis-server, and the cap
// holds across all of them, including when one of them is killed.
import assert from "node:assert/strict";
import { ProxyRateLimiter } from "../mod.ts";
import {
  freePort,
  makeTlsFiles,
  RedisServer,
  redisTest,
  redisTlsUnavailable,
} from "./_helpers/redis_server.ts";
import { startEchoUpstream } from "./_helpers/upstream.ts";
import { leaseDeadlines, redisNow, startProxyWorker } from "./_helpers/fleet.ts";
import { sleep, WAIT_MS, waitFor } from "./_helpers/raw.ts";
import { runCli, startCli } from "./_helpers/spawn.ts";

const LEASE = 600;
const enc = new TextEncoder();
const dec = new TextDecoder();

/** An HTTP upstream that holds each request and records its peak concurrency. */
function startHoldingUpstream(holdMs: number) {
  let inFlight = 0;
  let peak = 0;
  let served = 0;
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    async () => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      try {
        await sleep(holdMs); // the upstream's work (simulated load)
        served++;
        return new Response("ok\n");
      } finally {
        inFlight--;
      }
    },
  );
  return {
    port: server.addr.port,
    get peak() {
      return peak;
    },
    get served() {
      return served;
    },
    async [Symbol.asyncDispose]() {
      ac.abort();
      await server.finished;
    },
  };
}

interface Tunnel {
  status: number;
  head: string;
  conn: Deno.Conn;
}

/** Opens a CONNECT tunnel through `proxy` to `authority`; reads the reply head. */
async function connectThrough(proxy: URL, authority: string): Promise<Tunnel> {
  const conn = await Deno.connect({ hostname: proxy.hostname, port: Number(proxy.port) });
  const timer = setTimeout(() => conn.close(), WAIT_MS);
  try {
    await conn.write(enc.encode(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`));
    let head = "";
    const buf = new Uint8Array(4096);
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      if (n === null) break;
      head += dec.decode(buf.subarray(0, n));
    }
    const status = Number(head.split(" ")[1]);
    return { status, head, conn };
  } catch (error) {
    try {
      conn.close();
    } catch {
      // already closed
    }
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

async function startFleet(n: number, redis: string, limit: number): Promise<
  ProxyRateLimiter[] & AsyncDisposable
> {
  const fleet = [] as unknown as ProxyRateLimiter[] & AsyncDisposable;
  fleet[Symbol.asyncDispose] = async () => {
    await Promise.all(fleet.map((p) => p.stop({ graceMs: 500 })));
  };
  for (let i = 0; i < n; i++) {
    const p = new ProxyRateLimiter({
      port: 0,
      defaultMaxConnectionsPerHost: limit,
      redis,
      lease: LEASE,
    });
    fleet.push(p);
    await p.start();
  }
  return fleet;
}

await redisTest(
  "three proxies on one Redis with limit 4 let exactly 4 of 30 concurrent requests through and the upstream never sees more than 4",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = startHoldingUpstream(300);
    await using fleet = await startFleet(3, redis.url, 4);
    const clients = fleet.map((p) => Deno.createHttpClient({ proxy: { url: p.proxyUrl!.href } }));
    try {
      const target = `http://127.0.0.1:${up.port}/hold`;
      for (let wave = 0; wave < 3; wave++) {
        const results = await Promise.all(
          Array.from({ length: 30 }, async (_, i) => {
            const res = await fetch(target, {
              client: clients[i % 3],
              signal: AbortSignal.timeout(10_000),
            });
            const body = await res.text();
            return { status: res.status, proxyStatus: res.headers.get("proxy-status"), body };
          }),
        );
        const ok = results.filter((r) => r.status === 200);
        const refused = results.filter((r) => r.status === 500);
        assert.equal(ok.length, 4, `wave ${wave}: ${JSON.stringify(results.map((r) => r.status))}`);
        assert.equal(refused.length, 26);
        for (const r of refused) {
          assert.match(r.proxyStatus ?? "", /^dprl;.*error=connection_limit_reached/);
        }
        assert.ok(up.peak <= 4, `upstream peak ${up.peak}`);
      }
      assert.equal(up.peak, 4);
      assert.equal(up.served, 12);
    } finally {
      for (const c of clients) c.close();
    }
  },
);

await redisTest(
  "a fleet under churn of dozens of clients never lets the upstream see more than the limit",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = startHoldingUpstream(40);
    await using fleet = await startFleet(3, redis.url, 4);
    const clients = fleet.map((p) => Deno.createHttpClient({ proxy: { url: p.proxyUrl!.href } }));
    let ok = 0;
    let refused = 0;
    try {
      const until = Date.now() + 2_000;
      await Promise.all(Array.from({ length: 24 }, async (_, i) => {
        while (Date.now() < until) {
          const res = await fetch(`http://127.0.0.1:${up.port}/c${i}`, {
            client: clients[i % 3],
            signal: AbortSignal.timeout(10_000),
          });
          await res.body?.cancel();
          if (res.status === 200) ok++;
          else if (res.status === 500) {
            refused++;
            await sleep(5); // a refused client backs off (pacing, not synchronization)
          } else assert.fail(`unexpected status ${res.status}`);
        }
      }));
    } finally {
      for (const c of clients) c.close();
    }
    assert.ok(up.peak <= 4, `upstream peak ${up.peak}`);
    assert.ok(ok > 20, `${ok} requests passed`);
    assert.ok(refused > 0, "some requests were refused");
  },
);

await redisTest(
  "CONNECT tunnels count across the fleet and activeConnectionsForHost sums every proxy",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = startEchoUpstream();
    await using fleet = await startFleet(3, redis.url, 4);
    const authority = `127.0.0.1:${up.port}`;
    const open: Deno.Conn[] = [];
    try {
      for (let i = 0; i < 4; i++) {
        const t = await connectThrough(fleet[i % 3].proxyUrl!, authority);
        open.push(t.conn);
        assert.equal(t.status, 200, t.head);
      }
      for (const p of fleet) {
        assert.equal(await p.activeConnectionsForHost(authority), 4);
        const t = await connectThrough(p.proxyUrl!, authority);
        closeQuietly(t.conn);
        assert.equal(t.status, 500, t.head);
        assert.match(t.head, /proxy-status: dprl;.*error=connection_limit_reached/i);
      }
      // The tunnel works end to end.
      await open[0].write(enc.encode("ping"));
      const buf = new Uint8Array(16);
      const n = await open[0].read(buf);
      assert.equal(dec.decode(buf.subarray(0, n ?? 0)), "ping");
      // Closing one tunnel on one proxy frees a slot for another proxy.
      closeQuietly(open.shift()!);
      await waitFor(
        async () => (await fleet[2].activeConnectionsForHost(authority)) === 3,
        "count 3",
      );
      const t = await connectThrough(fleet[2].proxyUrl!, authority);
      open.push(t.conn);
      assert.equal(t.status, 200, t.head);
    } finally {
      open.forEach(closeQuietly);
    }
    await waitFor(
      async () => (await fleet[0].activeConnectionsForHost(authority)) === 0,
      "all tunnels released",
    );
  },
);

await redisTest(
  "a proxy killed with SIGKILL while holding tunnels gives its slots back to the fleet within one lease",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = startEchoUpstream();
    await using fleet = await startFleet(2, redis.url, 4);
    const authority = `127.0.0.1:${up.port}`;
    await using child = await startProxyWorker({ redis: redis.url, limit: 4, lease: LEASE });
    const tunnels: Deno.Conn[] = [];
    try {
      for (let i = 0; i < 4; i++) {
        const t = await connectThrough(child.url, authority);
        tunnels.push(t.conn);
        assert.equal(t.status, 200, t.head);
      }
      assert.equal(await fleet[0].activeConnectionsForHost(authority), 4);
      const refused = await connectThrough(fleet[0].proxyUrl!, authority);
      closeQuietly(refused.conn);
      assert.equal(refused.status, 500);
      // Once the leases taken with the tunnels have run out, the heartbeat has renewed them.
      const taken = await leaseDeadlines(redis, "dprl:leases");
      assert.ok(taken.size > 0, "the tunnels' leases are in Redis");
      const first = Math.max(...taken.values());
      await waitFor(async () => await redisNow(redis) > first, "the first leases to run out");
      assert.equal(await fleet[1].activeConnectionsForHost(authority), 4);

      child.proc.child.kill("SIGKILL");
      await child.proc.child.status;
      const killedAt = Date.now();
      const leases = await leaseDeadlines(redis, "dprl:leases");
      const now = await redisNow(redis); // read after: every deadline is at most now + lease
      for (const [worker, deadline] of leases) {
        assert.ok(deadline - now <= LEASE, `${worker}'s lease runs ${deadline - now} ms more`);
      }
      const regained: Deno.Conn[] = [];
      try {
        await waitFor(
          async () => {
            const p = fleet[regained.length % 2];
            const t = await connectThrough(p.proxyUrl!, authority);
            if (t.status === 200) regained.push(t.conn);
            else closeQuietly(t.conn);
            return regained.length === 4;
          },
          "the killed proxy's four slots",
        );
        console.log(`the four slots came back ${Date.now() - killedAt} ms after the kill`);
        const over = await connectThrough(fleet[1].proxyUrl!, authority);
        closeQuietly(over.conn);
        assert.equal(over.status, 500, "still capped at 4");
        assert.equal(await fleet[0].activeConnectionsForHost(authority), 4);
      } finally {
        regained.forEach(closeQuietly);
      }
    } finally {
      tunnels.forEach(closeQuietly);
    }
  },
);

await redisTest(
  "a stopped proxy removes its entries from Redis",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = startEchoUpstream();
    await using fleet = await startFleet(2, redis.url, 4);
    const authority = `127.0.0.1:${up.port}`;
    const t = await connectThrough(fleet[0].proxyUrl!, authority);
    try {
      assert.equal(t.status, 200);
      assert.equal(await fleet[1].activeConnectionsForHost(authority), 1);
    } finally {
      closeQuietly(t.conn);
    }
    await waitFor(
      async () => (await fleet[1].activeConnectionsForHost(authority)) === 0,
      "released",
    );
    const t2 = await connectThrough(fleet[0].proxyUrl!, authority);
    assert.equal(t2.status, 200);
    closeQuietly(t2.conn);
    await fleet[0].stop({ graceMs: 200 });
    assert.equal((await redis.cli("EXISTS", `dprl:{${authority}}:n`)).trim(), "0");
    assert.equal(await fleet[1].activeConnectionsForHost(authority), 0);
  },
);

await redisTest(
  "an idle pooled connection of one proxy gives its slot up when another proxy of the fleet is refused",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = startHoldingUpstream(0);
    await using fleet = await startFleet(2, redis.url, 1);
    const [a, b] = fleet.map((p) => Deno.createHttpClient({ proxy: { url: p.proxyUrl!.href } }));
    const get = async (client: Deno.HttpClient) => {
      const res = await fetch(`http://127.0.0.1:${up.port}/`, {
        client,
        signal: AbortSignal.timeout(5_000),
      });
      await res.body?.cancel();
      return res.status;
    };
    try {
      assert.equal(await get(a), 200);
      // Proxy a keeps its upstream socket idle, and with it the only slot.
      assert.equal(await fleet[1].activeConnectionsForHost(`127.0.0.1:${up.port}`), 1);
      assert.equal(await get(b), 500);
      // The refusal told the fleet; proxy a closes its idle socket.
      await waitFor(async () => await get(b) === 200, "proxy b served");
    } finally {
      a.close();
      b.close();
    }
  },
);

const tlsWhy = await redisTlsUnavailable();
if (tlsWhy !== null) {
  console.warn(`\n!!! SKIPPED the Redis TLS command-line test: ${tlsWhy}.\n`);
}
Deno.test({
  name:
    "the command line reaches a TLS-only Redis with --redis-tls-ca, --redis-tls-cert and --redis-tls-key, and rejects unreadable files with exit 2",
  ignore: tlsWhy !== null && !(Deno.env.get("CI") === "true" && !/built without TLS/.test(tlsWhy)),
  async fn() {
    if (tlsWhy !== null) throw new Error(`Cannot run this Redis TLS test on CI: ${tlsWhy}`);
    const dir = await Deno.makeTempDir({ prefix: "dprl-tls-" });
    try {
      const files = await makeTlsFiles(dir);
      const tlsPort = freePort();
      await using redis = await RedisServer.start({
        args: [
          "--tls-port",
          String(tlsPort),
          "--tls-cert-file",
          files.serverCert,
          "--tls-key-file",
          files.serverKey,
          "--tls-ca-cert-file",
          files.ca,
          "--tls-auth-clients",
          "yes",
        ],
      });
      await using up = startEchoUpstream();
      const authority = `127.0.0.1:${up.port}`;
      for (
        const target of [
          ["--redis-url", `rediss://127.0.0.1:${tlsPort}`],
          ["--redis-addr", `127.0.0.1:${tlsPort}`],
        ]
      ) {
        await using cli = startCli([
          "--port",
          "0",
          "--hostname",
          "127.0.0.1",
          "--max-connections",
          "1",
          ...target,
          "--redis-tls-ca",
          files.ca,
          "--redis-tls-cert",
          files.clientCert,
          "--redis-tls-key",
          files.clientKey,
        ]);
        const url = new URL((await cli.waitStderr(/listening on (\S+)/))[1]);
        const t = await connectThrough(url, authority);
        try {
          assert.equal(t.status, 200, t.head);
          const fields = await redis.cli("HVALS", `dprl:{${authority}}:n`);
          assert.equal(fields.trim(), "1", `${target[0]}: ${fields}`);
          const over = await connectThrough(url, authority);
          closeQuietly(over.conn);
          assert.equal(over.status, 500, over.head);
        } finally {
          closeQuietly(t.conn);
        }
        await cli.stop();
      }
      for (
        const [args, message] of [
          [["--redis-tls-ca", `${dir}/missing.pem`], /--redis-tls-ca: cannot read/],
          [["--redis-tls-cert", files.clientCert], /must be given together/],
        ] as const
      ) {
        const run = await runCli(
          ["--port", "0", "--redis-url", `rediss://127.0.0.1:${tlsPort}`, ...args],
        );
        assert.equal(run.code, 2, run.transcript);
        assert.match(run.stderr, message);
        assert.equal(run.stderr.trim().split("\n").length, 1, run.transcript);
      }
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

await redisTest(
  "after FLUSHALL while three proxies hold every slot of a host, tunnels that keep being asked for are never admitted over the limit",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = startEchoUpstream();
    const fleet = [] as ProxyRateLimiter[];
    try {
      for (let i = 0; i < 3; i++) {
        // A long lease: the heartbeat (every 2 s) alone would come too late.
        const p = new ProxyRateLimiter({
          port: 0,
          defaultMaxConnectionsPerHost: 4,
          redis: redis.url,
          lease: 6_000,
        });
        fleet.push(p);
        await p.start();
      }
      const authority = `127.0.0.1:${up.port}`;
      const held: Deno.Conn[] = [];
      try {
        for (let i = 0; i < 4; i++) {
          const t = await connectThrough(fleet[i % 3].proxyUrl!, authority);
          held.push(t.conn);
          assert.equal(t.status, 200, t.head);
        }
        await redis.cli("FLUSHALL");
        const statuses = new Map<number, number>();
        const until = Date.now() + 2_500;
        await Promise.all(fleet.map(async (p) => {
          while (Date.now() < until) {
            const t = await connectThrough(p.proxyUrl!, authority);
            closeQuietly(t.conn);
            statuses.set(t.status, (statuses.get(t.status) ?? 0) + 1);
            await sleep(10); // clients keep asking at a steady pace (not synchronization)
          }
        }));
        assert.equal(statuses.get(200) ?? 0, 0, JSON.stringify([...statuses]));
        assert.ok([...statuses.values()].reduce((a, b) => a + b, 0) > 50);
        assert.ok(up.open <= 4, `upstream holds ${up.open}`);
        assert.equal(await fleet[0].activeConnectionsForHost(authority), 4);
      } finally {
        held.forEach(closeQuietly);
      }
    } finally {
      await Promise.all(fleet.map((p) => p.stop({ graceMs: 200 })));
    }
  },
);
