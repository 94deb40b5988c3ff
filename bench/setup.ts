/**
 * Finds the shared peers and tools, builds the Go binaries into a cache
 * directory outside the repository, and installs missing Debian tools.
 *
 * Environment overrides:
 * - `DPRL_BENCH_SHARED`: the shared directory (default `../shared` beside the repo)
 * - `DPRL_BENCH_CACHE`: where binaries and scratch files go
 *   (default `$XDG_CACHE_HOME/dprl-bench`, else `/tmp/dprl-bench`)
 *
 * @module
 */

import { onPath, run } from "./process.ts";

/** Where everything lives. */
export interface Paths {
  repo: string;
  shared: string;
  cache: string;
}

/** Resolves the repository, shared and cache directories. */
export function paths(): Paths {
  const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  const shared = Deno.env.get("DPRL_BENCH_SHARED") ??
    new URL("../../shared", import.meta.url).pathname.replace(/\/$/, "");
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  const cache = Deno.env.get("DPRL_BENCH_CACHE") ??
    (xdg ? `${xdg}/dprl-bench` : "/tmp/dprl-bench");
  return { repo, shared, cache };
}

async function aptInstall(pkgs: string[]): Promise<void> {
  console.log(`installing ${pkgs.join(" ")} with apt-get`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  await run("apt-get", ["update", "-q"], { timeoutMs: 180_000, env });
  const r = await run("apt-get", ["install", "-y", "-q", ...pkgs], {
    timeoutMs: 300_000,
    env,
  });
  if (r.code !== 0) {
    throw new Error(`apt-get install ${pkgs.join(" ")} failed: ${r.stderr}`);
  }
}

/** Installs wrk, curl, redis-server and npm when they are missing. */
export async function ensureDebianTools(): Promise<void> {
  const want: [string, string][] = [
    ["wrk", "wrk"],
    ["curl", "curl"],
    ["redis-server", "redis-server"],
    ["npm", "npm"], // proxy-chain's run.sh needs node and npm
  ];
  const missing: string[] = [];
  for (const [cmd, pkg] of want) {
    if (!(await onPath(cmd))) missing.push(pkg);
  }
  if (missing.length) await aptInstall(missing);
}

/** Built binaries. */
export interface Binaries {
  loadgen: string;
  goproxyDprl: string;
}

/** Builds loadgen and goproxy-dprl with the shared build scripts. */
export async function buildBinaries(p: Paths): Promise<Binaries> {
  await Deno.mkdir(p.cache, { recursive: true });
  const bins: Binaries = {
    loadgen: `${p.cache}/loadgen`,
    goproxyDprl: `${p.cache}/goproxy-dprl`,
  };
  const jobs: [string, string][] = [
    [`${p.shared}/tools/loadgen/build.sh`, bins.loadgen],
    [`${p.shared}/peers/goproxy-dprl/build.sh`, bins.goproxyDprl],
  ];
  for (const [script, out] of jobs) {
    const r = await run("bash", [script, out], { timeoutMs: 600_000 });
    if (r.code !== 0) {
      throw new Error(`${script} failed (${r.code}): ${r.stderr}${r.stdout}`);
    }
  }
  return bins;
}
