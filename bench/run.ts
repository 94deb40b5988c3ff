/**
 * dprl's benchmark suite: `deno task bench`.
 *
 * Measures dprl and three peer proxies (goproxy-dprl, tinyproxy, proxy-chain)
 * one at a time, on loopback, under the same load, and writes
 * `bench/RESULTS.md` (and `bench/results/latest.json`).
 *
 * Flags:
 * - `--quick`: short runs (3 s, 256 MiB, 1,000 idle tunnels) to try the runner
 * - `--only=dprl,goproxy-dprl`: measure only these proxies in the per-proxy part
 * - `--skip=distributed,cap`: skip whole sections (`proxies`, `distributed`, `cap`)
 * - `--no-write`: print the tables, write no files
 *
 * Environment: `DPRL_BENCH_SHARED`, `DPRL_BENCH_CACHE` (see setup.ts),
 * `DPRL_BENCH_HOLD` (idle tunnels, default 4000, at most 9000),
 * `DPRL_BENCH_DENO_FLAGS` (extra `deno run` flags for dprl, e.g. `--cpu-prof`).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { machineFacts, versionFacts } from "./machine.ts";
import { burst, idleMemory, throughput, type Tools, tunnels, upstreamGet, wrk } from "./measure.ts";
import { freePort, sleep, spawn, type Spawned, stopAll, waitForPort } from "./process.ts";
import { proxyChainDir, type ProxyDef, proxyDefs } from "./proxies.ts";
import { RedisServer } from "./redis_server.ts";
import {
  capTable,
  DISTRIBUTED_LABELS as L,
  distributedTable,
  markdown,
  ratioTable,
  rawTable,
  type Results,
} from "./report.ts";
import { buildBinaries, ensureDebianTools, paths } from "./setup.ts";

const SUITE_LIMIT_MS = 10 * 60_000;

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    only: { type: "string" },
    skip: { type: "string", default: "" },
    "no-write": { type: "boolean", default: false },
  },
});
const skip = new Set(flags.skip!.split(",").filter(Boolean));
const D = flags.quick ? 3 : 10;
const WARM = 2;
const HOLD = Math.min(
  9000,
  Number(Deno.env.get("DPRL_BENCH_HOLD") ?? (flags.quick ? 1000 : 4000)),
);
const MIB = flags.quick ? 256 : 1024;
const THROUGHPUT_RUNS = flags.quick ? 1 : 3;

const log = (msg: string): void => console.log(`[bench ${clock()}] ${msg}`);
const t0 = Date.now();
const clock = (): string => `${((Date.now() - t0) / 1000).toFixed(0).padStart(3)}s`;

let stopping = false;
async function shutdown(code: number, why: string): Promise<never> {
  if (!stopping) {
    stopping = true;
    console.error(`[bench] ${why}: stopping every process the benchmark started`);
    await stopAll();
  }
  Deno.exit(code);
}
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  Deno.addSignalListener(sig, () => void shutdown(130, `got ${sig}`));
}

const P = paths();
const results: Results = {
  date: new Date().toISOString(),
  seconds: 0,
  machine: machineFacts(),
  versions: [],
  settings: {
    durationS: D,
    holdTunnels: HOLD,
    throughputMiB: MIB,
    throughputRuns: THROUGHPUT_RUNS,
  },
  proxies: {},
  distributed: {},
  cap: {},
  errors: [],
};

/** Runs one measurement; an error is recorded and the suite goes on. */
async function attempt<T>(label: string, fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch (e) {
    const msg = `${label}: ${e instanceof Error ? e.message : String(e)}`;
    log(`ERROR ${msg}`);
    results.errors.push(msg.slice(0, 600));
    return undefined;
  }
}

async function startUpstream(tools: Tools): Promise<{ port: number; proc: Spawned }> {
  const port = freePort();
  const proc = spawn("loadgen upstream", tools.loadgen, ["upstream", `127.0.0.1:${port}`]);
  await waitForPort(port, 10_000, proc);
  return { port, proc };
}

async function startProxy(
  def: ProxyDef,
  max: number,
  redis?: string,
): Promise<{ port: number; proc: Spawned }> {
  const port = freePort();
  const proc = def.start(port, { max, redis });
  try {
    await waitForPort(port, def.startTimeoutMs, proc);
  } catch (e) {
    await proc.stop();
    throw e;
  }
  return { port, proc };
}

function alive(proc: Spawned): void {
  if (proc.exited) {
    throw new Error(`${proc.name} died: ${proc.stderr.trim().slice(-400)}`);
  }
}

async function measureProxy(def: ProxyDef, tools: Tools): Promise<void> {
  const fig = (results.proxies[def.name] ??= {});
  const up = await startUpstream(tools);
  try {
    await attempt(`${def.name} speed`, async () => {
      const { port, proc } = await startProxy(def, 0);
      try {
        log(`${def.name}: plain HTTP (wrk ${D}s)`);
        fig.http = await attempt(`${def.name} plain HTTP`, async () => {
          await wrk(tools, port, up.port, WARM);
          const r = await wrk(tools, port, up.port, D);
          alive(proc);
          return r;
        });
        log(`${def.name}: CONNECT tunnels (${D}s)`);
        fig.tunnels = await attempt(`${def.name} tunnels`, async () => {
          await tunnels(tools, port, up.port, WARM);
          const r = await tunnels(tools, port, up.port, D);
          alive(proc);
          return r;
        });
        log(`${def.name}: one tunnel, ${MIB} MiB x${THROUGHPUT_RUNS}`);
        fig.throughput = await attempt(`${def.name} one tunnel`, async () => {
          const r = await throughput(tools, port, up.port, MIB, THROUGHPUT_RUNS);
          alive(proc);
          return r;
        });
      } finally {
        await proc.stop();
      }
    });
    await attempt(`${def.name} idle tunnels`, async () => {
      log(`${def.name}: memory with ${HOLD} idle tunnels (fresh process)`);
      const { port, proc } = await startProxy(def, 0);
      try {
        fig.memory = await idleMemory(tools, proc, port, up.port, HOLD);
        alive(proc);
      } finally {
        await proc.stop();
      }
    });
  } finally {
    await up.proc.stop();
  }
  log(`${def.name}: done`);
}

async function distributedTunnels(
  label: string,
  def: ProxyDef,
  tools: Tools,
  upstreamPort: number,
  max: number,
  redis: RedisServer | undefined,
  then?: { label: string; before: () => Promise<void> },
): Promise<void> {
  await attempt(label, async () => {
    const { port, proc } = await startProxy(def, max, redis?.addr);
    try {
      log(`${label} (${D}s)`);
      await tunnels(tools, port, upstreamPort, WARM);
      results.distributed[label] = await tunnels(tools, port, upstreamPort, D);
      alive(proc);
      if (then) {
        await then.before();
        log(`${then.label} (${D}s)`);
        await tunnels(tools, port, upstreamPort, WARM);
        results.distributed[then.label] = await tunnels(tools, port, upstreamPort, D);
        alive(proc);
      }
    } finally {
      await proc.stop();
    }
  });
}

async function measureDistributed(defs: ProxyDef[], tools: Tools): Promise<void> {
  const dprl = defs.find((d) => d.name === "dprl")!;
  const go = defs.find((d) => d.name === "goproxy-dprl")!;
  const redis = await RedisServer.start(P.cache);
  const up = await startUpstream(tools);
  const fill = async (): Promise<void> => {
    log("writing 100,000 unrelated keys to Redis");
    await redis.fill(100_000);
    const n = await redis.dbsize();
    if (n < 100_000) throw new Error(`Redis holds ${n} keys after the fill`);
  };
  try {
    await distributedTunnels(L.dprlMem, dprl, tools, up.port, 100_000, undefined);
    await redis.flushAll();
    await distributedTunnels(L.dprlRedis, dprl, tools, up.port, 100_000, redis, {
      label: L.dprlRedisFull,
      before: fill,
    });
    await redis.flushAll();
    await distributedTunnels(L.goRedis, go, tools, up.port, 0, redis, {
      label: L.goRedisFull,
      before: fill,
    });
    await redis.flushAll();
  } finally {
    await up.proc.stop();
    await redis.stop();
  }
}

async function measureCap(def: ProxyDef, tools: Tools): Promise<void> {
  const LIMIT = 4, N = 3, CLIENTS = 20;
  await attempt(`${def.name} cap accuracy`, async () => {
    log(`${def.name}: cap accuracy, ${N} proxies sharing Redis, limit ${LIMIT}`);
    const redis = await RedisServer.start(P.cache);
    const up = await startUpstream(tools);
    const started: { port: number; proc: Spawned }[] = [];
    try {
      for (let i = 0; i < N; i++) started.push(await startProxy(def, LIMIT, redis.addr));
      await upstreamGet(up.port, "/peak"); // resets the peak
      const all = await Promise.all(
        started.map((s) => burst(tools, s.port, up.port, CLIENTS)),
      );
      const peak = Number((await upstreamGet(up.port, "/peak")).trim());
      const counts: Record<string, number> = {};
      for (const c of all) {
        for (const [k, v] of Object.entries(c)) counts[k] = (counts[k] ?? 0) + v;
      }
      for (const s of started) alive(s.proc);
      results.cap[def.name] = { proxies: N, limit: LIMIT, clients: N * CLIENTS, counts, peak };
    } finally {
      await Promise.all(started.map((s) => s.proc.stop()));
      await up.proc.stop();
      await redis.stop();
    }
  });
}

async function main(): Promise<void> {
  log(`shared: ${P.shared}; cache: ${P.cache}`);
  await ensureDebianTools();
  const bins = await buildBinaries(P);
  const tools: Tools = {
    loadgen: bins.loadgen,
    wrk: "wrk",
    curl: "curl",
    cacheDir: P.cache,
  };
  const defs = proxyDefs(P, bins);
  // first starts install the peers (apt, npm); do that before the clock runs
  for (const def of defs.filter((d) => d.name === "tinyproxy" || d.name === "proxy-chain")) {
    await attempt(`${def.name} install`, async () => (await startProxy(def, 0)).proc.stop());
  }
  results.versions = await versionFacts(proxyChainDir(P));

  const watchdog = setTimeout(
    () => void shutdown(1, `the suite ran past ${SUITE_LIMIT_MS / 60_000} minutes`),
    SUITE_LIMIT_MS,
  );
  const suiteStart = Date.now();
  try {
    const only = flags.only?.split(",");
    if (!skip.has("proxies")) {
      log("direct (no proxy) baseline");
      const base = (results.proxies["no proxy"] = {});
      const up = await startUpstream(tools);
      try {
        Object.assign(base, {
          http: await attempt("no proxy plain HTTP", () => wrk(tools, null, up.port, D)),
          throughput: await attempt(
            "no proxy one stream",
            () => throughput(tools, null, up.port, MIB, THROUGHPUT_RUNS),
          ),
        });
      } finally {
        await up.proc.stop();
      }
      for (const def of defs) {
        if (only && !only.includes(def.name)) continue;
        await measureProxy(def, tools);
        await sleep(1000);
      }
    }
    if (!skip.has("distributed")) await measureDistributed(defs, tools);
    if (!skip.has("cap")) {
      await measureCap(defs[0], tools);
      await measureCap(defs[1], tools);
    }
  } finally {
    clearTimeout(watchdog);
    results.seconds = (Date.now() - suiteStart) / 1000;
    await stopAll();
  }

  console.log("\n## Raw figures per proxy\n\n" + rawTable(results));
  console.log("\n## Distributed (Redis)\n\n" + distributedTable(results));
  console.log("\n## Cap accuracy\n\n" + capTable(results));
  console.log("\n## Ratios and targets\n\n" + ratioTable(results));
  if (results.errors.length) {
    console.log(`\n${results.errors.length} error(s):\n- ${results.errors.join("\n- ")}`);
  }
  if (!flags["no-write"]) {
    await Deno.writeTextFile(`${P.repo}/bench/RESULTS.md`, markdown(results));
    await Deno.mkdir(`${P.repo}/bench/results`, { recursive: true });
    await Deno.writeTextFile(
      `${P.repo}/bench/results/latest.json`,
      JSON.stringify(results, null, 2) + "\n",
    );
    log(`wrote bench/RESULTS.md and bench/results/latest.json`);
  }
}

try {
  await main();
} catch (e) {
  console.error(e);
  await shutdown(1, "the benchmark failed");
}
