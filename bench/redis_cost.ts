/**
 * What distributed mode costs Redis, on loopback:
 *
 * - script calls per tunnel: 32 clients open CONNECT tunnels through one
 *   dprl, one after another each, for a few seconds, to one host or
 *   round-robin over `--hosts N` hosts (127.0.x.y, every one an address of
 *   the same echo upstream); EVALSHA, EVAL and FCALL calls from
 *   `INFO commandstats` over the tunnels opened (goal <= 1.0 to one host,
 *   <= 1.2 over 2,000 hosts);
 * - tunnels/s with Redis over tunnels/s in memory, the same load on two
 *   proxies running side by side, alternating in half-second slices (goal
 *   >= 0.9 in every round), each proxy's CPU per tunnel and Redis's;
 * - the idle cost of holding 10,000 hosts: one limiter holds one slot of
 *   each and only its heartbeat talks to Redis; Redis's CPU (`INFO cpu`) and
 *   the limiter's calls per second (each one round trip) over three
 *   heartbeats, from halfway between two (goals: <= 1% of a core, <= 50
 *   round trips/s).
 *
 * ```sh
 * deno run -A bench/redis_cost.ts              # 3 rounds of 5 s, 10,000 hosts
 * deno run -A bench/redis_cost.ts --quick      # 1 round of 3 s
 * deno run -A bench/redis_cost.ts --hosts 2000 # tunnels round-robin over 2,000 hosts
 * deno run -A bench/redis_cost.ts --cluster    # also on a 3-master Cluster
 * deno run -A bench/redis_cost.ts --rtt 2      # Redis 2 ms away (a delaying relay)
 * deno run -A bench/redis_cost.ts --limit 32   # the host's limit equal to the clients
 * deno run -A bench/redis_cost.ts --no-heartbeat # the tunnel rounds only
 * deno run -A bench/redis_cost.ts --cpu-prof /tmp/p # both proxies write a CPU profile there
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { delayRelay } from "./delay_relay.ts";
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
import { startTaskV8Flags } from "./proxies.ts";

const CLIENTS = 32;
/** Hosts of the echo upstream at most: 127.0.0.1 to 127.0.235.254. */
const MAX_HOSTS = 236 * 254;
const HOSTS = 10_000;
const LEASE_MS = 15_000;
const enc = new TextEncoder();
const dec = new TextDecoder();

/** The flags of the command line; a bad one ends the process (exit code 2). */
function cliFlags() {
  const bad = (msg: string): never => {
    console.error(`redis_cost: ${msg}`);
    Deno.exit(2);
  };
  const count = (name: string, text: string, max: number): number => {
    const n = Number(text);
    return Number.isInteger(n) && n >= 1 && n <= max
      ? n
      : bad(`--${name} must be an integer from 1 to ${max}, got "${text}"`);
  };
  try {
    const { values } = parseArgs({
      args: Deno.args,
      strict: true,
      options: {
        quick: { type: "boolean", default: false },
        cluster: { type: "boolean", default: false },
        "no-heartbeat": { type: "boolean", default: false },
        limit: { type: "string", default: "100000" },
        hosts: { type: "string", default: "1" },
        rtt: { type: "string", default: "0" },
        "cpu-prof": { type: "string" },
      },
    });
    return {
      rounds: values.quick ? 1 : 3,
      seconds: values.quick ? 3 : 5,
      cluster: values.cluster,
      heartbeat: !values["no-heartbeat"],
      /** The host's limit; by default far above the clients. */
      limit: count("limit", values.limit, 1_000_000),
      hosts: count("hosts", values.hosts, MAX_HOSTS),
      /** Round trip added between dprl and the single Redis, in ms. */
      rtt: values.rtt === "0" ? 0 : count("rtt", values.rtt!, 100),
      /** A folder where both proxies write a CPU profile (see bench/profile.ts summarize). */
      cpuProf: values["cpu-prof"],
    };
  } catch (e) {
    return bad(e instanceof Error ? e.message.split("\n")[0] : String(e));
  }
}

/** The `i`-th address of the echo upstream: 127.0.0.1, ..., 127.0.0.254, 127.0.1.1, ... */
function hostAddress(i: number): string {
  return `127.0.${Math.floor(i / 254)}.${1 + (i % 254)}`;
}

/** Answers every byte from each connection `listener` accepts with the same byte. */
async function echoEach(listener: Deno.Listener): Promise<void> {
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
}

/** Listens on `port` (0: any) of the first `hosts` addresses, or throws and closes them all. */
function listenAll(hosts: number, port: number): Deno.Listener[] {
  const listeners: Deno.Listener[] = [];
  try {
    for (let i = 0; i < hosts; i++) {
      listeners.push(Deno.listen({ hostname: hostAddress(i), port }));
      port = (listeners[0].addr as Deno.NetAddr).port;
    }
  } catch (e) {
    for (const l of listeners) l.close();
    throw e;
  }
  return listeners;
}

/**
 * A TCP upstream that answers every byte with the same byte, on one port of
 * `hosts` loopback addresses (127.0.0.1 first; all of 127.0.0.0/8 is
 * loopback on Linux); `targets` are their `host:port`.
 */
export function startEcho(hosts = 1): { port: number; targets: string[]; close(): void } {
  let listeners: Deno.Listener[] | undefined;
  for (let attempt = 1; !listeners; attempt++) {
    try {
      listeners = listenAll(hosts, 0);
    } catch (e) {
      // The port taken on 127.0.0.1 may be in use on another address.
      if (!(e instanceof Deno.errors.AddrInUse) || attempt === 5) throw e;
    }
  }
  for (const l of listeners) echoEach(l).catch(() => {});
  const port = (listeners[0].addr as Deno.NetAddr).port;
  return {
    port,
    targets: Array.from({ length: hosts }, (_, i) => `${hostAddress(i)}:${port}`),
    close: () => listeners.forEach((l) => l.close()),
  };
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

/** Script calls (EVALSHA, EVAL, FCALL) in one node's `INFO commandstats`. */
function scriptCount(info: string): number {
  const calls = commandCalls(info);
  return (calls.get("evalsha") ?? 0) + (calls.get("eval") ?? 0) + (calls.get("fcall") ?? 0);
}

/** Script calls (EVALSHA, EVAL, FCALL) Redis ran since its last `CONFIG RESETSTAT`. */
export async function scriptCalls(redis: RedisServer): Promise<number> {
  return scriptCount(await redis.info("commandstats"));
}

/** The Redis a dprl of the side-by-side runs on: its flags and its nodes' counters. */
interface RedisNodes {
  /** dprl's flags for it. */
  flags: string[];
  /** `INFO <section>` of every node. */
  infos(section: string): Promise<string[]>;
  /** `CONFIG RESETSTAT` on every node. */
  resetStats(): Promise<void>;
}

function redisNodes(redis: RedisServer | RedisClusterServers, relayPort?: number): RedisNodes {
  if (redis instanceof RedisServer) {
    return {
      flags: ["--redis-url", relayPort ? `redis://127.0.0.1:${relayPort}` : redis.url],
      infos: async (section) => [await redis.info(section)],
      resetStats: async () => void await redis.command("CONFIG", "RESETSTAT"),
    };
  }
  return {
    flags: ["--redis-cluster", redis.nodes.map((n) => `${n.host}:${n.port}`).join(",")],
    infos: (section) => Promise.all(redis.servers.map((s) => s.cli("INFO", section))),
    resetStats: async () =>
      void await Promise.all(redis.servers.map((s) => s.cli("CONFIG", "RESETSTAT"))),
  };
}

/** Where the load of one side-by-side goes. */
interface LoadTarget {
  /** The host's limit each dprl is given. */
  limit: number;
  /** How many targets {@linkcode next} goes round. */
  targets: number;
  /** The next `host:port` to open a tunnel to (round-robin over the targets). */
  next(): string;
}

/** A dprl for the tunnel load, in memory or with `redisFlags`. */
async function startDprl(redisFlags: string[], to: LoadTarget, cpuProf?: string) {
  const port = freePort();
  const name = redisFlags.length ? "redis" : "memory";
  const profile = cpuProf
    ? ["--cpu-prof", `--cpu-prof-dir=${cpuProf}`, `--cpu-prof-name=${name}.cpuprofile`]
    : [];
  const proc: Spawned = spawn("dprl", Deno.execPath(), [
    "run",
    "-A",
    ...profile,
    ...startTaskV8Flags(),
    new URL("../cli.ts", import.meta.url).pathname,
    "--port",
    String(port),
    "--hostname",
    "127.0.0.1",
    "--max-connections",
    String(to.limit),
    "--log-level",
    "warn",
    ...redisFlags,
  ]);
  await waitForPort(port, 20_000);
  // Warm up (JIT, script load), coming to every target twice (up to 2,000):
  // what a worker learns about the hosts it comes back to is in place before
  // the rounds.
  let left = Math.min(Math.max(200, 2 * to.targets), 4_000);
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    const buf = new Uint8Array(4096);
    while (left-- > 0) await tunnel(port, to.next(), buf);
  }));
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
async function load(port: number, to: LoadTarget, ms: number, tally: Tally): Promise<void> {
  const until = performance.now() + ms;
  const started = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    const b = new Uint8Array(4096);
    while (performance.now() < until) {
      try {
        await tunnel(port, to.next(), b);
        tally.done++;
      } catch {
        tally.failed++;
      }
    }
  }));
  tally.seconds += (performance.now() - started) / 1000;
}

/** Options of {@linkcode tunnelsSideBySide}. */
export interface SideBySideOptions {
  /** The Redis (one server or a Cluster) of the distributed dprl. */
  redis: RedisServer | RedisClusterServers;
  /** `host:port` of echo upstreams (see {@linkcode startEcho}), used round-robin. */
  targets: readonly string[];
  /** Seconds of load for each dprl, in half-second slices. */
  seconds: number;
  /** The host's limit (default 100,000, far above the clients). */
  limit?: number;
  /** A round trip added between the distributed dprl and a single Redis, in ms (default 0). */
  rttMs?: number;
  /** A folder where both proxies write a CPU profile (`memory.cpuprofile`, `redis.cpuprofile`). */
  cpuProf?: string;
}

/** What {@linkcode tunnelsSideBySide} measured. */
export interface SideBySide {
  /** Tunnels per second in memory. */
  memory: number;
  /** Tunnels per second on Redis. */
  redis: number;
  /** Each dprl's CPU per tunnel (user + sys), µs: memory, then Redis. */
  cpuUs: number[];
  /** Redis's CPU per tunnel of the distributed dprl (`INFO cpu`, every node), µs. */
  redisCpuUs: number;
  /** Script calls (every node) per tunnel of the distributed dprl. */
  scriptsPerTunnel: number;
  /** Tunnels that failed, both dprls. */
  failed: number;
}

/**
 * Tunnels per second through a dprl in memory and one on Redis, both
 * running, the load alternating between them in half-second slices (the
 * first of each pair alternating too) for `seconds` each, so that both see
 * the same machine; with the proxies' CPU per tunnel and the Redis one's
 * script calls and Redis CPU. The 32 clients take the targets round-robin.
 */
export async function tunnelsSideBySide(options: SideBySideOptions): Promise<SideBySide> {
  const { targets, seconds } = options;
  let i = 0;
  const to: LoadTarget = {
    limit: options.limit ?? 100_000,
    targets: targets.length,
    next: () => targets[i++ % targets.length],
  };
  const relay = options.rttMs && options.redis instanceof RedisServer
    ? delayRelay(options.redis.port, options.rttMs)
    : undefined;
  const nodes = redisNodes(options.redis, relay?.port);
  const redisCpuSeconds = async () =>
    (await nodes.infos("cpu")).reduce((sum, info) => sum + redisCpu(info), 0);
  const memory = await startDprl([], to, options.cpuProf);
  const distributed = await startDprl(nodes.flags, to, options.cpuProf);
  try {
    await nodes.resetStats();
    const redisCpu0 = await redisCpuSeconds();
    const pairs = [memory, distributed].map((d) => ({
      ...d,
      cpu0: cpuSeconds(d.proc.pid),
      tally: { done: 0, failed: 0, seconds: 0, cpuSeconds: 0 },
    }));
    for (let slice = 0; slice < seconds * 2; slice++) {
      for (const p of slice % 2 ? [pairs[1], pairs[0]] : pairs) {
        await load(p.port, to, 500, p.tally);
      }
    }
    for (const p of pairs) {
      const cpu = cpuSeconds(p.proc.pid);
      p.tally.cpuSeconds = cpu.user + cpu.sys - p.cpu0.user - p.cpu0.sys;
    }
    const redisCpuUsed = (await redisCpuSeconds()) - redisCpu0;
    const scripts = (await nodes.infos("commandstats")).reduce((n, s) => n + scriptCount(s), 0);
    const [m, r] = pairs.map((p) => p.tally);
    return {
      memory: m.done / m.seconds,
      redis: r.done / r.seconds,
      cpuUs: [m, r].map((t) => (1e6 * t.cpuSeconds) / t.done),
      redisCpuUs: (1e6 * redisCpuUsed) / r.done,
      scriptsPerTunnel: scripts / r.done,
      failed: m.failed + r.failed,
    };
  } finally {
    await Promise.all([memory.proc.stop(), distributed.proc.stop()]);
    relay?.close();
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
 * core, and the limiter's round trips and the script calls per second;
 * empties the Cluster first.
 */
export async function clusterHeartbeatCost(
  cluster: RedisClusterServers,
  hosts = HOSTS,
): Promise<{
  hosts: number;
  seconds: number;
  redisCpuPercentPerNode: string;
  idleCpuPercentPerNode: string;
  roundTripsPerSecond: number;
  scriptCallsPerSecond: number;
}> {
  for (const s of cluster.servers) await s.cli("FLUSHALL");
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
    for (const s of cluster.servers) scripts += scriptCount(await s.cli("INFO", "commandstats"));
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
    const scripts = scriptCount(await redis.info("commandstats"));
    const proc1 = cpuSeconds(redis.proc.pid);
    return {
      hosts,
      seconds: +seconds.toFixed(1),
      redisCpuPercent: +((100 * (cpu1 - cpu0)) / seconds).toFixed(3),
      idleCpuPercent: +idleCpuPercent.toFixed(3),
      redisProcCpuPercent: +((100 * (proc1.user + proc1.sys - proc0.user - proc0.sys)) / seconds)
        .toFixed(2),
      roundTripsPerSecond: +(trips / seconds).toFixed(1),
      scriptCallsPerSecond: +(scripts / seconds).toFixed(1),
    };
  } finally {
    await limiter.close();
  }
}

/** `t` as a row of the console table. */
function sideBySideRow(round: number, on: string, hosts: number, t: SideBySide) {
  return {
    round,
    on,
    hosts,
    memoryPerSecond: Math.round(t.memory),
    redisPerSecond: Math.round(t.redis),
    ratio: +(t.redis / t.memory).toFixed(2),
    proxyCpuUsPerTunnel: t.cpuUs.map(Math.round).join(" / "),
    redisCpuUsPerTunnel: Math.round(t.redisCpuUs),
    scriptCallsPerTunnel: +t.scriptsPerTunnel.toFixed(3),
    failed: t.failed,
  };
}

if (import.meta.main) {
  const flags = cliFlags();
  const dir = await Deno.makeTempDir({ prefix: "dprl-bench-redis-cost-" });
  const redis = await RedisServer.start(dir);
  const echo = startEcho(flags.hosts);
  let cluster: RedisClusterServers | undefined;
  try {
    cluster = flags.cluster ? await RedisClusterServers.start() : undefined;
    console.log(`load average before: ${loadAverage()}`);
    const rows = [];
    for (let round = 1; round <= flags.rounds; round++) {
      for (const [on, server] of [["Redis", redis], ["Cluster", cluster]] as const) {
        if (!server) continue;
        const t = await tunnelsSideBySide({
          redis: server,
          targets: echo.targets,
          seconds: flags.seconds,
          limit: flags.limit,
          rttMs: flags.rtt,
          cpuProf: flags.cpuProf,
        });
        rows.push(sideBySideRow(round, on, flags.hosts, t));
      }
    }
    console.table(rows);
    console.log(
      `${CLIENTS} clients, tunnels round-robin over ${flags.hosts} host(s); goals: ratio >= 0.9, ` +
        "script calls per tunnel <= 1.0 to one host, <= 1.2 over 2,000 hosts",
    );
    if (flags.heartbeat) {
      console.table([await heartbeatCost(redis)]);
      if (cluster) console.table([await clusterHeartbeatCost(cluster)]);
      console.log("goals: Redis CPU <= 1% of a core, <= 50 round trips/s");
    }
    console.log(`load average after: ${loadAverage()}`);
  } finally {
    echo.close();
    await cluster?.stop();
    await redis.stop();
    await stopAll();
    await Deno.remove(dir, { recursive: true });
  }
}
