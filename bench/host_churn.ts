/**
 * What ever new hosts cost the proxy: its RSS idle, right after CONNECTs to
 * N distinct hosts (loopback addresses `127.a.b.c` on a closed port, so each
 * is admitted by the limiter, refused by the kernel and gives its slot back),
 * and after the traffic ends; in memory and with Redis. In Redis mode it also
 * counts the Redis calls the proxy makes when it stops.
 *
 * ```sh
 * deno run -A bench/host_churn.ts              # 30,000 hosts, both modes
 * deno run -A bench/host_churn.ts --hosts=60000 --modes=memory
 * deno run -A bench/host_churn.ts --repo ../other-checkout
 * deno run -A bench/host_churn.ts --flags="--metrics-max-hosts 100"
 * deno run -A bench/host_churn.ts --rounds=3   # new hosts each round
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { freePort, rssKiB, sleep, spawn, type Spawned, stopAll, waitForPort } from "./process.ts";
import { RedisServer } from "./redis_server.ts";
import { startTaskV8Flags } from "./proxies.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    hosts: { type: "string" },
    modes: { type: "string" },
    settle: { type: "string" },
    repo: { type: "string" },
    flags: { type: "string" },
    rounds: { type: "string" },
  },
});
const HOSTS = Math.min(Number(args.hosts ?? 30_000), 200_000);
const MODES = (args.modes ?? "memory,redis").split(",");
/** How long the proxy idles after the traffic before the last figure, in s. */
const SETTLE_S = Number(args.settle ?? 20);
/** Rounds of traffic and settling, each with hosts never asked for before. */
const ROUNDS = Math.max(1, Math.min(Number(args.rounds ?? 1), 10));
const CONCURRENCY = 32;
/** The checkout whose proxy is measured. */
const REPO = args.repo ?? new URL("..", import.meta.url).pathname;
const enc = new TextEncoder();

/** One CONNECT through the proxy; resolves with the status code. */
async function connectOnce(proxyPort: number, authority: string): Promise<number> {
  let c: Deno.Conn;
  try {
    c = await Deno.connect({ hostname: "127.0.0.1", port: proxyPort });
  } catch {
    return 0;
  }
  const timer = setTimeout(() => c.close(), 10_000);
  try {
    await c.write(enc.encode(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`));
    const buf = new Uint8Array(1024);
    const n = await c.read(buf);
    return Number(new TextDecoder().decode(buf.subarray(0, n ?? 0)).split(" ")[1]);
  } catch {
    return 0;
  } finally {
    clearTimeout(timer);
    try {
      c.close();
    } catch {
      // closed by the timer
    }
  }
}

/** The i-th distinct loopback host, never 127.0.0.x. */
function hostOf(i: number, port: number): string {
  const n = i + 256;
  return `127.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}:${port}`;
}

/** CONNECTs to `count` hosts, `CONCURRENCY` at a time; returns the statuses seen. */
async function churn(proxyPort: number, count: number, host: (i: number) => string) {
  const statuses = new Map<number, number>();
  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < count) {
      const status = await connectOnce(proxyPort, host(next++));
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
    }
  }));
  return statuses;
}

interface Figures {
  mode: string;
  idleMiB: number;
  afterTrafficMiB: number;
  /** After each round's settle time. */
  settledMiB: number[];
  trafficS: number;
  statuses: string;
  stopCalls?: string;
}

const mib = (kib: number): number => Math.round(kib / 102.4) / 10;

async function measure(mode: string, redis: RedisServer | null): Promise<Figures> {
  const port = freePort();
  const closed = freePort();
  const proxy: Spawned = spawn("dprl", Deno.execPath(), [
    "run",
    "--allow-net",
    "--allow-env",
    "--allow-sys",
    ...startTaskV8Flags(),
    `${REPO}/cli.ts`,
    "--hostname",
    "127.0.0.1",
    "--port",
    String(port),
    "--max-connections",
    "4",
    "--log-level",
    "error",
    ...(redis ? ["--redis-url", redis.url, "--lease", "3s"] : []),
    ...(args.flags ?? "").split(/\s+/).filter(Boolean),
  ], { cwd: REPO });
  await waitForPort(port, 60_000, proxy);
  // Warm up on one host, then let the process settle.
  await churn(port, 500, () => `127.0.0.1:${closed}`);
  await sleep(3_000);
  const idle = rssKiB(proxy.pid);
  const started = performance.now();
  let statuses = new Map<number, number>();
  let afterTraffic = 0;
  const settled: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    statuses = await churn(port, HOSTS, (i) => hostOf(round * HOSTS + i, closed));
    afterTraffic = Math.max(afterTraffic, rssKiB(proxy.pid));
    // A trickle on one host, as a live proxy sees, while the rest is forgotten.
    const end = Date.now() + SETTLE_S * 1000;
    while (Date.now() < end) {
      await connectOnce(port, `127.0.0.1:${closed}`);
      await sleep(200);
    }
    settled.push(rssKiB(proxy.pid));
  }
  const trafficS = (performance.now() - started) / 1000 - ROUNDS * SETTLE_S;
  let stopCalls: string | undefined;
  if (redis) await redis.command("CONFIG", "RESETSTAT");
  await proxy.stop(15_000);
  if (redis) {
    const stats = await redis.info("commandstats");
    const calls = (cmd: string): number =>
      Number(new RegExp(`cmdstat_${cmd}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
    stopCalls = `${calls("evalsha") + calls("eval")} scripts, ${calls("hdel")} HDEL`;
    await redis.flushAll();
  }
  return {
    mode,
    idleMiB: mib(idle),
    afterTrafficMiB: mib(afterTraffic),
    settledMiB: settled.map(mib),
    trafficS: Math.round(trafficS * 10) / 10,
    statuses: [...statuses].map(([s, n]) => `${s}×${n}`).join(" "),
    stopCalls,
  };
}

const dir = await Deno.makeTempDir({ prefix: "dprl-churn-" });
try {
  const rows: Figures[] = [];
  for (const mode of MODES) {
    const redis = mode === "redis" ? await RedisServer.start(dir) : null;
    try {
      rows.push(await measure(mode, redis));
    } finally {
      await redis?.proc.stop();
    }
  }
  console.log(`${HOSTS} distinct hosts a round, ${ROUNDS} rounds, ${SETTLE_S} s settle`);
  console.log("| mode | RSS idle | after traffic | settled | traffic | statuses | on stop |");
  console.log("| ---- | -------: | ------------: | ------: | ------: | -------- | ------- |");
  for (const r of rows) {
    console.log(
      `| ${r.mode} | ${r.idleMiB} MiB | ${r.afterTrafficMiB} MiB | ${
        r.settledMiB.join(", ")
      } MiB | ${r.trafficS} s | ${r.statuses} | ${r.stopCalls ?? "-"} |`,
    );
  }
} finally {
  await stopAll();
  await Deno.remove(dir, { recursive: true }).catch(() => {});
}
