// Request rates: new upstream requests (plain HTTP, on new or reused
// connections) and tunnels to a host are held to its rate; over it, a
// request waits its turn within its queue timeout or is refused with an
// exact Retry-After. In distributed mode the rate is the fleet's.
import assert from "node:assert/strict";
import { getVia, startRecordingUpstream } from "./_helpers/recording_upstream.ts";
import { connectRequest, startProxy } from "./_helpers/proxy.ts";
import {
  BufferedConn,
  header,
  readHead,
  readResponse,
  request,
  statusOf,
  text,
} from "./_helpers/raw.ts";
import { RedisClusterServers, RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { ProxyRateLimiter, type ProxyRateLimiterOptions } from "../mod.ts";

/**
 * Whether `times` (arrivals at the upstream) are spread as turns `periodMs`
 * apart would spread them: from the first to the last, at least half of the turns'
 * span. Without the rate all arrive within a few ms; a loaded machine may
 * delay any arrival, which can shorten one gap but not the whole span by
 * more than the first one's delay.
 */
function spreadAsTurns(times: number[], periodMs: number): boolean {
  const span = Math.max(...times) - Math.min(...times);
  return span >= ((times.length - 1) * periodMs) / 2;
}

/** What a refusal by the rate must say. */
function assertRateRefusal(
  res: Response,
  retryAfter: string,
  whose = "127\\.0\\.0\\.1:\\d+",
): void {
  assert.equal(res.status, 429);
  assert.equal(res.headers.get("retry-after"), retryAfter);
  assert.match(
    res.headers.get("proxy-status") ?? "",
    new RegExp(`error=connection_limit_reached; details="request rate reached for ${whose}"`),
  );
}

const REFUSE = { rejectStatus: 429, queueTimeout: 0 } satisfies ProxyRateLimiterOptions;

Deno.test("over --max-rate without a queue timeout: refused with the reject status and the exact Retry-After, nothing sent upstream", async () => {
  await using up = startRecordingUpstream();
  await using tp = await startProxy({ ...REFUSE, maxRate: 0.5 });
  assert.equal((await getVia(tp.url, up.url)).status, 200);
  // One request per 2 s: the next turn is just under 2 s away.
  assertRateRefusal(await getVia(tp.url, up.url), "2");
  assert.equal(up.seen.length, 1);
  const metrics = await (await tp.proxy.adminHandler()(new Request("http://admin/metrics"))).text();
  assert.match(metrics, /dprl_connections_refused_total\{[^}]*reason="rate"\} 1/);
});

Deno.test("with a queue timeout, requests over the rate wait their turn: all served, one period apart", async () => {
  await using up = startRecordingUpstream();
  await using tp = await startProxy({ maxRate: 10, queueTimeout: 5_000 });
  const answers = await Promise.all(Array.from({ length: 6 }, () => getVia(tp.url, up.url)));
  assert.deepEqual(answers.map((r) => r.status), [200, 200, 200, 200, 200, 200]);
  assert.equal(up.seen.length, 6);
  assert.ok(spreadAsTurns(up.seen, 100), JSON.stringify(up.seen));
});

Deno.test("a request on a reused connection takes a turn too", async () => {
  await using up = startRecordingUpstream();
  await using tp = await startProxy({ ...REFUSE, maxRate: 1 });
  const conn = await BufferedConn.connect(tp.addr);
  try {
    const ask = async () => {
      await conn.write(request("GET", up.url, { Host: up.authority }));
      return await readResponse(conn);
    };
    assert.equal((await ask()).status, 200);
    const refused = await ask();
    assert.equal(refused.status, 429, text(refused.body));
    assert.equal(header(refused.head, "retry-after"), "1");
  } finally {
    conn.close();
  }
  assert.equal(up.seen.length, 1);
});

Deno.test("a tunnel over the rate is refused; a host rule's rate wins over --max-rate; a group's rate is shared", async () => {
  await using a = startRecordingUpstream();
  await using b = startRecordingUpstream();
  await using free = startRecordingUpstream();
  await using tp = await startProxy({
    ...REFUSE,
    maxRate: 0.5,
    rules: {
      hosts: { [free.authority]: { rate: "1000/s", "queue-timeout": "1s" } },
      groups: [{ name: "pair", match: [a.authority, b.authority], limit: 0, rate: "1/m" }],
    },
  });
  assert.equal((await getVia(tp.url, a.url)).status, 200);
  // b shares a's rate: its next turn is a minute away.
  assertRateRefusal(await getVia(tp.url, b.url), "60", "group pair");
  const conn = await BufferedConn.connect(tp.addr);
  try {
    await conn.write(connectRequest(b.authority));
    const head = (await readHead(conn))!;
    assert.equal(statusOf(head), 429);
    assert.equal(header(head, "retry-after"), "60");
  } finally {
    conn.close();
  }
  for (let i = 0; i < 3; i++) assert.equal((await getVia(tp.url, free.url)).status, 200);
  assert.deepEqual([a.seen.length, b.seen.length, free.seen.length], [1, 0, 3]);
});

/** Three proxies on one Redis (or Redis Cluster) with `options`, stopped on disposal. */
async function fleetOf(
  redis: RedisServer | RedisClusterServers,
  options: ProxyRateLimiterOptions,
) {
  const fleet: ProxyRateLimiter[] = [];
  for (let i = 0; i < 3; i++) {
    const p = new ProxyRateLimiter({
      port: 0,
      hostname: "127.0.0.1",
      redis: redis instanceof RedisServer ? redis.url : { cluster: redis.nodes },
      ...options,
    });
    fleet.push(p);
    await p.start();
  }
  return {
    urls: fleet.map((p) => p.proxyUrl!.href),
    [Symbol.asyncDispose]: async () => {
      await Promise.all(fleet.map((p) => p.stop({ graceMs: 200 })));
    },
  };
}

await redisTest(
  "three proxies on one Redis, a host rate of 10/s, 30 clients hammering for 5 s: 40 to 60 requests reach the upstream, no second over 15",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = startRecordingUpstream();
    await using fleet = await fleetOf(redis, {
      ...REFUSE,
      rules: { hosts: { [up.authority]: { rate: "10/s" } } },
    });
    const start = Date.now();
    const statuses = new Map<number, number>();
    await Promise.all(Array.from({ length: 30 }, async (_, i) => {
      const client = Deno.createHttpClient({ proxy: { url: fleet.urls[i % 3] } });
      try {
        // Bounded in time and in count.
        for (let n = 0; n < 5_000 && Date.now() - start < 5_000; n++) {
          const res = await fetch(up.url, { client });
          await res.body?.cancel();
          statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        }
      } finally {
        client.close();
      }
    }));
    const served = up.seen.length;
    assert.ok(served >= 40 && served <= 60, `${served} reached the upstream`);
    const perSecond = new Map<number, number>();
    for (const t of up.seen) {
      const second = Math.floor((t - start) / 1000);
      perSecond.set(second, (perSecond.get(second) ?? 0) + 1);
    }
    assert.ok(Math.max(...perSecond.values()) <= 15, JSON.stringify([...perSecond]));
    assert.equal(statuses.get(200), served);
    assert.ok((statuses.get(429) ?? 0) > 0, "the rest were refused");
    assert.deepEqual([...statuses.keys()].sort(), [200, 429]);
  },
);

await redisTest(
  "on Redis, requests over the rate wait their turn across the fleet, and a reused connection takes one too",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = startRecordingUpstream();
    await using fleet = await fleetOf(redis, { maxRate: 10, queueTimeout: 5_000 });
    const answers = await Promise.all(
      Array.from({ length: 9 }, (_, i) => getVia(fleet.urls[i % 3], up.url)),
    );
    assert.deepEqual(answers.map((r) => r.status), Array(9).fill(200));
    assert.ok(spreadAsTurns(up.seen, 100), JSON.stringify(up.seen));
    // The rate's state lives in the host's slot, on Redis time.
    assert.ok(Number(await redis.cli("HGET", "dprl:epoch", `r:${up.authority}`)) > 0);

    await using other = startRecordingUpstream();
    await using refusing = await fleetOf(redis, { ...REFUSE, maxRate: 1 });
    const conn = await BufferedConn.connect(new URL(refusing.urls[0]));
    try {
      const ask = async () => {
        await conn.write(request("GET", other.url, { Host: other.authority }));
        return await readResponse(conn);
      };
      assert.equal((await ask()).status, 200);
      const refused = await ask();
      assert.equal(refused.status, 429, text(refused.body));
      assert.match(header(refused.head, "proxy-status") ?? "", /request rate reached/);
    } finally {
      conn.close();
    }
    assert.equal(other.seen.length, 1);
  },
);

await redisTest(
  "three proxies on a Redis Cluster: a host's rate and a group's shared rate hold across the fleet",
  "server",
  async () => {
    await using cluster = await RedisClusterServers.start();
    await using a = startRecordingUpstream();
    await using b = startRecordingUpstream();
    await using solo = startRecordingUpstream();
    await using fleet = await fleetOf(cluster, {
      ...REFUSE,
      rules: {
        hosts: { [solo.authority]: { rate: "1/m" } },
        groups: [{ name: "pair", match: [a.authority, b.authority], limit: 0, rate: "1/m" }],
      },
    });
    assert.equal((await getVia(fleet.urls[0], a.url)).status, 200);
    assertRateRefusal(await getVia(fleet.urls[1], b.url), "60", "group pair");
    assert.equal((await getVia(fleet.urls[2], solo.url)).status, 200);
    assertRateRefusal(await getVia(fleet.urls[0], solo.url), "60");
    assert.deepEqual([a.seen.length, b.seen.length, solo.seen.length], [1, 0, 1]);
  },
);
