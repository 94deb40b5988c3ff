import assert from "node:assert/strict";
import { killChild } from "./_helpers/process.ts";
import { Redis } from "ioredis";
import { getLogger, type LogRecord } from "@logtape/logtape";
import { captureLogs } from "./_helpers/logs.ts";
import {
  type FailureMode,
  KEEP_FAR_MS,
  KEEP_MS,
  RedisLimiter,
  type RedisLimiterOptions,
} from "../lib/limit/redis_limiter.ts";
import { LimiterUnavailableError } from "../lib/limit/limiter.ts";
import {
  freePort,
  listeners,
  makeTlsFiles,
  rawCommand,
  redisAvailability,
  RedisClusterServers,
  RedisServer,
  redisTest,
  redisTlsUnavailable,
  type TlsFiles,
} from "./_helpers/redis_server.ts";
import { orFalse, waitFor } from "./_helpers/raw.ts";
import { baseEnv } from "./_helpers/spawn.ts";
import { giveBack, take } from "./_helpers/held_slots.ts";
import { HoldingRelay } from "./_helpers/holding_relay.ts";

// Captures what the limiters log, per test category.
const records = await captureLogs(["dprl-test"], "debug");

let testNo = 0;
function testLogger(): { logger: ReturnType<typeof getLogger>; logs: () => LogRecord[] } {
  const category = ["dprl-test", `t${++testNo}`];
  const logger = getLogger(category);
  return {
    logger,
    logs: () =>
      records.filter((r) =>
        r.category.length === 2 && r.category[1] === category[1] &&
        r.level !== "debug"
      ),
  };
}

function text(r: LogRecord): string {
  return r.message.map((p) => String(p)).join("");
}

const LEASE = 600;

/** A Redis for one test: a fresh server, or REDIS_URL with its own prefix. */
async function useRedis(): Promise<
  { url: string; prefix: string; server: RedisServer | null } & AsyncDisposable
> {
  const { server: canStart, url } = await redisAvailability();
  const prefix = `dprl-test-${crypto.randomUUID().slice(0, 8)}`;
  if (!canStart && url) {
    return { url, prefix, server: null, [Symbol.asyncDispose]: async () => {} };
  }
  const server = await RedisServer.start();
  return {
    url: server.url,
    prefix,
    server,
    [Symbol.asyncDispose]: () => server.stop(),
  };
}

function limiters(
  n: number,
  options: Partial<RedisLimiterOptions> & { redis: RedisLimiterOptions["redis"] },
): RedisLimiter[] & AsyncDisposable {
  const list = Array.from(
    { length: n },
    () => new RedisLimiter({ lease: LEASE, timeout: 500, ...options }),
  ) as RedisLimiter[] & AsyncDisposable;
  list[Symbol.asyncDispose] = async () => {
    await Promise.all(list.map((l) => l.close()));
  };
  return list;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

await redisTest(
  "acquire refuses the fifth slot at limit 4 across three workers",
  "any",
  async () => {
    await using redis = await useRedis();
    await using ws = limiters(3, { redis: redis.url, prefix: redis.prefix });
    const host = "api.example.com";
    const got: boolean[] = [];
    for (let i = 0; i < 4; i++) got.push(await take(ws[i % 3], host, 4));
    assert.deepEqual(got, [true, true, true, true]);
    for (const w of ws) assert.equal(await take(w, host, 4), false);
    assert.equal(await ws[2].count(host), 4);
    giveBack(ws[0], host);
    // Another worker's acquire may reach Redis before the release: count
    // writes what waits first, so the slot is free once it answers.
    assert.equal(await ws[0].count(host), 3);
    assert.equal(await take(ws[2], host, 4), true);
    assert.equal(await take(ws[1], host, 4), false);
    assert.equal(await ws[0].count(host), 4);
  },
);

await redisTest(
  "a host's counters are a hash of workers that release deletes at zero, beside one lease set per slot",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(1, { redis: redis.url, prefix: "p" });
    const w = ws[0];
    const host = "[::1]:9000";
    assert.equal(await take(w, host, 0), true);
    assert.equal(await take(w, host, 0), true);
    const n = `p:{${host}}:n`;
    const wk = "p:leases";
    assert.equal(
      (await server.cli("HGET", n, w.workerId)).trim(),
      "2",
    );
    const lease = Number(await server.cli("ZSCORE", wk, w.workerId));
    const [sec, usec] = (await server.cli("TIME")).trim().split("\n").map(Number);
    const now = sec * 1000 + usec / 1000;
    assert.ok(lease > now && lease <= now + LEASE + 50, `lease ${lease} now ${now}`);
    for (const key of [n, wk]) {
      const ttl = Number(await server.cli("PTTL", key));
      assert.ok(ttl > LEASE && ttl <= 12 * LEASE, `PTTL ${key} = ${ttl}`);
    }
    giveBack(w, host);
    giveBack(w, host);
    await waitFor(
      orFalse(async () => (await server.cli("EXISTS", n)).trim() === "0"),
      "the count key deleted",
      2_000,
    );
    // The lease is the slot's: it stays until the worker stops.
    assert.notEqual((await server.cli("ZSCORE", wk, w.workerId)).trim(), "");
    assert.equal(await w.count(host), 0);
  },
);

/** EVALSHA and EVAL calls `server` ran since its last `CONFIG RESETSTAT`. */
async function scriptCalls(server: RedisServer): Promise<number> {
  const info = await server.cli("INFO", "commandstats");
  let calls = 0;
  for (const m of info.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+)/g)) calls += Number(m[1]);
  return calls;
}

await redisTest(
  "a slot given back and taken again at once by the same worker costs no Redis call",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    // A long lease: no heartbeat's script call falls in the counts below.
    await using ws = limiters(1, { redis: redis.url, prefix: "p", lease: 60_000 });
    const w = ws[0];
    const host = "kept.example";
    const n = `p:{${host}}:n`;
    assert.equal(await take(w, host, 4), true);
    await server.cli("CONFIG", "RESETSTAT");
    for (let i = 0; i < 50; i++) {
      giveBack(w, host);
      assert.equal(w.localCount(host), 0);
      assert.equal(await take(w, host, 4), true);
    }
    assert.equal(await scriptCalls(server), 0);
    // Kept or held, Redis counted the slot all along; given back, it goes.
    assert.equal((await server.cli("HGET", n, w.workerId)).trim(), "1");
    giveBack(w, host);
    await waitFor(
      orFalse(async () => (await server.cli("EXISTS", n)).trim() === "0"),
      "released",
      2_000,
    );
    // Slots kept longest go back first; one in constant use stays kept.
    for (let i = 0; i < 3; i++) assert.equal(await take(w, host, 4), true);
    for (let i = 0; i < 3; i++) giveBack(w, host);
    await server.cli("CONFIG", "RESETSTAT");
    const until = Date.now() + 3 * KEEP_MS;
    while (Date.now() < until) {
      assert.equal(await take(w, host, 4), true);
      await sleep(1);
      giveBack(w, host);
    }
    assert.equal((await server.cli("HGET", n, w.workerId)).trim(), "1");
    assert.ok(await scriptCalls(server) <= 2, `${await scriptCalls(server)} script calls`);
  },
);

await redisTest(
  "a worker that comes back to a host far below its limit keeps its slot longer",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(1, { redis: redis.url, prefix: "p", lease: 60_000 });
    const w = ws[0];
    const field = async (host: string) =>
      (await server.cli("HGET", `p:{${host}}:n`, w.workerId)).trim();
    // far.example: 1 of 100 held; near.example: 2 of 3 held; one of each given back.
    const visit = async () => {
      assert.equal(await take(w, "far.example", 100), true);
      assert.equal(await take(w, "near.example", 3), true);
      giveBack(w, "far.example");
      giveBack(w, "near.example");
    };
    assert.equal(await take(w, "near.example", 3), true);
    await visit();
    // A first visit: both kept briefly.
    await waitFor(async () => (await field("far.example")) === "", "far given back");
    await waitFor(async () => (await field("near.example")) === "1", "near given back");
    // Come back: near its limit, kept briefly again; far below it, kept longer.
    await visit();
    const keptAt = performance.now();
    await waitFor(async () => (await field("near.example")) === "1", "near given back again");
    if (performance.now() - keptAt < KEEP_FAR_MS) {
      assert.equal(await field("far.example"), "1", "far.example's slot still kept");
      await server.cli("CONFIG", "RESETSTAT");
      assert.equal(await take(w, "far.example", 100), true);
      assert.equal(await scriptCalls(server), 0, "a kept slot taken without a call");
      giveBack(w, "far.example");
    }
    await waitFor(
      async () => (await field("far.example")) === "",
      "far given back",
      3 * KEEP_FAR_MS,
    );
  },
);

await redisTest(
  "a slot given back is kept only while the fleet has room, and count tells the truth at once",
  "any",
  async () => {
    await using redis = await useRedis();
    await using ws = limiters(2, { redis: redis.url, prefix: redis.prefix });
    const [a, b] = ws;
    const host = "full.example";
    assert.equal(await take(a, host, 1), true);
    giveBack(a, host); // the host is at its limit: no keeping
    await Promise.resolve(); // the turn's release is sent
    await a.client.ping(); // ... and answered
    assert.equal(await take(b, host, 1), true);
    giveBack(b, host);
    assert.equal(await b.count(host), 0);
    assert.equal(await take(a, host, 3), true);
    assert.equal(await take(a, host, 3), true);
    giveBack(a, host);
    assert.equal(await b.count(host), 2); // kept by a, still counted
    assert.equal(await a.count(host), 1); // a gives it back to count
  },
);

await redisTest(
  "limit 0 admits everything and release never drives a count below zero",
  "any",
  async () => {
    await using redis = await useRedis();
    await using ws = limiters(2, { redis: redis.url, prefix: redis.prefix });
    for (let i = 0; i < 20; i++) assert.equal(await take(ws[i % 2], "h", 0), true);
    assert.equal(await ws[0].count("h"), 20);
    for (let i = 0; i < 30; i++) giveBack(ws[1], "h"); // 10 more than it holds
    assert.equal(ws[1].localCount("h"), 0);
    await waitFor(orFalse(async () => (await ws[0].count("h")) === 10), "count 10", 2_000);
    assert.equal(await take(ws[0], "h", 11), true);
    assert.equal(await take(ws[1], "h", 11), false);
  },
);

await redisTest(
  "many concurrent acquires from five workers never over-admit, across heartbeats",
  "any",
  async () => {
    await using redis = await useRedis();
    // A short lease makes heartbeats (every 100 ms) overlap the traffic.
    await using ws = limiters(5, {
      redis: redis.url,
      prefix: redis.prefix,
      lease: 300,
      timeout: 2_000,
    });
    const limit = 7;
    const host = "busy.example";
    // A burst: exactly `limit` of 200 simultaneous acquires are granted.
    const burst = await Promise.all(
      Array.from({ length: 200 }, (_, i) => take(ws[i % 5], host, limit)),
    );
    assert.equal(burst.filter(Boolean).length, limit);
    assert.equal(await ws[0].count(host), limit);
    burst.forEach((ok, i) => ok && giveBack(ws[i % 5], host));
    await waitFor(orFalse(async () => (await ws[0].count(host)) === 0), "drain", 2_000);

    // Churn for 1.5 s: 40 clients take, hold briefly and give back slots.
    let inUse = 0;
    let peak = 0;
    let granted = 0;
    const until = Date.now() + 1_500;
    await Promise.all(Array.from({ length: 40 }, async (_, c) => {
      const w = ws[c % 5];
      while (Date.now() < until) {
        if (await take(w, host, limit)) {
          granted++;
          inUse++;
          peak = Math.max(peak, inUse);
          await sleep(Math.random() * 15);
          inUse--;
          giveBack(w, host);
        } else {
          await sleep(2);
        }
      }
    }));
    assert.ok(peak <= limit, `peak ${peak} > limit ${limit}`);
    assert.ok(granted > limit * 5, `only ${granted} grants`);
    // After the heartbeats settle, Redis agrees that nothing is held.
    await waitFor(orFalse(async () => (await ws[0].count(host)) === 0), "zero", 2_000);
  },
);

await redisTest(
  "a killed worker's slots return within one lease",
  "any",
  async () => {
    await using redis = await useRedis();
    const host = "killed.example";
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("./_helpers/redis_worker.ts", import.meta.url).pathname,
        redis.url,
        host,
        "3",
        String(LEASE),
      ],
      stdout: "piped",
      stderr: "null",
      clearEnv: true,
      env: baseEnv(),
    }).spawn();
    try {
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let out = "";
      const deadline = setTimeout(() => child.kill("SIGKILL"), 30_000);
      while (!out.includes("held 3")) {
        const { value, done } = await reader.read();
        if (done) break;
        out += value;
      }
      clearTimeout(deadline);
      reader.releaseLock();
      assert.match(out, /held 3/);
      await using ws = limiters(1, { redis: redis.url, prefix: "dprl" });
      assert.equal(await ws[0].count(host), 3);
      assert.equal(await take(ws[0], host, 3), false);
      // Outlive a heartbeat: the lease is renewed while the worker lives.
      await sleep(LEASE + 200);
      assert.equal(await ws[0].count(host), 3);
      child.kill("SIGKILL");
      const killedAt = Date.now();
      await waitFor(
        orFalse(async () => await take(ws[0], host, 3)),
        "a slot of the killed worker",
        LEASE + 300,
      );
      assert.ok(Date.now() - killedAt <= LEASE + 300);
      assert.equal(await ws[0].count(host), 1);
    } finally {
      await killChild(child);
    }
  },
);

await redisTest(
  "close deletes this worker's fields and lease and leaves the others'",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(2, { redis: redis.url, prefix: "dprl" });
    for (const host of ["a.example", "b.example:8443"]) {
      assert.equal(await take(ws[0], host, 0), true);
      assert.equal(await take(ws[1], host, 0), true);
    }
    await ws[0].close();
    for (const host of ["a.example", "b.example:8443"]) {
      assert.equal(
        (await server.cli("HKEYS", `dprl:{${host}}:n`)).trim(),
        ws[1].workerId,
      );
      assert.equal(await ws[1].count(host), 1);
    }
    assert.equal((await server.cli("ZRANGE", "dprl:leases", "0", "-1")).trim(), ws[1].workerId);
    await assert.rejects(take(ws[0], "a.example", 0), LimiterUnavailableError);
  },
);

await redisTest(
  "the heartbeat heals counts changed behind the workers' back",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(2, { redis: redis.url, prefix: "dprl" });
    const host = "heal.example";
    for (let i = 0; i < 3; i++) assert.equal(await take(ws[0], host, 0), true);
    assert.equal(await take(ws[1], host, 0), true);
    // A lost acquire (field deleted) and a lost release (field inflated).
    await server.cli("HDEL", `dprl:{${host}}:n`, ws[0].workerId);
    await server.cli("HSET", `dprl:{${host}}:n`, ws[1].workerId, "9");
    await waitFor(
      orFalse(async () => (await ws[1].count(host)) === 4),
      "counts healed within one heartbeat",
      LEASE / 3 + 300,
    );
  },
);

await redisTest(
  "Redis restarted empty while slots are held: counts are restored within one heartbeat and nothing is over-admitted",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    const { logger, logs } = testLogger();
    await using ws = limiters(3, { redis: redis.url, prefix: "dprl", logger });
    const host = "restart.example";
    const limit = 4;
    for (let i = 0; i < 4; i++) assert.equal(await take(ws[i % 3], host, limit), true);
    // Clients keep asking throughout the restart; none may get a fifth slot.
    let stop = false;
    let extra = 0;
    const askers = ws.map(async (w) => {
      while (!stop) {
        try {
          if (await take(w, host, limit)) extra++;
        } catch {
          // closed mode while Redis is down
        }
        await sleep(5);
      }
    });
    await server.restart();
    const restartedAt = Date.now();
    let last = "";
    await waitFor(
      orFalse(async () => {
        last = await server.cli("HGETALL", `dprl:{${host}}:n`);
        const values = last.trim().split("\n").filter((_, i) => i % 2 === 1);
        return values.reduce((a, v) => a + Number(v), 0) === limit;
      }),
      "counts restored",
      LEASE / 3 + 1_500,
    ).catch((error) => {
      throw new Error(`${error.message}; last seen ${JSON.stringify(last)}`);
    });
    const restoredIn = Date.now() - restartedAt;
    assert.ok(restoredIn < LEASE / 3 + 1_500, `restored in ${restoredIn} ms`);
    // New slots follow the failure mode (closed) for the recovery window.
    await sleep(Math.min(LEASE / 3, 1_000) + 1_100);
    stop = true;
    await Promise.all(askers);
    assert.equal(extra, 0, `${extra} slots over the limit were granted`);
    for (const w of ws) assert.equal(await take(w, host, limit), false);
    assert.equal(await ws[0].count(host), limit);
    // Releases after the restart are counted correctly too.
    giveBack(ws[0], host);
    giveBack(ws[0], host);
    await waitFor(orFalse(async () => (await ws[2].count(host)) === 2), "count 2", 2_000);
    assert.equal(await take(ws[2], host, limit), true);
    assert.equal(await take(ws[1], host, limit), true);
    assert.equal(await take(ws[1], host, limit), false);
    // Whatever was logged about the blip was logged once per worker at most.
    const lost = logs().filter((r) => text(r).includes("unreachable"));
    assert.ok(lost.length <= 3, `logged ${lost.length} outages: ${logs().map(text).join(" | ")}`);
  },
);

await redisTest(
  "one Redis restart opens one recovery window: a worker that held nothing through it is not refused after it",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    const { logger, logs } = testLogger();
    await using ws = limiters(2, { redis: redis.url, prefix: "dprl", logger });
    const [holder, idle] = ws;
    assert.equal(await take(holder, "held.example", 4), true);
    // The idle worker has talked to Redis (it knows the epoch) but holds nothing.
    assert.equal(await take(idle, "once.example", 4), true);
    giveBack(idle, "once.example");
    // A call answered after the one that connected: each worker knows Redis's run id.
    assert.equal(await idle.count("once.example"), 0);
    assert.equal(await holder.count("held.example"), 1);
    await server.restart();
    const restarted = () => logs().filter((r) => text(r).includes("restarted or failed over"));
    await waitFor(orFalse(() => restarted().length === 2), "both workers saw the restart", 10_000)
      .catch((error) => {
        throw new Error(`${error.message}; logged: ${logs().map(text).join(" | ")}`);
      });
    // Ask through the idle worker until its recovery window is over.
    await waitFor(orFalse(() => take(idle, "new.example", 4)), "a slot after the window", 10_000);
    // The holder saw the restart a moment later or sooner: its own window.
    await waitFor(
      orFalse(() => take(holder, "other.example", 4)),
      "the holder's window over",
      10_000,
    );
    const lost = logs().filter((r) => text(r).includes("lost dprl's counts"));
    assert.deepEqual(lost.map(text), [], "a second window after the restart window");
  },
);

await redisTest(
  "a worker forgets every host it holds nothing of, and close costs nothing for them",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(2, { redis: redis.url, prefix: "dprl" });
    const [w, other] = ws;
    // A host held elsewhere at its limit: refused here.
    assert.equal(await take(other, "full.example", 1), true);
    const hosts = 2_000;
    for (let i = 0; i < hosts; i += 200) {
      await Promise.all(Array.from({ length: 200 }, async (_, j) => {
        const host = `h${i + j}.example`;
        if (await take(w, host, 4)) giveBack(w, host);
      }));
      assert.equal(await take(w, "full.example", 1), false);
    }
    giveBack(other, "full.example");
    await waitFor(orFalse(() => w.trackedHosts() === 0), "no host tracked", 5_000)
      .catch((error) => {
        throw new Error(`${error.message}: ${w.trackedHosts()} tracked`);
      });
    await server.cli("CONFIG", "RESETSTAT");
    await w.close();
    const stats = await server.cli("INFO", "commandstats");
    const calls = (cmd: string): number =>
      Number(new RegExp(`cmdstat_${cmd}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
    assert.ok(calls("hdel") <= 4, `close sent ${calls("hdel")} HDEL:\n${stats}`);
    assert.ok(calls("evalsha") <= 4, `close sent ${calls("evalsha")} scripts:\n${stats}`);
  },
);

async function stoppedRedisScenario(
  mode: FailureMode,
  body: (
    ctx: {
      server: RedisServer;
      ws: RedisLimiter[];
      host: string;
      logs: () => LogRecord[];
    },
  ) => Promise<void>,
): Promise<void> {
  await using redis = await useRedis();
  const server = redis.server!;
  const { logger, logs } = testLogger();
  await using ws = limiters(2, {
    redis: redis.url,
    prefix: "dprl",
    failureMode: mode,
    timeout: 300,
    logger,
  });
  await body({ server, ws, host: "down.example", logs });
}

await redisTest(
  "with Redis stopped, failure mode closed rejects with LimiterUnavailableError, logs once, and resumes when Redis returns",
  "server",
  async () => {
    await stoppedRedisScenario("closed", async ({ server, ws, host, logs }) => {
      assert.equal(await take(ws[0], host, 2), true);
      await server.kill();
      for (let i = 0; i < 10; i++) {
        const started = Date.now();
        await assert.rejects(take(ws[i % 2], host, 2), LimiterUnavailableError);
        assert.ok(Date.now() - started < 1_000, "bounded by the timeout");
      }
      await assert.rejects(ws[0].count(host), LimiterUnavailableError);
      giveBack(ws[0], host); // while down: local only, healed on return
      await server.resume();
      // Redis came back empty (a new run id): for a short recovery window new
      // slots still follow the failure mode, then service resumes.
      await waitFor(orFalse(async () => await take(ws[1], host, 2)), "service back", 5_000);
      await waitFor(orFalse(async () => await take(ws[0], host, 2)), "service back", 5_000);
      // At the limit, refused by the counts once the worker's recovery window
      // (re-asserting after the restart) is over; a grant here would show in the count.
      await waitFor(
        orFalse(async () => (await take(ws[0], host, 2)) === false),
        "refused by the counts",
        5_000,
      );
      assert.equal(await ws[1].count(host), 2);
      // One "lost" and one "back" line per worker, not one per request.
      const lines = logs();
      const lost = lines.filter((r) => /unreachable/.test(text(r)));
      const back = lines.filter((r) => /reachable again/.test(text(r)));
      assert.ok(lost.length >= 1 && lost.length <= 2, lines.map(text).join(" | "));
      assert.equal(back.length, lost.length, lines.map(text).join(" | "));
      assert.ok(lost.every((r) => r.level === "warning"));
    });
  },
);

await redisTest(
  "failure mode open admits uncounted slots while Redis is down and their release leaves Redis counts alone",
  "server",
  async () => {
    await stoppedRedisScenario("open", async ({ server, ws, host, logs }) => {
      assert.equal(await take(ws[0], host, 2), true);
      assert.equal(await take(ws[0], host, 2), true);
      await server.kill();
      // At the limit, and still admitted: uncounted.
      for (let i = 0; i < 5; i++) assert.equal(await take(ws[0], host, 2), true);
      assert.equal(ws[0].localCount(host), 7);
      await server.resume(); // empty
      await waitFor(
        orFalse(async () => (await ws[1].count(host)) === 2),
        "counted slots re-asserted",
        3_000,
      );
      // The five uncounted slots go back first and never touch Redis.
      for (let i = 0; i < 5; i++) giveBack(ws[0], host);
      await sleep(LEASE / 3 + 100);
      assert.equal(await ws[1].count(host), 2);
      assert.equal(await take(ws[1], host, 2), false);
      giveBack(ws[0], host);
      await waitFor(orFalse(async () => await take(ws[1], host, 2)), "slot", 2_000);
      const lost = logs().filter((r) => /failure mode open/.test(text(r)));
      assert.ok(lost.length >= 1 && lost.length <= 2, lost.map(text).join(" | "));
    });
  },
);

await redisTest(
  "failure mode local enforces the limit in process memory while Redis is down",
  "server",
  async () => {
    await stoppedRedisScenario("local", async ({ server, ws, host, logs }) => {
      assert.equal(await take(ws[0], host, 3), true);
      await server.kill();
      assert.equal(await take(ws[0], host, 3), true);
      assert.equal(await take(ws[0], host, 3), true);
      assert.equal(await take(ws[0], host, 3), false);
      assert.equal(await take(ws[1], host, 3), true); // its own memory
      assert.equal(await ws[0].count(host), 3);
      giveBack(ws[0], host);
      assert.equal(await take(ws[0], host, 3), true);
      await server.resume();
      // The slots taken while down count in Redis once it is back.
      await waitFor(
        orFalse(async () => (await ws[1].count(host)) === 4),
        "local slots re-asserted",
        3_000,
      );
      // Redis came back empty: during the recovery window that follows,
      // failure mode local still applies; after it, the fleet's count does.
      await sleep(Math.min(LEASE / 3, 1_000) + 1_100);
      assert.equal(await take(ws[1], host, 3), false);
      assert.ok(logs().some((r) => /failure mode local/.test(text(r))));
    });
  },
);

await redisTest(
  "a Redis slower than the timeout counts as unavailable",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(1, {
      redis: redis.url,
      prefix: "dprl",
      timeout: 200,
    });
    assert.equal(await take(ws[0], "slow.example", 1), true);
    const sleeping = rawCommand(server.port, "DEBUG", "SLEEP", "1");
    await sleep(50);
    const started = Date.now();
    await assert.rejects(take(ws[0], "slow.example", 5), LimiterUnavailableError);
    assert.ok(Date.now() - started < 800);
    await sleeping;
    await waitFor(orFalse(async () => await take(ws[0], "slow.example", 5)), "back", 3_000);
    assert.equal(await ws[0].count("slow.example"), 2);
  },
);

await redisTest(
  "SCRIPT FLUSH mid-run does not fail an acquire",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(2, { redis: redis.url, prefix: "dprl" });
    const host = "flush.example";
    let granted = 0;
    for (let round = 0; round < 5; round++) {
      await server.cli("SCRIPT", "FLUSH");
      const got = await Promise.all(
        Array.from({ length: 10 }, (_, i) => take(ws[i % 2], host, 0)),
      );
      granted += got.filter(Boolean).length;
      assert.equal(await ws[0].count(host), granted);
    }
    assert.equal(granted, 50);
    for (let i = 0; i < 25; i++) {
      giveBack(ws[0], host);
      giveBack(ws[1], host);
    }
    await server.cli("SCRIPT", "FLUSH");
    await waitFor(orFalse(async () => (await ws[1].count(host)) === 0), "zero", 2_000);
  },
);

await redisTest(
  "acquire, release, count and the heartbeat never call KEYS or SCAN, however large the database",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await server.cli("DEBUG", "POPULATE", "100000", "unrelated");
    assert.equal((await server.cli("DBSIZE")).trim(), "100000");
    await server.cli("CONFIG", "RESETSTAT");
    await using ws = limiters(2, { redis: redis.url, prefix: "dprl" });
    for (let i = 0; i < 50; i++) {
      const host = `h${i % 5}.example`;
      await take(ws[i % 2], host, 3);
      if (i % 3 === 0) giveBack(ws[i % 2], host);
      await ws[0].count(host);
    }
    await sleep(LEASE / 3 + 100); // at least one heartbeat
    await Promise.all(ws.map((w) => w.close()));
    const stats = await server.cli("INFO", "commandstats");
    const used = [...stats.matchAll(/cmdstat_([a-z|]+):calls=(\d+)/g)].map((m) => m[1]);
    assert.ok(used.includes("evalsha"), stats);
    for (const banned of ["keys", "scan", "hscan", "zscan", "sscan", "flushdb", "flushall"]) {
      assert.ok(!used.includes(banned), `${banned} was called:\n${stats}`);
    }
    // Inside the scripts only single-key commands on the host's own keys run.
    const allowed = new Set([
      "evalsha",
      "eval",
      "script|load",
      "info",
      "quit",
      "client|setname",
      "client|setinfo",
      "select",
      "time",
      "exists",
      "hrandfield",
      "del",
      "hgetall",
      "zrange",
      "hget",
      "hset",
      "hdel",
      "hvals",
      "hincrby",
      "zadd",
      "zrem",
      "zrangebyscore",
      "zremrangebyscore",
      "zcard",
      "zscore",
      "zrank",
      "pexpire",
      "ping",
      "publish",
      "subscribe",
      "type",
    ]);
    for (const cmd of used) {
      if (cmd.startsWith("config") || cmd.startsWith("debug")) continue;
      assert.ok(allowed.has(cmd), `unexpected command ${cmd}:\n${stats}`);
    }
  },
);

await redisTest(
  "a connected ioredis client passed in is used and left open by close",
  "any",
  async () => {
    await using redis = await useRedis();
    const client = new Redis(redis.url);
    try {
      const [a] = limiters(1, { redis: client, prefix: redis.prefix });
      const b = new RedisLimiter({ redis: redis.url, prefix: redis.prefix, lease: LEASE });
      assert.equal(await take(a, "shared.example", 1), true);
      assert.equal(await take(b, "shared.example", 1), false);
      await a.close();
      assert.equal(client.status, "ready");
      assert.equal(await client.ping(), "PONG");
      assert.equal(await take(b, "shared.example", 1), true);
      await b.close();
    } finally {
      await client.quit();
    }
  },
);

await redisTest(
  "in a 3-master Redis Cluster limits hold and each host's keys live in one slot with its epoch and lease keys",
  "server",
  async () => {
    await using cluster = await RedisClusterServers.start();
    const config = { cluster: cluster.nodes };
    await using ws = limiters(3, { redis: config, prefix: "dprl", timeout: 2_000 });
    const hosts = Array.from({ length: 12 }, (_, i) => `svc${i}.example:${8000 + i}`);
    const limit = 3;
    const results = await Promise.all(
      hosts.flatMap((host) =>
        Array.from(
          { length: 10 },
          (_, i) => take(ws[i % 3], host, limit).then((ok) => ({ host, ok })),
        )
      ),
    );
    const nodesUsed = new Set<number>();
    const first = cluster.servers[0];
    for (const host of hosts) {
      assert.equal(results.filter((r) => r.host === host && r.ok).length, limit, host);
      assert.equal(await ws[0].count(host), limit);
      for (const [i, s] of cluster.servers.entries()) {
        const owner = await s.cli("EXISTS", `dprl:{${host}}:n`);
        if (owner.trim() === "1") nodesUsed.add(i);
      }
    }
    assert.ok(nodesUsed.size >= 2, "hosts spread over the masters");
    // The worker registry works on Cluster too.
    assert.deepEqual(
      (await ws[0].workers()).map((w) => w.id).sort(),
      ws.map((w) => w.workerId).sort(),
    );
    // Each host's epoch key and lease set live in the slot of its counters.
    for (const kind of ["epoch", "leases"]) {
      const slots = new Set<string>();
      for (const s of cluster.servers) {
        for (
          const key of (await s.cli("KEYS", `dprl:*:${kind}`)).trim().split("\n").filter(Boolean)
        ) {
          slots.add((await first.cli("CLUSTER", "KEYSLOT", key)).trim());
        }
      }
      for (const host of hosts) {
        const slot = (await first.cli("CLUSTER", "KEYSLOT", `dprl:{${host}}:n`)).trim();
        assert.ok(slots.has(slot), `no ${kind} key in slot ${slot} of ${host}`);
      }
    }
    for (const host of hosts) {
      const holder = ws.find((w) => w.localCount(host) > 0)!;
      giveBack(holder, host);
    }
    for (const host of hosts) {
      await waitFor(orFalse(async () => await take(ws[0], host, limit)), host, 2_000);
    }
  },
);

await redisTest(
  "on a Redis Cluster, leases renewed without a script keep hundreds of held hosts counted, and a lost lease set is noticed",
  "server",
  async () => {
    await using cluster = await RedisClusterServers.start();
    const { logger, logs } = testLogger();
    await using ws = limiters(2, {
      redis: { cluster: cluster.nodes },
      prefix: "dprl",
      timeout: 2_000,
      logger,
    });
    // More hosts than a heartbeat syncs: most slots get only their lease renewed.
    const hosts = Array.from({ length: 600 }, (_, i) => `many${i}.example`);
    for (let i = 0; i < hosts.length; i += 200) {
      const some = hosts.slice(i, i + 200).map((h) => take(ws[0], h, 1));
      assert.ok((await Promise.all(some)).every(Boolean));
    }
    await sleep(4 * LEASE); // every lease has been renewed several times over
    for (const server of cluster.servers) await server.cli("CONFIG", "RESETSTAT");
    await sleep(2 * LEASE);
    let zadds = 0;
    for (const server of cluster.servers) {
      const stats = await server.cli("INFO", "commandstats");
      zadds += Number(/cmdstat_zadd:calls=(\d+)/.exec(stats)?.[1] ?? 0);
    }
    assert.ok(zadds > 0, "no lease renewed by ZADD");
    const counts = await Promise.all(hosts.map((h) => ws[1].count(h)));
    assert.deepEqual(counts, hosts.map(() => 1));
    for (const host of hosts.slice(0, 20)) assert.equal(await take(ws[1], host, 1), false);
    // Lose the lease set of the first host's slot: the holder notices and restores it.
    const slot = (await cluster.servers[0].cli("CLUSTER", "KEYSLOT", `dprl:{${hosts[0]}}:n`))
      .trim();
    let leases = "";
    for (const server of cluster.servers) {
      for (const key of (await server.cli("KEYS", "dprl:*:leases")).trim().split("\n")) {
        if (key && (await server.cli("CLUSTER", "KEYSLOT", key)).trim() === slot) {
          leases = key;
          await server.cli("DEL", key);
        }
      }
    }
    assert.ok(leases, "a lease set in the slot");
    await waitFor(
      () => logs().some((r) => /lost dprl's counts/.test(text(r))),
      "the loss noticed",
      2 * LEASE,
    );
    await waitFor(
      orFalse(async () => (await ws[1].count(hosts[0])) === 1),
      "count restored",
      3 * LEASE,
    );
  },
);

/**
 * Three workers hold `limit` slots of a host and a fourth holds none; after
 * `wipe` (run against the server) clients keep asking every worker for 2.5 s:
 * none may get a slot, and the counts come back before the next heartbeat.
 */
async function lostKeysScenario(
  wipe: (server: RedisServer, host: string) => Promise<unknown>,
  strangerFirst = false,
): Promise<{ logs: LogRecord[] }> {
  await using redis = await useRedis();
  const server = redis.server!;
  const { logger, logs } = testLogger();
  // A long lease: the heartbeat (every 2 s) alone would come too late.
  const lease = 6_000;
  await using ws = limiters(4, { redis: redis.url, prefix: "dprl", logger, lease });
  const host = "lost.example";
  const limit = 4;
  for (let i = 0; i < limit; i++) assert.equal(await take(ws[i % 3], host, limit), true);
  assert.equal(await take(ws[3], "other.example", 0), true); // knows the epoch
  assert.equal(await take(ws[3], host, limit), false);
  await wipe(server, host);
  const wipedAt = Date.now();
  let extra = 0;
  let asked = 0;
  const ask = async (w: RedisLimiter): Promise<void> => {
    asked++;
    try {
      if (await take(w, host, limit)) extra++;
    } catch (error) {
      assert.ok(error instanceof LimiterUnavailableError, String(error));
    }
  };
  // The worker that holds nothing of the host asks alone first.
  if (strangerFirst) await ask(ws[3]);
  let restoredIn = -1;
  const until = wipedAt + 2_500;
  const counts = (async () => {
    while (Date.now() < until && restoredIn < 0) {
      const out = await server.cli("HVALS", `dprl:{${host}}:n`);
      const sum = out.trim().split("\n").filter(Boolean).reduce((a, v) => a + Number(v), 0);
      if (sum === limit) restoredIn = Date.now() - wipedAt;
      await sleep(10);
    }
  })();
  await Promise.all(ws.map(async (w) => {
    while (Date.now() < until) {
      await ask(w);
      await sleep(5);
    }
  }));
  await counts;
  assert.ok(asked > 100, `only ${asked} asks`);
  assert.equal(extra, 0, `${extra} slots over the limit were granted`);
  assert.ok(restoredIn >= 0 && restoredIn < lease / 3, `counts restored after ${restoredIn} ms`);
  // Once the recovery window is over, every worker refuses by the counts.
  for (const w of ws) {
    const deadline = Date.now() + 5_000;
    while (true) {
      try {
        assert.equal(await take(w, host, limit), false);
        break;
      } catch (error) {
        if (!(error instanceof LimiterUnavailableError) || Date.now() > deadline) throw error;
        await sleep(50);
      }
    }
  }
  assert.equal(await ws[3].count(host), limit);
  giveBack(ws[0], host);
  await waitFor(orFalse(async () => await take(ws[3], host, limit)), "a freed slot", 2_000);
  return { logs: logs() };
}

await redisTest(
  "after FLUSHALL while three workers hold slots, clients that keep asking are never admitted over the limit",
  "server",
  async () => {
    const { logs } = await lostKeysScenario((server) => server.cli("FLUSHALL"));
    const lost = logs.filter((r) => /lost dprl's counts/.test(text(r)));
    assert.ok(lost.length >= 1 && lost.length <= 4, logs.map(text).join(" | "));
  },
);

await redisTest(
  "after FLUSHDB while workers hold slots, nothing is admitted over the limit",
  "server",
  async () => {
    await lostKeysScenario((server) => server.cli("FLUSHDB"));
  },
);

for (
  const [what, keys] of [
    ["DEL of a host's keys", ["dprl:{H}:n", "dprl:leases"]],
    ["eviction of a host's hash alone", ["dprl:{H}:n"]],
    ["eviction of the lease set alone", ["dprl:leases"]],
  ] as const
) {
  await redisTest(
    `after ${what}, a worker holding nothing of it asks first and nothing is admitted over the limit`,
    "server",
    async () => {
      await lostKeysScenario(
        (server, host) => server.cli("DEL", ...keys.map((k) => k.replace("H", host))),
        true,
      );
    },
  );
}

await redisTest(
  "a forged worker entry with a far-future lease is ignored at once and one within a lease dies with it",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(1, { redis: redis.url, prefix: "dprl" });
    const w = ws[0];
    const host = "poison.example";
    const n = `dprl:{${host}}:n`;
    const wk = "dprl:leases";
    const redisNow = async () => {
      const [sec, usec] = (await server.cli("TIME")).trim().split("\n").map(Number);
      return sec * 1000 + Math.floor(usec / 1000);
    };
    // A stranger's HSET and ZADD with a lease a year ahead.
    await server.cli("HSET", n, "fake", "1000");
    await server.cli("ZADD", wk, String((await redisNow()) + 365 * 86_400_000), "fake");
    // A count without any lease.
    await server.cli("HSET", n, "orphan", "1000");
    assert.equal(await w.count(host), 0);
    assert.equal(await take(w, host, 2), true);
    assert.equal(await take(w, host, 2), true);
    assert.equal(await take(w, host, 2), false);
    assert.equal((await server.cli("HEXISTS", n, "fake")).trim(), "0");
    assert.equal((await server.cli("HEXISTS", n, "orphan")).trim(), "0");
    assert.equal((await server.cli("ZSCORE", wk, "fake")).trim(), "");
    giveBack(w, host);
    giveBack(w, host);
    // A forged lease within one lease counts until it passes.
    await server.cli("HSET", n, "fake", "1000");
    await server.cli("ZADD", wk, String((await redisNow()) + LEASE), "fake");
    assert.equal(await take(w, host, 2), false);
    const forgedAt = Date.now();
    await waitFor(
      orFalse(async () => await take(w, host, 2)),
      "the forged lease to pass",
      LEASE + 500,
    );
    assert.ok(Date.now() - forgedAt <= LEASE + 500);
    assert.equal(await w.count(host), 1);
  },
);

await redisTest(
  "a wrong Redis password is one warning that says so, however many requests fail",
  "server",
  async () => {
    await using server = await RedisServer.start({ args: ["--requirepass", "right"] });
    for (const password of ["wrong", undefined]) {
      const { logger, logs } = testLogger();
      await using ws = limiters(1, {
        redis: { host: "127.0.0.1", port: server.port, password },
        logger,
        timeout: 300,
      });
      for (let i = 0; i < 30; i++) {
        await assert.rejects(take(ws[0], "auth.example", 2), LimiterUnavailableError);
      }
      await sleep(300); // a few reconnect attempts
      for (let i = 0; i < 10; i++) {
        await assert.rejects(take(ws[0], "auth.example", 2), LimiterUnavailableError);
      }
      assert.equal(ws[0].up, false);
      const lines = logs();
      assert.equal(lines.length, 1, lines.map(text).join(" | "));
      assert.equal(lines[0].level, "warning");
      assert.match(text(lines[0]), /refused the credentials \((WRONGPASS|NOAUTH).*password/);
    }
  },
);

await redisTest(
  "a Redis outage is logged once however many requests are refused meanwhile",
  "server",
  async () => {
    await stoppedRedisScenario("closed", async ({ server, ws, host, logs }) => {
      assert.equal(await take(ws[0], host, 5), true);
      await server.kill();
      for (let i = 0; i < 200; i++) {
        await assert.rejects(take(ws[0], host, 5), LimiterUnavailableError);
        giveBack(ws[0], host);
        await ws[0].count(host).catch(() => {});
      }
      // The line waits a moment for the errors that come with the outage.
      await waitFor(orFalse(() => logs().length > 0), "the outage's log line", 2_000);
      const lines = logs();
      assert.equal(lines.length, 1, lines.map(text).join(" | "));
      assert.match(text(lines[0]), /unreachable/);
    });
  },
);

await redisTest(
  "dprl warns once at start when Redis may evict its keys, and not when it may not or will not say",
  "server",
  async () => {
    const cases: [string[], number][] = [
      [["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"], 1],
      [["--maxmemory", "100mb", "--maxmemory-policy", "volatile-ttl"], 1],
      [["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"], 0],
      [["--maxmemory", "0", "--maxmemory-policy", "allkeys-lru"], 0],
      [[
        "--maxmemory",
        "100mb",
        "--maxmemory-policy",
        "allkeys-lru",
        "--rename-command",
        "CONFIG",
        "",
      ], 0],
    ];
    for (const [args, warnings] of cases) {
      await using server = await RedisServer.start({ args });
      const { logger, logs } = testLogger();
      await using ws = limiters(2, { redis: server.url, logger });
      for (let i = 0; i < 5; i++) await take(ws[i % 2], "evict.example", 0);
      await waitFor(orFalse(() => logs().length >= warnings), "the warning", 2_000);
      await sleep(100);
      const lines = logs().filter((r) => /evict/.test(text(r)));
      assert.equal(
        lines.length,
        warnings * 2,
        `${args.join(" ")}: ${logs().map(text).join(" | ")}`,
      );
      assert.ok(lines.every((r) => /noeviction/.test(text(r))));
    }
  },
);

/**
 * Registers a test against a `redis-server` that speaks TLS only, with a CA
 * and certificates made by `openssl` for the test. Skipped loudly when this
 * redis-server was built without TLS; fails under `CI=true` when
 * `redis-server` or `openssl` is missing.
 */
async function redisTlsTest(
  name: string,
  serverArgs: string[],
  fn: (ctx: { port: number; files: TlsFiles; pem: (path: string) => string }) => Promise<void>,
): Promise<void> {
  const why = await redisTlsUnavailable();
  if (why === null) {
    Deno.test(name, async () => {
      const dir = await Deno.makeTempDir({ prefix: "dprl-tls-" });
      try {
        const files = await makeTlsFiles(dir);
        const port = freePort();
        await using _server = await RedisServer.start({
          args: [
            "--tls-port",
            String(port),
            "--tls-cert-file",
            files.serverCert,
            "--tls-key-file",
            files.serverKey,
            "--tls-ca-cert-file",
            files.ca,
            ...serverArgs,
          ],
        });
        await fn({ port, files, pem: (path) => Deno.readTextFileSync(path) });
      } finally {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    });
    return;
  }
  if (Deno.env.get("CI") === "true" && !/built without TLS/.test(why)) {
    Deno.test(name, () => {
      throw new Error(`Cannot run this Redis TLS test on CI: ${why}`);
    });
    return;
  }
  console.warn(`\n!!! SKIPPED Redis TLS test "${name}": ${why}.\n`);
  Deno.test({ name, ignore: true, fn() {} });
}

await redisTlsTest(
  "Redis over TLS with a private CA given as tls.ca counts slots, by options and by rediss:// URL",
  ["--tls-auth-clients", "no"],
  async ({ port, files, pem }) => {
    const ca = pem(files.ca);
    await using ws = limiters(1, { redis: { host: "127.0.0.1", port, tls: { ca } } });
    await using byUrl = limiters(1, { redis: { url: `rediss://127.0.0.1:${port}`, tls: { ca } } });
    assert.equal(await take(ws[0], "tls.example", 2), true);
    assert.equal(await take(byUrl[0], "tls.example", 2), true);
    assert.equal(await take(ws[0], "tls.example", 2), false);
    assert.equal(await byUrl[0].count("tls.example"), 2);
    assert.equal(ws[0].up, true);
  },
);

await redisTlsTest(
  "without the private CA the TLS failure is one warning that names the cause",
  ["--tls-auth-clients", "no"],
  async ({ port }) => {
    const { logger, logs } = testLogger();
    await using ws = limiters(1, {
      redis: `rediss://127.0.0.1:${port}`,
      logger,
      timeout: 500,
    });
    for (let i = 0; i < 10; i++) {
      await assert.rejects(take(ws[0], "tls.example", 2), LimiterUnavailableError);
    }
    await sleep(300);
    const lines = logs();
    assert.equal(lines.length, 1, lines.map(text).join(" | "));
    assert.match(text(lines[0]), /self[- ]signed|certificate/i);
    assert.match(text(lines[0]), /certificate/i);
    assert.doesNotMatch(text(lines[0]), /Connection to Redis closed/);
  },
);

await redisTlsTest(
  "mutual TLS: a client certificate from tls.cert and tls.key is accepted, none is refused with a warning",
  ["--tls-auth-clients", "yes"],
  async ({ port, files, pem }) => {
    const ca = pem(files.ca);
    await using ws = limiters(1, {
      redis: {
        host: "127.0.0.1",
        port,
        tls: { ca, cert: pem(files.clientCert), key: pem(files.clientKey) },
      },
    });
    assert.equal(await take(ws[0], "mtls.example", 1), true);
    assert.equal(await take(ws[0], "mtls.example", 1), false);
    const { logger, logs } = testLogger();
    await using anon = limiters(1, {
      redis: { host: "127.0.0.1", port, tls: { ca } },
      logger,
      timeout: 500,
    });
    for (let i = 0; i < 5; i++) {
      await assert.rejects(take(anon[0], "mtls.example", 1), LimiterUnavailableError);
    }
    await sleep(300);
    const lines = logs();
    assert.equal(lines.length, 1, lines.map(text).join(" | "));
    assert.match(text(lines[0]), /certificate/i);
    assert.doesNotMatch(text(lines[0]), /Connection to Redis closed/);
  },
);

await redisTest(
  "every live worker is in the registry with its info and connections, and leaves it on close or within a lease of dying",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(3, { redis: redis.url, prefix: "dprl" });
    ws.forEach((w, i) =>
      w.setWorkerInfo({ version: "9.9.9", adminUrl: `http://127.0.0.1:${9000 + i}/` })
    );
    for (let i = 0; i < 3; i++) assert.equal(await take(ws[0], "reg.example", 0), true);
    assert.equal(await take(ws[1], "reg.example", 0), true);
    await waitFor(
      orFalse(async () =>
        (await ws[2].workers()).find((w) => w.id === ws[0].workerId)?.connections === 3
      ),
      "connections after a heartbeat",
      LEASE,
    );
    const list = await ws[2].workers();
    assert.deepEqual(list.map((w) => w.id).sort(), ws.map((w) => w.workerId).sort());
    for (const [i, w] of ws.entries()) {
      const info = list.find((x) => x.id === w.workerId)!;
      assert.equal(info.version, "9.9.9");
      assert.equal(info.adminUrl, `http://127.0.0.1:${9000 + i}/`);
      assert.equal(info.pid, Deno.pid);
      assert.equal(info.hostname, Deno.hostname());
      assert.ok(!Number.isNaN(Date.parse(info.started)), info.started);
      assert.equal(info.connections, [3, 1, 0][i]);
      const ttl = Number(await server.cli("PTTL", `dprl:worker:${w.workerId}`));
      assert.ok(ttl > 0 && ttl <= 12 * LEASE, `PTTL ${ttl}`);
    }
    // A forged member with a far-future lease is not a worker.
    await server.cli("ZADD", "dprl:workers", "99999999999999", "forged");
    await ws[1].close();
    const after = (await ws[2].workers()).map((w) => w.id).sort();
    assert.deepEqual(after, [ws[0].workerId, ws[2].workerId].sort());
    assert.equal((await server.cli("EXISTS", `dprl:worker:${ws[1].workerId}`)).trim(), "0");

    // A worker process killed with SIGKILL drops out within one lease.
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("./_helpers/redis_worker.ts", import.meta.url).pathname,
        redis.url,
        "reg.example",
        "2",
        String(LEASE),
      ],
      stdout: "piped",
      stderr: "null",
      clearEnv: true,
      env: baseEnv(),
    }).spawn();
    try {
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let out = "";
      while (!out.includes("held 2")) {
        const { value, done } = await reader.read();
        if (done) break;
        out += value;
      }
      reader.releaseLock();
      assert.equal((await ws[0].workers()).length, 3);
      child.kill("SIGKILL");
      await child.status;
      await waitFor(orFalse(async () => (await ws[0].workers()).length === 2), "gone", LEASE + 300);
    } finally {
      await killChild(child);
    }
  },
);

await redisTest(
  "fleet counts sum every live worker per known host, refreshed by the heartbeat",
  "server",
  async () => {
    await using redis = await useRedis();
    await using ws = limiters(3, { redis: redis.url, prefix: "dprl" });
    const calls: number[] = [];
    ws[0].onCall = (ms) => calls.push(ms);
    assert.equal(await take(ws[0], "a.example", 0), true);
    assert.equal(await take(ws[1], "a.example", 0), true);
    assert.equal(await take(ws[2], "a.example", 0), true);
    assert.equal(await take(ws[1], "b.example", 0), true);
    assert.ok(calls.length >= 1 && calls.every((ms) => ms >= 0 && Number.isFinite(ms)));
    await waitFor(
      orFalse(() => ws[0].fleetCounts().get("a.example") === 3),
      "a.example at 3 after a heartbeat",
      LEASE,
    );
    assert.equal(ws[0].fleetCounts().has("b.example"), false); // never seen here
    giveBack(ws[1], "a.example");
    giveBack(ws[2], "a.example");
    await waitFor(
      orFalse(() => ws[0].fleetCounts().get("a.example") === 1),
      "1 after releases",
      LEASE,
    );
    giveBack(ws[0], "a.example");
    await waitFor(
      orFalse(() => !ws[0].fleetCounts().has("a.example")),
      "forgotten at 0",
      2 * LEASE,
    );
  },
);

await redisTest(
  "up is false while Redis is down and true once it answers again",
  "server",
  async () => {
    await stoppedRedisScenario("closed", async ({ server, ws, host }) => {
      assert.equal(await take(ws[0], host, 2), true);
      assert.equal(ws[0].up, true);
      await server.kill();
      await waitFor(orFalse(() => !ws[0].up), "down", 2_000);
      await server.resume();
      await waitFor(orFalse(() => ws[0].up), "up again", 5_000);
    });
  },
);

await redisTest(
  "a close while the subscriber's channels are subscribed to anew leaves no rejection unheard",
  "server",
  async () => {
    await using redis = await useRedis();
    await using relay = new HoldingRelay(redis.server!.port);
    const client = new Redis(`redis://127.0.0.1:${relay.port}`, { lazyConnect: true });
    client.on("error", () => {});
    // The limiter's subscriber is a duplicate of the client passed in.
    const subs: Redis[] = [];
    const duplicate = client.duplicate.bind(client);
    client.duplicate = (override) => {
      subs.push(duplicate(override));
      return subs.at(-1)!;
    };
    const unheard: unknown[] = [];
    const onUnheard = (e: PromiseRejectionEvent) => {
      e.preventDefault();
      unheard.push(e.reason);
    };
    addEventListener("unhandledrejection", onUnheard);
    try {
      const w = new RedisLimiter({ redis: client, prefix: redis.prefix, lease: LEASE });
      assert.equal(await take(w, "resub.example", 1), true);
      const pressure = [`${redis.prefix}:pressure`];
      await waitFor(
        orFalse(async () => (await listeners([redis.server!.port], pressure))[0] === 1),
        "on",
        2_000,
      );
      // Every connection drops; once the subscriber is back and subscribes
      // anew, Redis never answers and the limiter closes.
      const closed = new Promise((resolve) => relay.hold("subscribe", () => resolve(w.close())));
      relay.cutAll();
      await closed;
      const sub = subs[0];
      if (sub.status !== "end") await new Promise((resolve) => sub.once("end", resolve));
      // Rejections nobody heard are reported once the current task ends.
      await new Promise((resolve) => setTimeout(resolve, 0));
      await new Promise((resolve) => setTimeout(resolve, 0));
      assert.deepEqual(unheard.map(String), []);
    } finally {
      removeEventListener("unhandledrejection", onUnheard);
      client.disconnect();
    }
  },
);

await redisTest(
  "after a lost connection the subscriber listens again to the fleet's channels and to the queues it waits in",
  "server",
  async () => {
    await using redis = await useRedis();
    await using relay = new HoldingRelay(redis.server!.port);
    await using ws = limiters(1, { redis: `redis://127.0.0.1:${relay.port}`, prefix: "dprl" });
    const host = "resub.example";
    assert.equal(await take(ws[0], host, 1), true);
    ws[0].enqueue!(host);
    const channels = ["dprl:pressure", "dprl:lost", `dprl:{${host}}:q`];
    const all = (n: number) =>
      orFalse(async () => (await listeners([redis.server!.port], channels)).every((x) => x === n));
    await waitFor(all(1), "listened", 2_000);
    relay.cutAll();
    await waitFor(all(0), "lost", 2_000);
    await waitFor(all(1), "listened again", 3_000);
  },
);

await redisTest(
  "a heartbeat syncs 300 held hosts in a handful of script calls, not one per host",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    const lease = 3_000; // a heartbeat every second
    await using ws = limiters(1, { redis: redis.url, prefix: "dprl", lease });
    const hosts = Array.from({ length: 300 }, (_, i) => `batch${i}.example`);
    for (const host of hosts) assert.equal(await take(ws[0], host, 1), true);
    await server.cli("CONFIG", "RESETSTAT");
    await sleep(lease / 3 + 200); // one heartbeat, perhaps two
    const stats = await server.cli("INFO", "commandstats");
    const calls = Number(/cmdstat_evalsha:calls=(\d+)/.exec(stats)?.[1] ?? 0);
    // 256 hosts a call (and one to register the worker), one heartbeat or two.
    assert.ok(calls >= 2 && calls <= 2 * (Math.ceil(300 / 256) + 1), `${calls} script calls`);
    // Every host is still held, and by exactly one slot.
    for (const host of [hosts[0], hosts[150], hosts[299]]) {
      assert.equal(await ws[0].count(host), 1);
      assert.equal(await take(ws[0], host, 1), false);
    }
  },
);

await redisTest(
  "acquires and releases of one host in one event-loop turn go to Redis as one script call, and the cap stays exact",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    // A long lease keeps the heartbeat out of the counts below.
    await using ws = limiters(2, { redis: redis.url, prefix: "dprl", lease: 60_000 });
    const host = "turn.example";
    assert.equal(await take(ws[0], "warm.example", 0), true);
    assert.equal(await take(ws[1], host, 7), true);
    // Script calls: EVALSHA, or EVAL when the script was not loaded yet.
    const evalsha = async () => {
      const stats = await server.cli("INFO", "commandstats");
      return [...stats.matchAll(/cmdstat_eval(?:sha)?:calls=(\d+)/g)].reduce(
        (sum, m) => sum + Number(m[1]),
        0,
      );
    };
    await server.cli("CONFIG", "RESETSTAT");
    const first = await Promise.all(Array.from({ length: 50 }, () => take(ws[0], host, 7)));
    assert.equal(first.filter(Boolean).length, 6);
    assert.deepEqual(first.slice(0, 6), [true, true, true, true, true, true]);
    assert.equal(await evalsha(), 1);
    // Four releases and ten acquires in one turn: the releases go first.
    await server.cli("CONFIG", "RESETSTAT");
    for (let i = 0; i < 4; i++) giveBack(ws[0], host);
    const second = await Promise.all(Array.from({ length: 10 }, () => take(ws[0], host, 7)));
    assert.equal(second.filter(Boolean).length, 4);
    assert.equal(await evalsha(), 1);
    assert.equal(ws[0].localCount(host), 6);
    assert.equal(await ws[1].count(host), 7);
    assert.equal(await take(ws[1], host, 7), false);
    // Releases alone in one turn: one call too.
    await server.cli("CONFIG", "RESETSTAT");
    for (let i = 0; i < 6; i++) giveBack(ws[0], host);
    await waitFor(orFalse(async () => (await evalsha()) >= 1), "the release call", 2_000);
    await sleep(100);
    assert.equal(await evalsha(), 1);
    assert.equal(await ws[0].count(host), 1);
  },
);

await redisTest(
  "lost keys of one host put only that host in recovery; other hosts keep being counted",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(2, { redis: redis.url, prefix: "dprl", lease: 6_000 });
    assert.equal(await take(ws[0], "a.example", 1), true);
    assert.equal(await take(ws[1], "b.example", 2), true);
    await server.cli("DEL", "dprl:{a.example}:n");
    await assert.rejects(take(ws[1], "a.example", 1), LimiterUnavailableError);
    assert.equal(await take(ws[1], "b.example", 2), true);
    assert.equal(await take(ws[1], "b.example", 2), false);
    await waitFor(
      orFalse(async () => (await ws[1].count("a.example")) === 1),
      "a.example re-asserted",
      2_000,
    );
  },
);

await redisTest(
  "a heartbeat restores a deleted count key, a deleted lease set and a FLUSHALL, with their expiry",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(2, { redis: redis.url, prefix: "dprl" });
    const host = "fast.example";
    const n = `dprl:{${host}}:n`;
    const w = "dprl:leases";
    const id = ws[0].workerId;
    assert.equal(await take(ws[0], host, 1), true);
    await sleep(LEASE); // a few heartbeats
    const restored = async () =>
      (await server.cli("HGET", n, id)).trim() === "1" &&
      (await server.cli("ZSCORE", w, id)).trim() !== "" &&
      Number(await server.cli("PTTL", n)) > 0 &&
      Number(await server.cli("PTTL", w)) > 0;
    assert.ok(await restored());
    for (const wipe of [["DEL", n], ["DEL", w], ["FLUSHALL"]]) {
      await server.cli(...wipe);
      await waitFor(orFalse(restored), `${wipe.join(" ")} healed by the next heartbeat`, LEASE);
      assert.equal(await ws[1].count(host), 1, wipe.join(" "));
      await sleep(LEASE / 2);
    }
    // Once the fleet has re-asserted its counts, the cap still holds.
    await waitFor(
      orFalse(async () => {
        try {
          return await take(ws[1], host, 1) === false;
        } catch {
          return false; // still recovering
        }
      }),
      "a refusal after recovery",
      5 * LEASE,
    );
  },
);

await redisTest(
  "a forged entry dies at the next heartbeat, though nothing else touches the host",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(1, { redis: redis.url, prefix: "dprl" });
    const hosts = Array.from({ length: 10 }, (_, i) => `forged${i}.example`);
    for (const host of hosts) assert.equal(await take(ws[0], host, 2), true);
    await sleep(LEASE);
    const [sec] = (await server.cli("TIME")).trim().split("\n").map(Number);
    for (const host of hosts) await server.cli("HSET", `dprl:{${host}}:n`, "fake", "1000");
    await server.cli("ZADD", "dprl:leases", String(sec * 1000 + 365 * 86_400_000), "fake");
    const gone = async (host: string) =>
      (await server.cli("HEXISTS", `dprl:{${host}}:n`, "fake")).trim() === "0" &&
      (await server.cli("ZSCORE", "dprl:leases", "fake")).trim() === "";
    await waitFor(
      orFalse(async () => (await Promise.all(hosts.map(gone))).every(Boolean)),
      "the forged fields and members to be deleted by a heartbeat",
      LEASE,
    );
    for (const host of hosts) assert.equal(ws[0].fleetCounts().get(host), 1);
  },
);

await redisTest(
  "held hosts' keys never expire, and a heartbeat syncs a bounded share of many held hosts",
  "server",
  async () => {
    await using redis = await useRedis();
    const server = redis.server!;
    await using ws = limiters(1, { redis: redis.url, prefix: "dprl" });
    const group = { name: "grp", limit: 0 };
    const hosts = Array.from({ length: 2_000 }, (_, i) => `ttl${i}.example`);
    for (let i = 0; i < hosts.length; i += 500) {
      const some = hosts.slice(i, i + 500).map((h) => take(ws[0], h, 0));
      assert.ok((await Promise.all(some)).every(Boolean));
    }
    assert.equal(await take(ws[0], "member.example", 0, { group }), true);
    const keys = [
      ...hosts.slice(0, 20).map((h) => `dprl:{${h}}:n`),
      "dprl:leases",
      "dprl:{g:grp}:h:member.example:n",
      "dprl:{g:grp}:members",
    ];
    await sleep(LEASE); // past the first heartbeats, which sync every new host
    await server.cli("CONFIG", "RESETSTAT");
    const started = Date.now();
    // Longer than the keys' time to live (twelve leases).
    let least = Infinity;
    const until = Date.now() + 14 * LEASE;
    while (Date.now() < until) {
      for (const key of keys) least = Math.min(least, Number(await server.cli("PTTL", key)));
      await sleep(50);
    }
    const beats = (Date.now() - started) / (LEASE / 3);
    assert.ok(least > LEASE, `a key's expiry fell to ${least} ms`);
    for (const host of hosts) assert.equal(ws[0].localCount(host), 1);
    assert.equal(await ws[0].count(hosts[0]), 1);
    // One lease per slot: a heartbeat reads far fewer hashes than hosts held.
    const stats = await server.cli("INFO", "commandstats");
    const reads = Number(/cmdstat_hgetall:calls=(\d+)/.exec(stats)?.[1] ?? 0);
    assert.ok(
      reads < 0.5 * hosts.length * beats,
      `${reads} hashes read in ${beats.toFixed(1)} heartbeats of ${hosts.length} hosts`,
    );
  },
);
