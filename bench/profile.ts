/**
 * Profiles dprl under one of the benchmark's loads and prints its hot spots.
 *
 *     deno run -A bench/profile.ts tunnels|http|throughput [seconds] [--max=N] [--redis]
 *     deno run -A bench/profile.ts summarize FILE.cpuprofile
 *
 * Starts an upstream and dprl with `--cpu-prof`, applies the load, stops dprl
 * with SIGTERM (it exits cleanly and writes the profile), then prints the top
 * functions by self time and by total (inclusive) time.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { throughput, type Tools, tunnels, wrk } from "./measure.ts";
import { freePort, spawn, stopAll, waitForPort } from "./process.ts";
import { RedisServer } from "./redis_server.ts";
import { buildBinaries, paths } from "./setup.ts";
import { startTaskV8Flags } from "./proxies.ts";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** One function's share of the profile. */
export interface HotSpot {
  name: string;
  selfMs: number;
  selfShare: number;
  totalMs: number;
  totalShare: number;
}

function label(f: CallFrame): string {
  const name = f.functionName || "(anonymous)";
  if (!f.url) return name;
  const file = f.url.replace(/^file:\/\/.*?\/(lib|mod\.ts|cli\.ts)/, "$1")
    .replace(/^.*\/(node_modules|npm\/registry\.npmjs\.org)\//, "npm:");
  return `${name} ${file}:${f.lineNumber + 1}`;
}

/** Self and inclusive time per function of a V8 `.cpuprofile`. */
export function summarize(p: CpuProfile): HotSpot[] {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const selfUs = new Map<number, number>();
  let totalUs = 0;
  p.samples.forEach((id, i) => {
    const dt = p.timeDeltas[i] ?? 0;
    selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
    totalUs += dt;
  });
  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const leaf = byId.get(id)!;
    const k = label(leaf.callFrame);
    self.set(k, (self.get(k) ?? 0) + us);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const key = label(byId.get(cur)!.callFrame);
      if (seen.has(key)) continue;
      seen.add(key);
      incl.set(key, (incl.get(key) ?? 0) + us);
    }
  }
  return [...incl.keys()].map((name) => ({
    name,
    selfMs: (self.get(name) ?? 0) / 1000,
    selfShare: (self.get(name) ?? 0) / totalUs,
    totalMs: incl.get(name)! / 1000,
    totalShare: incl.get(name)! / totalUs,
  }));
}

/** Self time grouped by where it is spent: ops, GC, dprl code, runtime JS. */
export function categories(spots: HotSpot[]): [string, number][] {
  const groups = new Map<string, number>();
  for (const s of spots) {
    const name = s.name;
    const group = name === "(idle)"
      ? "(idle)"
      : /^op_/.test(name)
      ? `${name.split(" ")[0]} (Rust op, incl. its syscall)`
      : name === "(garbage collector)" || name === "(program)"
      ? name
      : /^\S+ (lib|mod\.ts|cli\.ts)/.test(name)
      ? "dprl JS (lib/, mod.ts, cli.ts)"
      : / npm:/.test(name)
      ? "npm packages"
      : / ext:([a-z_]+)/.test(name)
      ? `runtime JS ext:${name.match(/ ext:([a-z_]+)/)![1]}`
      : /^\S+$/.test(name)
      ? `native ${name}`
      : "other";
    groups.set(group, (groups.get(group) ?? 0) + s.selfShare);
  }
  return [...groups].sort((a, b) => b[1] - a[1]);
}

function print(spots: HotSpot[], n = 25): void {
  console.log("\nSelf time by category:");
  for (const [g, share] of categories(spots)) {
    if (share >= 0.002) console.log(`${(share * 100).toFixed(1).padStart(5)}%  ${g}`);
  }
  const pct = (x: number): string => `${(x * 100).toFixed(1).padStart(5)}%`;
  console.log("\nTop by self time:");
  for (const s of [...spots].sort((a, b) => b.selfMs - a.selfMs).slice(0, n)) {
    console.log(`${pct(s.selfShare)} self ${pct(s.totalShare)} total  ${s.name}`);
  }
  console.log("\nTop by total time (dprl code only):");
  for (
    const s of [...spots].filter((s) => /^\S+ (lib|mod\.ts|cli\.ts)/.test(s.name))
      .sort((a, b) => b.totalMs - a.totalMs).slice(0, n)
  ) {
    console.log(`${pct(s.totalShare)} total ${pct(s.selfShare)} self  ${s.name}`);
  }
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { max: { type: "string", default: "0" }, redis: { type: "boolean" } },
  });
  const [mode, arg] = positionals;
  if (mode === "summarize") {
    print(summarize(JSON.parse(await Deno.readTextFile(arg))));
    Deno.exit(0);
  }
  const seconds = Number(arg ?? 10);
  const P = paths();
  const bins = await buildBinaries(P);
  const tools: Tools = { loadgen: bins.loadgen, wrk: "wrk", curl: "curl", cacheDir: P.cache };
  const dir = await Deno.makeTempDir({ prefix: "dprl-prof-" });
  try {
    const upPort = freePort();
    const up = spawn("upstream", bins.loadgen, ["upstream", `127.0.0.1:${upPort}`]);
    await waitForPort(upPort, 10_000, up);
    const redis = values.redis ? await RedisServer.start(P.cache) : undefined;
    const port = freePort();
    const dprl = spawn("dprl", Deno.execPath(), [
      "run",
      "--allow-net",
      "--allow-env",
      "--allow-sys",
      "--cpu-prof",
      `--cpu-prof-dir=${dir}`,
      "--cpu-prof-interval=100",
      ...startTaskV8Flags(),
      `${P.repo}/cli.ts`,
      "--hostname",
      "127.0.0.1",
      "--port",
      String(port),
      "--max-connections",
      values.max!,
      ...(redis ? ["--redis-url", redis.url] : []),
      "--log-level",
      "warn",
    ], { cwd: P.repo });
    await waitForPort(port, 60_000, dprl);
    if (mode === "tunnels") console.log(await tunnels(tools, port, upPort, seconds));
    else if (mode === "http") console.log(await wrk(tools, port, upPort, seconds));
    else if (mode === "throughput") console.log(await throughput(tools, port, upPort, 1024, 3));
    else throw new Error(`unknown mode ${mode}`);
    await dprl.stop(10_000);
    await redis?.stop();
    await up.stop();
    const files = [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".cpuprofile"));
    if (!files.length) throw new Error(`no .cpuprofile in ${dir}`);
    const file = `${dir}/${files[0].name}`;
    console.log(`profile: ${file}`);
    print(summarize(JSON.parse(await Deno.readTextFile(file))));
  } finally {
    await stopAll();
  }
}
