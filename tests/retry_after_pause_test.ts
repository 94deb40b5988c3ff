// A host that answers 429 or 503 with Retry-After is paused for this
// process: new requests and tunnels to it wait (when their queue timeout
// reaches past the pause) or get a 503 with Retry-After, and nothing is sent
// to it until the pause ends.
import assert from "node:assert/strict";
import { getVia, startRecordingUpstream } from "./_helpers/recording_upstream.ts";
import { startProxy } from "./_helpers/proxy.ts";
import { BufferedConn, header, orFalse, readHead, statusOf, waitFor } from "./_helpers/raw.ts";
import { connectRequest } from "./_helpers/proxy.ts";
import { redisCli, RedisClusterServers, RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { RedisKeyNames } from "../lib/limit/redis_key_names.ts";
import { ProxyRateLimiter, type ProxyRateLimiterOptions } from "../mod.ts";

Deno.test("a 429 with Retry-After in seconds pauses the host: the next request gets a 503 with Retry-After, the upstream sees nothing until it ends", async () => {
  await using up = startRecordingUpstream({ status: 429, retryAfter: "2" });
  await using tp = await startProxy({ accessLog: false });
  const first = await getVia(tp.url, up.url);
  assert.equal(first.status, 429, "the answer reaches the client that asked, unchanged");
  assert.equal(first.headers.get("retry-after"), "2");
  const paused = await getVia(tp.url, up.url);
  assert.equal(paused.status, 503);
  assert.match(paused.headers.get("retry-after") ?? "", /^[12]$/);
  assert.match(paused.headers.get("proxy-status") ?? "", /destination_unavailable.*429/);
  assert.equal(up.seen.length, 1, "nothing reached the paused host");
  const admin = tp.proxy.adminHandler();
  const metrics = await (await admin(new Request("http://admin/metrics"))).text();
  assert.match(metrics, /dprl_upstream_pauses_total\{status="429"\} 1/);
  assert.match(metrics, /dprl_host_paused_until_seconds\{host="127\.0\.0\.1:\d+"\} \d+\.\d{3}/);
  const view = await (await admin(
    new Request(`http://admin/api/hosts/${encodeURIComponent(up.authority)}`),
  )).json();
  assert.ok(Date.parse(view.pausedUntil) > Date.now(), JSON.stringify(view));
  assert.match(metrics, /dprl_connections_refused_total\{host="[^"]+",reason="paused"\} 1/);
  // Once the pause is over the host is served again.
  await waitFor(
    orFalse(async () => (await getVia(tp.url, up.url)).status === 200),
    "served again",
    5_000,
  );
  assert.ok(up.seen[1] >= up.seen[0] + 1_000, "the second request came after the pause");
});

Deno.test("a request whose queue timeout reaches past a 503's HTTP-date pause waits for it, then goes", async () => {
  const until = new Date(Math.ceil((Date.now() + 1_500) / 1000) * 1000);
  await using up = startRecordingUpstream({ status: 503, retryAfter: until.toUTCString() });
  await using tp = await startProxy({ queueTimeout: 10_000 });
  assert.equal((await getVia(tp.url, up.url)).status, 503);
  const res = await getVia(tp.url, up.url);
  assert.equal(res.status, 200);
  assert.equal(up.seen.length, 2);
  assert.ok(up.seen[1] >= until.getTime(), "sent once the pause was over");
});

Deno.test("the pause is capped by retryAfterMax, and 0 honours none", async () => {
  {
    await using up = startRecordingUpstream({ status: 429, retryAfter: "3600" });
    await using tp = await startProxy({ retryAfterMax: 1_000 });
    await getVia(tp.url, up.url);
    const paused = await getVia(tp.url, up.url);
    assert.equal(paused.status, 503);
    assert.equal(paused.headers.get("retry-after"), "1");
  }
  {
    await using up = startRecordingUpstream({ status: 429, retryAfter: "3600" });
    await using tp = await startProxy({ retryAfterMax: 0 });
    await getVia(tp.url, up.url);
    assert.equal((await getVia(tp.url, up.url)).status, 200, "no pause");
    assert.equal(up.seen.length, 2);
  }
});

Deno.test("a rule's retry-after-max wins over the process's: 0 honours none for its host, 2s caps it", async () => {
  await using off = startRecordingUpstream({ status: 429, retryAfter: "3600" });
  await using short = startRecordingUpstream({ status: 503, retryAfter: "3600" });
  await using other = startRecordingUpstream({ status: 429, retryAfter: "3600" });
  await using tp = await startProxy({
    retryAfterMax: 60_000,
    rules: {
      hosts: {
        [off.authority]: { "retry-after-max": 0 },
        [short.authority]: { "retry-after-max": "2s" },
      },
    },
  });
  for (const up of [off, short, other]) await getVia(tp.url, up.url);
  assert.equal((await getVia(tp.url, off.url)).status, 200, "no pause for its host");
  const capped = await getVia(tp.url, short.url);
  assert.equal(capped.status, 503);
  assert.match(capped.headers.get("retry-after") ?? "", /^[12]$/);
  const process = await getVia(tp.url, other.url);
  assert.ok(Number(process.headers.get("retry-after")) > 50, "the process's 1m for the others");
});

Deno.test("a tunnel to a paused host is refused with 503 and Retry-After", async () => {
  await using up = startRecordingUpstream({ status: 429, retryAfter: "5" });
  await using tp = await startProxy({});
  await getVia(tp.url, up.url);
  const conn = await BufferedConn.connect(tp.addr);
  try {
    await conn.write(connectRequest(up.authority));
    const head = (await readHead(conn))!;
    assert.equal(statusOf(head), 503);
    assert.match(header(head, "retry-after") ?? "", /^[1-5]$/);
  } finally {
    conn.close();
  }
  assert.equal(up.seen.length, 1);
});

/** Three proxies on `redis` (a URL or a Cluster's nodes), stopped on disposal. */
async function fleetOn(redis: ProxyRateLimiterOptions["redis"]) {
  const fleet: ProxyRateLimiter[] = [];
  for (let i = 0; i < 3; i++) {
    const p = new ProxyRateLimiter({ port: 0, hostname: "127.0.0.1", redis });
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

/**
 * A 429 with Retry-After through the first proxy; once `landed` says the
 * pause is in Redis, the other two refuse the host with nothing sent to it.
 */
async function pauseHoldsAcrossFleet(urls: string[], landed: (host: string) => Promise<boolean>) {
  await using up = startRecordingUpstream({ status: 429, retryAfter: "30" });
  const [a, b, c] = urls;
  assert.equal((await getVia(a, up.url)).status, 429);
  // The pause reaches Redis with the proxy's next call of the host's slot.
  await waitFor(() => landed(up.authority), "the pause in Redis");
  for (const proxy of [b, c]) {
    const res = await getVia(proxy, up.url);
    assert.equal(res.status, 503);
    assert.match(res.headers.get("proxy-status") ?? "", /destination_unavailable.*pause/);
    assert.ok(Number(res.headers.get("retry-after")) >= 1);
  }
  assert.equal(up.seen.length, 1, "only the first request reached the host");
}

await redisTest(
  "three proxies on one Redis: a pause one of them is asked for holds at the other two, with nothing sent upstream",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using fleet = await fleetOn(redis.url);
    await pauseHoldsAcrossFleet(
      fleet.urls,
      async (host) => Number(await redis.cli("HGET", "dprl:epoch", `p:${host}`)) > Date.now(),
    );
  },
);

await redisTest(
  "three proxies on a Redis Cluster: the pause lives in the epoch hash of the host's slot and holds at the other two",
  "server",
  async () => {
    await using cluster = await RedisClusterServers.start();
    await using fleet = await fleetOn({ cluster: cluster.nodes });
    const keys = new RedisKeyNames("dprl", true);
    const port = String(cluster.servers[0].port);
    await pauseHoldsAcrossFleet(fleet.urls, async (host) => {
      const until = await redisCli("-c", "-p", port, "HGET", keys.epoch(host), `p:${host}`);
      return Number(until) > Date.now();
    });
  },
);
