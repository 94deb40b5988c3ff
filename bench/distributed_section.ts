/**
 * The benchmark's distributed section (`deno task bench`, see run.ts): what
 * Redis costs dprl and goproxy-dprl, side by side where a goal rests on it.
 *
 * @module
 */

import { best, type Tools, tunnels, type TunnelsResult } from "./measure.ts";
import type { Spawned } from "./process.ts";
import type { ProxyDef } from "./proxies.ts";
import { RedisServer } from "./redis_server.ts";
import { DISTRIBUTED_LABELS as L, type Results } from "./report.ts";
import type { RedisCostFigures } from "./redis_cost_table.ts";

/** What a section of the benchmark takes from the runner. */
export interface Section {
  tools: Tools;
  results: Results;
  /** Rounds of the rate measurements. */
  rounds: number;
  /** Seconds of a measured run. */
  seconds: number;
  /** Seconds of a warm-up. */
  warm: number;
  /** Where Redis keeps its files. */
  cacheDir: string;
  log: (msg: string) => void;
  /** Runs one measurement; an error is recorded and the suite goes on. */
  attempt: <T>(label: string, fn: () => Promise<T>) => Promise<T | undefined>;
  startProxy: (
    def: ProxyDef,
    max: number,
    redis?: string,
  ) => Promise<{ port: number; proc: Spawned }>;
  startUpstream: () => Promise<{ port: number; proc: Spawned }>;
  /** Adds the proxy's CPU time per operation to a rate measurement. */
  withCpu: (
    proc: Spawned,
    seconds: number,
    ops: (r: TunnelsResult) => number,
    fn: () => Promise<TunnelsResult>,
  ) => Promise<TunnelsResult>;
  /** Keeps a round's rate, for the table of every round. */
  record: (label: string, round: number, rate: number | undefined) => void;
}

/** One distributed configuration: a proxy, a limit, Redis or not. */
interface DistConfig {
  label: string;
  def: ProxyDef;
  max: number;
  redis: boolean;
  /** Fill Redis with 100,000 unrelated keys first (else empty it). */
  full: boolean;
}

/**
 * The distributed section: dprl and goproxy-dprl on a fresh Redis, empty and
 * holding 100,000 unrelated keys, round after round; then dprl in memory and
 * on Redis side by side (one host, then many), and the heartbeat's cost.
 */
export async function measureDistributed(s: Section, defs: ProxyDef[]): Promise<void> {
  const { tools, results, log, attempt } = s;
  const dprl = defs.find((d) => d.name === "dprl")!;
  const go = defs.find((d) => d.name === "goproxy-dprl")!;
  const configs: DistConfig[] = [
    { label: L.dprlRedis, def: dprl, max: 100_000, redis: true, full: false },
    { label: L.dprlRedisFull, def: dprl, max: 100_000, redis: true, full: true },
    { label: L.goRedis, def: go, max: 0, redis: true, full: false },
    { label: L.goRedisFull, def: go, max: 0, redis: true, full: true },
  ];
  const redis = await RedisServer.start(s.cacheDir);
  const up = await s.startUpstream();
  let full = false;
  // Loaded here: the Redis client comes with it.
  const { heartbeatCost, scriptCalls, startEcho, tunnelsSideBySide } = await import(
    "./redis_cost.ts"
  );
  const redisCost: RedisCostFigures = results.redisCost = { scriptsPerTunnel: [], sideBySide: [] };
  try {
    for (let round = 0; round < s.rounds; round++) {
      const order = round % 2 ? [...configs].reverse() : configs;
      for (const c of order) {
        await attempt(c.label, async () => {
          if (c.redis && c.full !== full) {
            await redis.flushAll();
            full = false;
            if (c.full) {
              log("writing 100,000 unrelated keys to Redis");
              await redis.fill(100_000);
              const n = await redis.dbsize();
              if (n < 100_000) throw new Error(`Redis holds ${n} keys after the fill`);
              full = true;
            }
          }
          const { port, proc } = await s.startProxy(c.def, c.max, c.redis ? redis.addr : undefined);
          try {
            log(`${c.label} (${s.seconds}s), round ${round + 1}/${s.rounds}`);
            await tunnels(tools, port, up.port, s.warm);
            const counted = c.label === L.dprlRedis;
            if (counted) await redis.command("CONFIG", "RESETSTAT");
            const r = await s.withCpu(
              proc,
              s.seconds,
              (x) => x.ok,
              () => tunnels(tools, port, up.port, s.seconds),
            );
            results.distributed[c.label] = best(results.distributed[c.label], r)!;
            s.record(`${c.label}: tunnels/s`, round, r.perSec);
            if (counted) {
              const perTunnel = (await scriptCalls(redis)) / r.ok;
              redisCost.scriptsPerTunnel[round] = perTunnel;
              log(`  script calls per tunnel, round ${round + 1}: ${perTunnel.toFixed(3)}`);
            }
          } finally {
            await proc.stop();
          }
        });
      }
    }
    await attempt("Redis ÷ memory side by side", async () => {
      await redis.flushAll();
      full = false;
      const echo = startEcho();
      try {
        for (let round = 0; round < s.rounds; round++) {
          log(
            `dprl in memory and on Redis side by side (${s.seconds}s), round ${
              round + 1
            }/${s.rounds}`,
          );
          const t = await tunnelsSideBySide({ redis, targets: echo.targets, seconds: s.seconds });
          redisCost.sideBySide.push({ memory: t.memory, redis: t.redis, cpuUs: t.cpuUs });
          log(`  Redis ÷ memory, round ${round + 1}: ${(t.redis / t.memory).toFixed(2)}`);
        }
        log("the same with 100,000 unrelated keys in Redis");
        await redis.fill(100_000);
        const t = await tunnelsSideBySide({ redis, targets: echo.targets, seconds: s.seconds });
        redisCost.sideBySideFull = { memory: t.memory, redis: t.redis, cpuUs: t.cpuUs };
        log(`  Redis with 100,000 keys ÷ memory: ${(t.redis / t.memory).toFixed(2)}`);
      } finally {
        echo.close();
      }
    });
    await attempt(`side by side, ${MANY_HOSTS} hosts`, () => manyHosts(s, redis, redisCost));
    await attempt("heartbeat cost, 10,000 hosts", async () => {
      log("heartbeat cost: one worker holding 10,000 hosts, three heartbeats (about 20 s)");
      redisCost.heartbeat = await heartbeatCost(redis);
      full = false;
    });
  } finally {
    await up.proc.stop();
    await redis.stop();
  }
}

/** Hosts of the many-host slice of the distributed section. */
const MANY_HOSTS = 2000;
/** Hosts of the cold slice: at the tunnels/s of this machine each is come back to every 3 s or more. */
const COLD_HOSTS = 12_000;

/**
 * The side-by-side with the 32 clients round-robin over {@linkcode MANY_HOSTS}
 * hosts (127.0.x.y), each come back to about twice a second, so that the
 * slot released by one tunnel is there for the next one to the host only when
 * the limiter keeps it that long; then over {@linkcode COLD_HOSTS}, where
 * none is: two short runs, each after emptying `redis`, kept in `into`.
 */
async function manyHosts(s: Section, redis: RedisServer, into: RedisCostFigures): Promise<void> {
  into.manyHosts = await sideBySideOver(s, redis, MANY_HOSTS, "");
  into.coldHosts = await sideBySideOver(
    s,
    redis,
    COLD_HOSTS,
    ", each come back to every 3 s or more",
  );
}

/** One side-by-side run round-robin over `hosts` hosts, after emptying `redis`. */
async function sideBySideOver(s: Section, redis: RedisServer, hosts: number, what: string) {
  const { startEcho, tunnelsSideBySide } = await import("./redis_cost.ts");
  await redis.flushAll();
  const echo = startEcho(hosts);
  try {
    const seconds = Math.ceil(s.seconds / 2);
    s.log(`dprl in memory and on Redis side by side, ${hosts} hosts${what} (${seconds}s)`);
    const t = await tunnelsSideBySide({ redis, targets: echo.targets, seconds });
    s.log(
      `  Redis ÷ memory: ${(t.redis / t.memory).toFixed(2)}, ` +
        `script calls per tunnel: ${t.scriptsPerTunnel.toFixed(3)}`,
    );
    return { hosts, ...t };
  } finally {
    echo.close();
  }
}
