/**
 * How to start each proxy under test as its own process on 127.0.0.1:PORT.
 *
 * @module
 */

import { spawn, type Spawned } from "./process.ts";
import type { Binaries, Paths } from "./setup.ts";

/** What a proxy is started with. */
export interface LaunchOptions {
  /** Per-host connection limit; 0 = unlimited (only dprl and goproxy-dprl have one). */
  max: number;
  /** Redis address `host:port` for the distributed mode. */
  redis?: string;
  /** Port of dprl's admin server (none without it). */
  adminPort?: number;
  /** Further dprl flags (other proxies ignore them). */
  args?: string[];
}

/** A proxy under test. */
export interface ProxyDef {
  name: string;
  /** How long the first start may take (peers install themselves). */
  startTimeoutMs: number;
  start(port: number, options: LaunchOptions): Spawned;
}

/**
 * The `--v8-flags` of `deno task start` (deno.json): every dprl the
 * benchmarks start runs with them, as the documented commands do.
 */
export function startTaskV8Flags(): string[] {
  const config = JSON.parse(Deno.readTextFileSync(new URL("../deno.json", import.meta.url)));
  return (config.tasks.start as string).split(/\s+/).filter((w) => w.startsWith("--v8-flags="));
}

/** The four proxies, dprl first. */
export function proxyDefs(p: Paths, bins: Binaries): ProxyDef[] {
  const dprlExtra = (Deno.env.get("DPRL_BENCH_DENO_FLAGS") ?? "").split(/\s+/)
    .filter(Boolean);
  return [
    {
      name: "dprl",
      startTimeoutMs: 60_000,
      start: (port, o) =>
        spawn("dprl", Deno.execPath(), [
          "run",
          "--allow-net",
          "--allow-env",
          "--allow-sys",
          ...startTaskV8Flags(),
          ...dprlExtra,
          `${p.repo}/cli.ts`,
          "--hostname",
          "127.0.0.1",
          "--port",
          String(port),
          "--max-connections",
          String(o.max),
          ...(o.redis ? ["--redis-url", `redis://${o.redis}`] : []),
          ...(o.adminPort === undefined ? [] : ["--admin-port", String(o.adminPort)]),
          "--log-level",
          "warn",
          ...(o.args ?? []),
        ], { cwd: p.repo }),
    },
    {
      name: "goproxy-dprl",
      startTimeoutMs: 10_000,
      start: (port, o) =>
        spawn("goproxy-dprl", bins.goproxyDprl, [
          "-listen",
          `127.0.0.1:${port}`,
          "-max",
          String(o.max),
          ...(o.redis ? ["-redis", o.redis] : []),
        ]),
    },
    {
      name: "tinyproxy",
      startTimeoutMs: 300_000,
      start: (port) =>
        spawn("tinyproxy", "bash", [
          `${p.shared}/peers/tinyproxy/run.sh`,
          String(port),
        ]),
    },
    {
      name: "proxy-chain",
      startTimeoutMs: 300_000,
      start: (port) =>
        spawn("proxy-chain", "bash", [
          `${p.shared}/peers/proxy-chain/run.sh`,
          String(port),
        ], { env: { PEER_DIR: proxyChainDir(p) } }),
    },
  ];
}

/** Where proxy-chain's npm install goes. */
export function proxyChainDir(p: Paths): string {
  return `${p.cache}/proxy-chain-peer`;
}
