/**
 * dprl's benchmark suite: `deno task bench`.
 *
 * Measures dprl and three peer proxies (goproxy-dprl, tinyproxy, proxy-chain)
 * one at a time, on loopback, under the same load, and writes
 * `bench/RESULTS.md` (and `bench/results/latest.json`).
 *
 * Flags:
 * - `--quick`: short runs (3 s, one round, 256 MiB, 1,000 idle tunnels) to try the runner
 * - `--rounds=N`: rounds of the rate measurements (default 2); each round
 *   measures every proxy (alternating the order) and the best round counts,
 *   which damps other load on a shared machine
 * - `--only=dprl,goproxy-dprl`: measure only these proxies in the per-proxy part
 * - `--skip=distributed,cap`: skip whole sections (`proxies`, `admin`, `distributed`, `cap`,
 *   `upstream`, `tls`)
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
import {
  best,
  burst,
  idleMemory,
  median,
  throughput,
  type Tools,
  tunnels,
  upstreamGet,
  wrk,
} from "./measure.ts";
import {
  cpuDuring,
  freePort,
  loadAverage,
  sleep,
  spawn,
  type Spawned,
  stopAll,
  waitForPort,
} from "./process.ts";
import { proxyChainDir, type ProxyDef, proxyDefs } from "./proxies.ts";
import { RedisServer } from "./redis_server.ts";
import { giveHosts, scrapeTimes } from "./admin_cost.ts";
import {
  capTable,
  distributedTable,
  DPRL_BESIDE_BARE,
  markdown,
  ratioTable,
  rawTable,
  type Results,
} from "./report.ts";
import { redisCostTable } from "./redis_cost_table.ts";
import { buildBinaries, ensureDebianTools, paths } from "./setup.ts";
import { measureUpstream } from "./upstream_aware.ts";
import { measureTls, tlsTable } from "./tls_cost.ts";
import { inTurnsTable, measureAdminInTurns, measureInTurns } from "./in_turns.ts";
import { measureDistributed } from "./distributed_section.ts";
import { adminTable } from "./admin_table.ts";
import { committedRatios } from "./guard.ts";
import { upstreamTables } from "./upstream_table.ts";

const SUITE_LIMIT_MS = 16 * 60_000;

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    only: { type: "string" },
    skip: { type: "string", default: "" },
    "no-write": { type: "boolean", default: false },
    rounds: { type: "string" },
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
const ROUNDS = Math.max(1, Math.min(3, Number(flags.rounds ?? (flags.quick ? 1 : 2))));

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
    rounds: ROUNDS,
  },
  proxies: {},
  distributed: {},
  rounds: {},
  cap: {},
  errors: [],
  // Read before this run writes its own: each ratio is printed beside the one before.
  previous: await Deno.readTextFile(`${P.repo}/bench/RESULTS.md`)
    .then((text) => Object.fromEntries(committedRatios(text)), () => undefined),
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
  adminPort?: number,
  args?: string[],
): Promise<{ port: number; proc: Spawned }> {
  const port = freePort();
  const proc = def.start(port, { max, redis, adminPort, args });
  try {
    await waitForPort(port, def.startTimeoutMs, proc);
    if (adminPort !== undefined) await waitForPort(adminPort, def.startTimeoutMs, proc);
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

/** Adds the proxy's CPU time per operation to a rate measurement. */
async function withCpu<
  T extends { cpuUsPerOp?: number; cpuUserUsPerOp?: number; cpuCores?: number },
>(
  proc: Spawned,
  seconds: number,
  ops: (r: T) => number,
  fn: () => Promise<T>,
): Promise<T> {
  const { r, user, used } = await cpuDuring(proc.pid, fn);
  alive(proc);
  r.cpuUsPerOp = ops(r) > 0 ? (used * 1e6) / ops(r) : NaN;
  r.cpuUserUsPerOp = ops(r) > 0 ? (user * 1e6) / ops(r) : NaN;
  r.cpuCores = used / seconds;
  return r;
}

/** Keeps every round's rate, for the table that shows the spread. */
function record(label: string, round: number, rate: number | undefined): void {
  const row = (results.rounds[label] ??= []);
  row[round] = rate ?? NaN;
  log(`  ${label}, round ${round + 1}: ${rate === undefined ? "failed" : Math.round(rate)}`);
}

async function measureSpeed(def: ProxyDef, tools: Tools, round: number): Promise<void> {
  const fig = (results.proxies[def.name] ??= {});
  const up = await startUpstream(tools);
  try {
    await attempt(`${def.name} round ${round + 1}`, async () => {
      const { port, proc } = await startProxy(def, 0);
      try {
        log(`${def.name}: plain HTTP (wrk ${D}s), round ${round + 1}/${ROUNDS}`);
        const http = await attempt(`${def.name} plain HTTP`, async () => {
          await wrk(tools, port, up.port, WARM);
          return await withCpu(proc, D, (r) => r.requests, () => wrk(tools, port, up.port, D));
        });
        fig.http = best(fig.http, http);
        record(`${def.name}: plain HTTP req/s`, round, http?.reqPerSec);
        log(`${def.name}: CONNECT tunnels (${D}s), round ${round + 1}/${ROUNDS}`);
        const t = await attempt(`${def.name} tunnels`, async () => {
          await tunnels(tools, port, up.port, WARM);
          return await withCpu(proc, D, (r) => r.ok, () => tunnels(tools, port, up.port, D));
        });
        fig.tunnels = best(fig.tunnels, t);
        record(`${def.name}: CONNECT tunnels/s`, round, t?.perSec);
        if (round === 0) {
          log(`${def.name}: one tunnel, ${MIB} MiB x${THROUGHPUT_RUNS}`);
          fig.throughput = await attempt(`${def.name} one tunnel`, async () => {
            const r = await throughput(tools, port, up.port, MIB, THROUGHPUT_RUNS);
            alive(proc);
            return r;
          });
        }
      } finally {
        await proc.stop();
      }
    });
  } finally {
    await up.proc.stop();
  }
}

/** Buffer sizes of the bare Deno relays: the ceiling of one tunnel's throughput in Deno. */
export const BARE_RELAY_BUFFERS = [64, 256, 1024];

/** Rounds of the in-turns download (five: the ratio carries a goal of 1). */
const TURNS = 5;
/** Rounds and seconds per run of the sections measured in turns (in_turns.ts). */
const IN_TURNS = { rounds: flags.quick ? 2 : TURNS, seconds: flags.quick ? 2 : 4 };

/** Starts `bench/bare_relay.ts` with `flags` on a free port. */
async function startBareRelay(flags: string[]): Promise<{ port: number; proc: Spawned }> {
  const port = freePort();
  const proc = spawn("bare relay", Deno.execPath(), [
    ...["run", "-A", `${P.repo}/bench/bare_relay.ts`, "--port", String(port)],
    ...flags,
  ]);
  try {
    await waitForPort(port, 20_000, proc);
  } catch (e) {
    await proc.stop();
    throw e;
  }
  return { port, proc };
}

/**
 * One tunnel's throughput through a bare Deno CONNECT relay
 * (`bench/bare_relay.ts`) per buffer size, and through dprl, in turns (one
 * run of each, then the next round), so that the ratio of dprl to the best
 * of them is not a ratio of two moments of a shared machine.
 */
async function measureBareRelays(tools: Tools, upstreamPort: number, dprl: ProxyDef) {
  const relays: { name: string; port: number }[] = [];
  const procs: Spawned[] = [];
  await attempt("bare Deno relays", async () => {
    try {
      for (const kib of BARE_RELAY_BUFFERS) {
        const { port, proc } = await startBareRelay(["--buffer", String(kib * 1024)]);
        procs.push(proc);
        relays.push({ name: `bare Deno relay, ${kib} KiB`, port });
      }
      const started = await startProxy(dprl, 0);
      procs.push(started.proc);
      relays.push({ name: DPRL_BESIDE_BARE, port: started.port });
      const speeds = new Map<string, number[]>(relays.map((r) => [r.name, []]));
      for (let run = 0; run < TURNS; run++) {
        log(
          `bare Deno relays and dprl in turns: one tunnel, ${MIB} MiB, round ${run + 1}/${TURNS}`,
        );
        for (const r of relays) {
          speeds.get(r.name)!.push(...(await throughput(tools, r.port, upstreamPort, MIB, 1)).runs);
        }
      }
      for (const [name, runs] of speeds) {
        results.proxies[name] = { throughput: { mbPerSec: median(runs), runs } };
      }
    } finally {
      for (const proc of procs) await proc.stop();
    }
  });
}

/**
 * dprl in turns with wrk straight at the upstream (plain HTTP) and with
 * goproxy-dprl (tunnels), on one upstream and one process each, for the
 * goals that compare with them in every round.
 */
async function measureTurns(defs: ProxyDef[], tools: Tools): Promise<void> {
  const up = await startUpstream(tools);
  const procs: Spawned[] = [];
  try {
    results.inTurns = await attempt("in turns", async () => {
      const dprl = await startProxy(defs.find((d) => d.name === "dprl")!, 0);
      procs.push(dprl.proc);
      const go = await startProxy(defs.find((d) => d.name === "goproxy-dprl")!, 0);
      procs.push(go.proc);
      const bare = await startBareRelay(["--forward", `127.0.0.1:${up.port}`]);
      procs.push(bare.proc);
      const bareTunnel = await startBareRelay([]);
      procs.push(bareTunnel.proc);
      return await measureInTurns({
        tools,
        upstreamPort: up.port,
        dprl: { port: dprl.port, pid: dprl.proc.pid },
        goproxy: { port: go.port, pid: go.proc.pid },
        bare: { port: bare.port, pid: bare.proc.pid },
        bareTunnel: { port: bareTunnel.port, pid: bareTunnel.proc.pid },
        ...IN_TURNS,
        log,
      });
    });
  } finally {
    for (const proc of procs) await proc.stop();
    await up.proc.stop();
  }
}

async function measureMemory(def: ProxyDef, tools: Tools): Promise<void> {
  const fig = (results.proxies[def.name] ??= {});
  const up = await startUpstream(tools);
  try {
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
}

/**
 * The control plane's cost: dprl's plain-HTTP and tunnel rates without an
 * admin server and with one scraped once a second, one process each, in
 * turns, both holding statistics for 500 hosts; and the time of a scrape
 * with 500 host series.
 */
async function measureAdmin(dprl: ProxyDef, tools: Tools): Promise<void> {
  const up = await startUpstream(tools);
  const procs: Spawned[] = [];
  try {
    results.admin = await attempt("control plane", async () => {
      const adminPort = freePort();
      const off = await startProxy(dprl, 0);
      procs.push(off.proc);
      const on = await startProxy(dprl, 0, undefined, adminPort);
      procs.push(on.proc);
      await giveHosts(off.port);
      await giveHosts(on.port);
      const scrape500 = await scrapeTimes(adminPort);
      log(
        `dprl: /metrics with ${scrape500.hostSeries} host series: median ` +
          `${scrape500.medianMs.toFixed(1)} ms, p95 ${scrape500.p95Ms.toFixed(1)} ms`,
      );
      const figures = await measureAdminInTurns({
        tools,
        upstreamPort: up.port,
        off: { port: off.port, pid: off.proc.pid },
        on: { port: on.port, pid: on.proc.pid, adminPort },
        ...IN_TURNS,
        log,
      });
      for (const p of [off.proc, on.proc]) alive(p);
      return { ...figures, scrape500 };
    });
  } finally {
    for (const proc of procs) await proc.stop();
    await up.proc.stop();
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
  const only = flags.only?.split(",");
  const peers = skip.has("proxies")
    ? []
    : defs.filter((d) => d.name === "tinyproxy" || d.name === "proxy-chain")
      .filter((d) => !only || only.includes(d.name));
  for (const def of peers) {
    await attempt(`${def.name} install`, async () => (await startProxy(def, 0)).proc.stop());
  }
  results.versions = await versionFacts(proxyChainDir(P));

  const watchdog = setTimeout(
    () => void shutdown(1, `the suite ran past ${SUITE_LIMIT_MS / 60_000} minutes`),
    SUITE_LIMIT_MS,
  );
  const suiteStart = Date.now();
  const loadBefore = loadAverage();
  try {
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
        await measureBareRelays(tools, up.port, defs.find((d) => d.name === "dprl")!);
      } finally {
        await up.proc.stop();
      }
      const chosen = defs.filter((d) => !only || only.includes(d.name));
      for (let round = 0; round < ROUNDS; round++) {
        for (const def of round % 2 ? [...chosen].reverse() : chosen) {
          await measureSpeed(def, tools, round);
          await sleep(1000);
        }
      }
      if (["dprl", "goproxy-dprl"].every((n) => chosen.some((d) => d.name === n))) {
        await measureTurns(defs, tools);
      }
      for (const def of chosen) await measureMemory(def, tools);
    }
    if (!skip.has("admin")) await measureAdmin(defs.find((d) => d.name === "dprl")!, tools);
    if (!skip.has("distributed")) {
      await measureDistributed({
        tools,
        results,
        rounds: ROUNDS,
        seconds: D,
        warm: WARM,
        cacheDir: P.cache,
        log,
        attempt,
        startProxy,
        startUpstream: () => startUpstream(tools),
        withCpu,
        record,
      }, defs);
    }
    if (!skip.has("cap")) {
      await measureCap(defs[0], tools);
      await measureCap(defs[1], tools);
    }
    if (!skip.has("upstream")) {
      const dprl = defs.find((d) => d.name === "dprl")!;
      results.upstream = await attempt("upstream", () =>
        measureUpstream({
          launch: (o) => startProxy(dprl, o.max, o.redis, o.adminPort, o.args),
          cacheDir: P.cache,
          quick: flags.quick!,
          log,
          attempt,
        }));
    }
    if (!skip.has("tls")) {
      results.tls = await attempt("tls", () => {
        log("dprl with and without TLS on the proxy port, side by side");
        return measureTls(flags.quick ? 2 : D);
      });
    }
  } finally {
    clearTimeout(watchdog);
    results.seconds = (Date.now() - suiteStart) / 1000;
    results.machine.push([
      "1-min load average, start → end of the run",
      `${loadBefore.toFixed(2)} → ${loadAverage().toFixed(2)}`,
    ]);
    await stopAll();
  }

  console.log("\n## Raw figures per proxy\n\n" + rawTable(results));
  console.log("\n## In turns\n\n" + inTurnsTable(results.inTurns));
  console.log("\n## Distributed (Redis)\n\n" + distributedTable(results));
  console.log("\n" + redisCostTable(results.redisCost));
  console.log("\n## Control plane\n\n" + adminTable(results.admin));
  console.log("\n## Cap accuracy\n\n" + capTable(results));
  console.log("\n## Upstream-aware limits\n\n" + upstreamTables(results.upstream));
  console.log("\n## HTTPS to the proxy\n\n" + tlsTable(results.tls));
  console.log("\n## Ratios and targets\n\n" + ratioTable(results));
  if (results.errors.length) {
    console.log(`\n${results.errors.length} error(s):\n- ${results.errors.join("\n- ")}`);
  }
  if (!flags["no-write"]) {
    await Deno.writeTextFile(`${P.repo}/bench/RESULTS.md`, markdown(results));
    // keep `deno fmt --check` clean
    await new Deno.Command(Deno.execPath(), {
      args: ["fmt", "-q", `${P.repo}/bench/RESULTS.md`],
      stdout: "null",
      stderr: "null",
    }).output();
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
