/**
 * What distributed mode costs Redis, on loopback:
 *
 * - script calls per tunnel: 32 clients open CONNECT tunnels to one host
 *   through one dprl, one after another each, for a few seconds; EVALSHA,
 *   EVAL and FCALL calls from `INFO commandstats` over the tunnels opened
 *   (goal <= 1.0);
 * - tunnels/s with Redis over tunnels/s in memory, the same load on two
 *   proxies running side by side, alternating in half-second slices (goal
 *   >= 0.9 in every round), and each proxy's CPU per tunnel;
 * - the idle cost of holding 10,000 hosts: one limiter holds one slot of
 *   each and only its heartbeat talks to Redis; Redis's CPU (`INFO cpu`) and
 *   the limiter's calls per second (each one round trip) over three
 *   heartbeats, from halfway between two (goals: <= 1% of a core, <= 50
 *   round trips/s).
 *
 * ```sh
 * deno run -A bench/redis_cost.ts            # 3 rounds of 5 s, 10,000 hosts
 * deno run -A bench/redis_cost.ts --quick    # 1 round of 3 s
 * deno run -A bench/redis_cost.ts --cluster  # also the heartbeat on a 3-master Cluster
 * deno run -A bench/redis_cost.ts --limit 32 # the host's limit equal to the clients
 * ```
 *
 * @module
 */

import {
  cpuSeconds,
  freePort,
  loadAverage,
  spawn,
  type Spawned,
  stopAll,
  waitForPort,
} from "./process.ts";
import { RedisServer } from "./redis_server.ts";
import { RedisLimiter } from "../lib/limit/redis_limiter.ts";
import { RedisClusterServers } from "../tests/_helpers/redis_server.ts";

const quick = Deno.args.includes("--quick");
const ROUNDS = quick ? 1 : 3;
const SECONDS = quick ? 3 : 5;
const CLIENTS = 32;
/** The host's limit (`--limit N`); by default far above the clients. */
const LIMIT = Deno.args.includes("--limit")
  ? Number(Deno.args[Deno.args.indexOf("--limit") + 1])
  : 100_000;
const HOSTS = 10_000;
const LEASE_MS = 15_000;
const enc = new TextEncoder();
const dec = new TextDecoder();

/** A TCP upstream that answers every byte with the same byte. */
export function startEcho(): { port: number; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of listener) {
      (async () => {
        const buf = new Uint8Array(64);
        try {
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) break;
            await conn.write(buf.subarray(0, n));
          }
        } catch {
          // closed by the proxy
        } finally {
          try {
            conn.close();
          } catch { /* closed */ }
        }
      })();
    }
  })().catch(() => {});
  return { port: (listener.addr as Deno.NetAddr).port, close: () => listener.close() };
}

/** One tunnel: CONNECT, one byte there and back, close. */
async function tunnel(proxyPort: number, target: string, buf: Uint8Array): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxyPort });
  try {
    await conn.write(enc.encode(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`));
    let head = "";
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      if (n === null) throw new Error("proxy closed the connection");
      head += dec.decode(buf.subarray(0, n));
    }
    if (!head.startsWith("HTTP/1.1 200")) throw new Error(head.split("\r\n")[0]);
    await conn.write(enc.encode("x"));
    if (await conn.read(buf) === null) throw new Error("tunnel closed");
  } finally {
    conn.close();
  }
}

/** Calls per command from `INFO commandstats`. */
function commandCalls(info: string): Map<string, number> {
  const calls = new Map<string, number>();
  for (const m of info.matchAll(/cmdstat_([a-z|]+):calls=(\d+)/g)) calls.set(m[1], Number(m[2]));
  return calls;
}

function redisCpu(info: string): number {
  const sys = Number(/used_cpu_sys:([\d.]+)/.exec(info)?.[1] ?? NaN);
  const user = Number(/used_cpu_user:([\d.]+)/.exec(info)?.[1] ?? NaN);
  return sys + user;
}

/** Script calls (EVALSHA, EVAL, FCALL) Redis ran since its last `CONFIG RESETSTAT`. */
export async function scriptCalls(redis: RedisServer): Promise<number> {
  const calls = commandCalls(await redis.info("commandstats"));
  return (calls.get("evalsha") ?? 0) + (calls.get("eval") ?? 0) + (calls.get("fcall") ?? 0);
}

/** A dprl for the tunnel load, in memory or on `redis`. */
async function startDprl(redis: RedisServer | null, target: string) {
  const port = freePort();
  const proc: Spawned = spawn("dprl", Deno.execPath(), [
    "run",
    "-A",
    new URL("../cli.ts", import.meta.url).pathname,
    "--port",
    String(port),
    "--hostname",
    "127.0.0.1",
    "--max-connections",
    String(LIMIT),
    "--log-level",
    "warn",
    ...(redis ? ["--redis-url", redis.url] : []),
  ]);
  await waitForPort(port, 20_000);
  // Warm up (JIT, script load).
  const buf = new Uint8Array(4096);
  for (let i = 0; i < 200; i++) await tunnel(port, target, buf);
  return { port, proc };
}

/** What one dprl did over the slices of a round. */
interface Tally {
  done: number;
  failed: number;
  seconds: number;
  cpuSeconds: number;
}

/** `CLIENTS` clients open tunnels through the proxy on `port` for `ms`. */
async function load(port: number, target: string, ms: number, tally: Tally): Promise<void> {
  const until = performance.now() + ms;
  const started = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    const b = new Uint8Array(4096);
    while (performance.now() < until) {
      try {
        await tunnel(port, target, b);
        tally.done++;
      } catch {
        tally.failed++;
      }
    }
  }));
  tally.seconds += (performance.now() - started) / 1000;
}

/**
 * Tunnels per second through a dprl in memory and one on Redis, both
 * running, the load alternating between them in half-second slices (the
 * first of each pair alternating too) for `seconds` in all, so that both see
 * the same machine; with the proxies' CPU per tunnel and the Redis one's
 * script calls. `target` must echo (see {@linkcode startEcho}).
 */
export async function tunnelsSideBySide(
  redis: RedisServer,
  target: string,
  seconds: number = SECONDS,
): Promise<{
  memory: number;
  redis: number;
  cpuUs: number[];
  scriptsPerTunnel: number;
  failed: number;
}> {
  const memory = await startDprl(null, target);
  const distributed = await startDprl(redis, target);
  try {
    await redis.command("CONFIG", "RESETSTAT");
    const pairs = [memory, distributed].map((d) => ({
      ...d,
      cpu0: cpuSeconds(d.proc.pid),
      tally: { done: 0, failed: 0, seconds: 0, cpuSeconds: 0 },
    }));
    const slices = seconds * 2;
    for (let i = 0; i < slices; i++) {
      for (const p of i % 2 ? [pairs[1], pairs[0]] : pairs) {
        await load(p.port, target, 500, p.tally);
      }
    }
    for (const p of pairs) {
      const cpu = cpuSeconds(p.proc.pid);
      p.tally.cpuSeconds = cpu.user + cpu.sys - p.cpu0.user - p.cpu0.sys;
    }
    const scripts = await scriptCalls(redis);
    const [m, r] = pairs.map((p) => p.tally);
    return {
      memory: m.done / m.seconds,
      redis: r.done / r.seconds,
      cpuUs: [m, r].map((t) => (1e6 * t.cpuSeconds) / t.done),
      scriptsPerTunnel: scripts / r.done,
      failed: m.failed + r.failed,
    };
  } finally {
    await Promise.all([memory.proc.stop(), distributed.proc.stop()]);
  }
}

/** The CPU of the servers `cpus` reads, in percent of a core, over 5 s of nothing. */
async function idlePercents(cpus: () => Promise<number[]>): Promise<number[]> {
  const c0 = await cpus();
  const started = performance.now();
  await new Promise((r) => setTimeout(r, 5_000));
  const c1 = await cpus();
  const seconds = (performance.now() - started) / 1000;
  return c1.map((c, i) => (100 * (c - c0[i])) / seconds);
}

/** What holding many hosts costs Redis while nothing else happens. */
export interface HeartbeatCost {
  /** Hosts held (one slot each). */
  hosts: number;
  /** Length of the measurement (three heartbeats). */
  seconds: number;
  /** Redis CPU (user + sys, `INFO cpu`) over the time, in percent of a core. */
  redisCpuPercent: number;
  /** The same for the idle Redis over 5 s before the limiter holds any host. */
  idleCpuPercent: number;
  /** The same from /proc. */
  redisProcCpuPercent: number;
  /** The limiter's Redis calls per second (each one round trip). */
  roundTripsPerSecond: number;
  /** EVALSHA and EVAL calls per second. */
  scriptCallsPerSecond: number;
}

/**
 * Takes one slot of each of `hosts` hosts, then waits until halfway between
 * two heartbeats, so that a span of three heartbeats from then holds exactly
 * three.
 */
async function holdUntilBetweenBeats(limiter: RedisLimiter, hosts: number): Promise<void> {
  const names = Array.from({ length: hosts }, (_, i) => `h${i}.example`);
  for (let i = 0; i < names.length; i += 500) {
    await Promise.all(names.slice(i, i + 500).map((h) => limiter.acquire(h, 0)));
  }
  let beat = Promise.withResolvers<void>();
  limiter.onCall = () => beat.resolve();
  await new Promise((r) => setTimeout(r, 1_000));
  beat = Promise.withResolvers<void>();
  await beat.promise;
  await new Promise((r) => setTimeout(r, LEASE_MS / 6));
}

/**
 * The same on a 3-master Redis Cluster: each master's CPU, in percent of a
 * core, and the limiter's round trips and the script calls per second.
 */
export async function clusterHeartbeatCost(hosts = HOSTS): Promise<{
  hosts: number;
  seconds: number;
  redisCpuPercentPerNode: string;
  idleCpuPercentPerNode: string;
  roundTripsPerSecond: number;
  scriptCallsPerSecond: number;
}> {
  await using cluster = await RedisClusterServers.start();
  const cpus = () =>
    Promise.all(cluster.servers.map(async (s) => redisCpu(await s.cli("INFO", "cpu"))));
  const percents = (c0: number[], c1: number[], seconds: number) =>
    c1.map((c, i) => ((100 * (c - c0[i])) / seconds).toFixed(3)).join(" ");
  const idleCpuPercentPerNode = (await idlePercents(cpus)).map((p) => p.toFixed(3)).join(" ");
  const limiter = new RedisLimiter({
    redis: { cluster: cluster.nodes },
    lease: LEASE_MS,
    prefix: "bench",
    timeout: 5_000,
  });
  try {
    await holdUntilBetweenBeats(limiter, hosts);
    for (const s of cluster.servers) await s.cli("CONFIG", "RESETSTAT");
    let trips = 0;
    limiter.onCall = () => trips++;
    const cpu0 = await cpus();
    const started = performance.now();
    await new Promise((r) => setTimeout(r, LEASE_MS)); // three heartbeats
    const seconds = (performance.now() - started) / 1000;
    const cpu1 = await cpus();
    let scripts = 0;
    for (const s of cluster.servers) {
      const calls = commandCalls(await s.cli("INFO", "commandstats"));
      scripts += (calls.get("evalsha") ?? 0) + (calls.get("eval") ?? 0);
    }
    return {
      hosts,
      seconds: +seconds.toFixed(1),
      redisCpuPercentPerNode: percents(cpu0, cpu1, seconds),
      idleCpuPercentPerNode,
      roundTripsPerSecond: +(trips / seconds).toFixed(1),
      scriptCallsPerSecond: +(scripts / seconds).toFixed(1),
    };
  } finally {
    await limiter.close();
  }
}

/**
 * Redis's CPU and the round trips per second while one limiter (15 s lease,
 * a heartbeat every 5 s) holds a slot of each of `hosts` hosts; empties Redis
 * first.
 */
export async function heartbeatCost(redis: RedisServer, hosts = HOSTS): Promise<HeartbeatCost> {
  await redis.flushAll();
  const [idleCpuPercent] = await idlePercents(async () => [redisCpu(await redis.info("cpu"))]);
  const limiter = new RedisLimiter({ redis: redis.url, lease: LEASE_MS, prefix: "bench" });
  try {
    await holdUntilBetweenBeats(limiter, hosts);
    await redis.command("CONFIG", "RESETSTAT");
    let trips = 0;
    limiter.onCall = () => trips++;
    const cpu0 = redisCpu(await redis.info("cpu"));
    const proc0 = cpuSeconds(redis.proc.pid);
    const span = 3 * LEASE_MS / 3; // three heartbeats
    const started = performance.now();
    await new Promise((r) => setTimeout(r, span));
    const seconds = (performance.now() - started) / 1000;
    const cpu1 = redisCpu(await redis.info("cpu"));
    const calls = commandCalls(await redis.info("commandstats"));
    const proc1 = cpuSeconds(redis.proc.pid);
    return {
      hosts,
      seconds: +seconds.toFixed(1),
      redisCpuPercent: +((100 * (cpu1 - cpu0)) / seconds).toFixed(3),
      idleCpuPercent: +idleCpuPercent.toFixed(3),
      redisProcCpuPercent: +((100 * (proc1.user + proc1.sys - proc0.user - proc0.sys)) / seconds)
        .toFixed(2),
      roundTripsPerSecond: +(trips / seconds).toFixed(1),
      scriptCallsPerSecond: +(((calls.get("evalsha") ?? 0) + (calls.get("eval") ?? 0)) / seconds)
        .toFixed(1),
    };
  } finally {
    await limiter.close();
  }
}

if (import.meta.main) {
  const dir = await Deno.makeTempDir({ prefix: "dprl-bench-redis-cost-" });
  const redis = await RedisServer.start(dir);
  const echo = startEcho();
  const target = `127.0.0.1:${echo.port}`;
  try {
    console.log(`load average before: ${loadAverage()}`);
    const rows = [];
    for (let round = 1; round <= ROUNDS; round++) {
      const t = await tunnelsSideBySide(redis, target);
      rows.push({
        round,
        memoryPerSecond: Math.round(t.memory),
        redisPerSecond: Math.round(t.redis),
        ratio: +(t.redis / t.memory).toFixed(2),
        proxyCpuUsPerTunnel: t.cpuUs.map(Math.round).join(" / "),
        scriptCallsPerTunnel: +t.scriptsPerTunnel.toFixed(3),
        failed: t.failed,
      });
    }
    console.table(rows);
    console.log(
      `${CLIENTS} clients, tunnels to one host; goals: ratio >= 0.9, script calls per tunnel <= 1.0`,
    );
    console.table([await heartbeatCost(redis)]);
    if (Deno.args.includes("--cluster")) console.table([await clusterHeartbeatCost()]);
    console.log("goals: Redis CPU <= 1% of a core, <= 50 round trips/s");
    console.log(`load average after: ${loadAverage()}`);
  } finally {
    echo.close();
    await redis.stop();
    await stopAll();
    await Deno.remove(dir, { recursive: true });
  }
}
