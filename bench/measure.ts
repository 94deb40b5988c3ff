/**
 * One function per measurement. Each runs an external load tool (wrk,
 * loadgen, curl) against a proxy already listening on 127.0.0.1 and parses
 * what it prints. Every call has a hard time bound.
 *
 * @module
 */

import { rssKiB, run, sleep, spawn, type Spawned } from "./process.ts";

/** Paths of the load tools. */
export interface Tools {
  loadgen: string;
  wrk: string;
  curl: string;
  /** Directory for scratch files (wrk scripts). */
  cacheDir: string;
}

/** Plain-HTTP throughput as wrk reports it. */
export interface WrkResult {
  reqPerSec: number;
  p99Ms: number;
  requests: number;
  /** Responses other than 2xx/3xx. */
  non2xx: number;
  /**
   * wrk's socket errors (connect, read, write, timeout). A proxy that closes
   * the client connection after every response (tinyproxy) shows one read
   * error per request although every request was answered.
   */
  socketErrors: number;
  /** The proxy's CPU time per request, µs (set by the runner). */
  cpuUsPerOp?: number;
  /** The user-mode part of `cpuUsPerOp`. */
  cpuUserUsPerOp?: number;
  /** The proxy's CPU use during the run, in cores (set by the runner). */
  cpuCores?: number;
}

function toMs(v: string, unit: string): number {
  const n = Number(v);
  switch (unit) {
    case "us":
      return n / 1000;
    case "ms":
      return n;
    case "s":
      return n * 1000;
    case "m":
      return n * 60_000;
    default:
      return NaN;
  }
}

/** Parses wrk's `--latency` output. */
export function parseWrk(out: string): WrkResult {
  const rps = out.match(/Requests\/sec:\s+([\d.]+)/);
  const p99 = out.match(/^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$/m);
  const reqs = out.match(/(\d+) requests in/);
  let socketErrors = 0;
  const sock = out.match(
    /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/,
  );
  if (sock) socketErrors = sock.slice(1).reduce((a, b) => a + Number(b), 0);
  const non2xx = out.match(/Non-2xx or 3xx responses: (\d+)/);
  if (!rps || !p99 || !reqs) {
    throw new Error(`cannot parse wrk output:\n${out}`);
  }
  return {
    reqPerSec: Number(rps[1]),
    p99Ms: toMs(p99[1], p99[2]),
    requests: Number(reqs[1]),
    non2xx: non2xx ? Number(non2xx[1]) : 0,
    socketErrors,
  };
}

/**
 * wrk with 32 connections sending absolute-form `GET http://upstream/`
 * through the proxy (or origin-form straight to the upstream when
 * `proxyPort` is null, as the no-proxy baseline).
 */
export async function wrk(
  tools: Tools,
  proxyPort: number | null,
  upstreamPort: number,
  seconds: number,
): Promise<WrkResult> {
  const script = `${tools.cacheDir}/absolute_get_${upstreamPort}.lua`;
  await Deno.writeTextFile(
    script,
    `request = function() return wrk.format("GET", "http://127.0.0.1:${upstreamPort}/") end\n`,
  );
  const args = proxyPort === null
    ? [
      "-t2",
      "-c32",
      `-d${seconds}s`,
      "--latency",
      `http://127.0.0.1:${upstreamPort}/`,
    ]
    : [
      "-t2",
      "-c32",
      `-d${seconds}s`,
      "--latency",
      "-s",
      script,
      `http://127.0.0.1:${proxyPort}`,
    ];
  const r = await run(tools.wrk, args, { timeoutMs: (seconds + 20) * 1000 });
  if (r.timedOut) throw new Error("wrk timed out");
  return parseWrk(r.stdout);
}

/** CONNECT-tunnel rate as `loadgen tunnels` reports it. */
export interface TunnelsResult {
  perSec: number;
  ok: number;
  fail: number;
  p50Ms: number;
  p99Ms: number;
  /** The proxy's CPU time per tunnel, µs (set by the runner). */
  cpuUsPerOp?: number;
  /** The user-mode part of `cpuUsPerOp`. */
  cpuUserUsPerOp?: number;
  /** The proxy's CPU use during the run, in cores (set by the runner). */
  cpuCores?: number;
}

/** Parses `loadgen tunnels` output. */
export function parseTunnels(out: string): TunnelsResult {
  const m = out.match(
    /tunnels_per_s=([\d.]+) ok=(\d+) fail=(\d+) p50_ms=([\d.]+) p99_ms=([\d.]+)/,
  );
  if (!m) throw new Error(`cannot parse loadgen tunnels output:\n${out}`);
  return {
    perSec: Number(m[1]),
    ok: Number(m[2]),
    fail: Number(m[3]),
    p50Ms: Number(m[4]),
    p99Ms: Number(m[5]),
  };
}

/** 32 workers looping CONNECT, GET /, close for `seconds`. */
export async function tunnels(
  tools: Tools,
  proxyPort: number,
  upstreamPort: number,
  seconds: number,
  workers = 32,
): Promise<TunnelsResult> {
  const r = await run(
    tools.loadgen,
    [
      "tunnels",
      `127.0.0.1:${proxyPort}`,
      `127.0.0.1:${upstreamPort}`,
      String(workers),
      `${seconds}s`,
    ],
    { timeoutMs: (seconds + 30) * 1000 },
  );
  if (r.timedOut) throw new Error("loadgen tunnels timed out");
  return parseTunnels(r.stdout);
}

/** Single-tunnel throughput. */
export interface ThroughputResult {
  /** Median of the runs, MB/s (10^6 bytes per second). */
  mbPerSec: number;
  runs: number[];
}

/**
 * Downloads `/big?mb=N` (N MiB) with curl through one CONNECT tunnel
 * (`--proxytunnel`), or directly when `proxyPort` is null; median of `runs`.
 * curl alone reads well over 2 GB/s on loopback, so it is not the limit.
 */
export async function throughput(
  tools: Tools,
  proxyPort: number | null,
  upstreamPort: number,
  mib: number,
  runs = 3,
): Promise<ThroughputResult> {
  const speeds: number[] = [];
  for (let i = 0; i < runs; i++) {
    const args = [
      "-q",
      "-s",
      "-o",
      "/dev/null",
      "--max-time",
      "60",
      "-w",
      "%{http_code} %{size_download} %{speed_download}",
    ];
    if (proxyPort !== null) {
      args.push("-p", "-x", `http://127.0.0.1:${proxyPort}`);
    } else {
      args.push("--noproxy", "*");
    }
    args.push(`http://127.0.0.1:${upstreamPort}/big?mb=${mib}`);
    const r = await run(tools.curl, args, { timeoutMs: 70_000 });
    const [code, size, speed] = r.stdout.trim().split(" ").map(Number);
    if (code !== 200 || size !== mib * 1024 * 1024) {
      throw new Error(
        `curl through the tunnel got status ${code}, ${size} bytes (exit ${r.code})`,
      );
    }
    speeds.push(speed / 1e6);
  }
  return { mbPerSec: median(speeds), runs: speeds };
}

/** Memory held by idle tunnels. */
export interface IdleMemoryResult {
  tunnels: number;
  failed: number;
  baseKiB: number;
  heldKiB: number;
  /** (held - base) / tunnels, KiB. */
  perTunnelKiB: number;
}

/**
 * How long a proxy is left quiet before its RSS is read: a quiet dprl runs
 * one full collection after a second without a new request or tunnel
 * (`lib/idle_collector.ts`), and a reading taken just before it and one
 * just after differ by several MiB. Both readings wait as long, for every
 * proxy.
 */
const SETTLE_MS = 3_000;

/**
 * RSS of `proc` before and while `loadgen hold` keeps `n` CONNECT tunnels
 * open and idle, each read once the proxy has been quiet for
 * {@linkcode SETTLE_MS}; the tunnels close when the hold process is stopped.
 */
export async function idleMemory(
  tools: Tools,
  proc: Spawned,
  proxyPort: number,
  upstreamPort: number,
  n: number,
): Promise<IdleMemoryResult> {
  // warm the code paths first, so one-time costs are not counted per tunnel
  await tunnels(tools, proxyPort, upstreamPort, 1, 4);
  await sleep(SETTLE_MS);
  const baseKiB = await sampleRss(proc.pid);
  const hold = spawn(
    "loadgen hold",
    tools.loadgen,
    [
      "hold",
      `127.0.0.1:${proxyPort}`,
      `127.0.0.1:${upstreamPort}`,
      String(n),
      "120s",
    ],
    { stdout: true },
  );
  try {
    const line = await firstLine(hold.stdout, 90_000);
    const m = line.match(/held=(\d+) fail=(\d+)/);
    if (!m) throw new Error(`loadgen hold said: ${line}`);
    const held = Number(m[1]);
    await sleep(SETTLE_MS);
    const heldKiB = await sampleRss(proc.pid);
    return {
      tunnels: held,
      failed: Number(m[2]),
      baseKiB,
      heldKiB,
      perTunnelKiB: held > 0 ? (heldKiB - baseKiB) / held : NaN,
    };
  } finally {
    await hold.stop(2000);
  }
}

/** Median of three VmRSS samples 300 ms apart. */
async function sampleRss(pid: number): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < 3; i++) {
    if (i > 0) await sleep(300);
    xs.push(rssKiB(pid));
  }
  return median(xs);
}

async function firstLine(
  stream: ReadableStream<Uint8Array>,
  timeoutMs: number,
): Promise<string> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const deadline = Date.now() + timeoutMs;
  try {
    while (!buf.includes("\n")) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("timed out waiting for loadgen hold");
      let id: ReturnType<typeof setTimeout> | undefined;
      const r = await Promise.race([
        reader.read(),
        new Promise<never>((_, rej) => {
          id = setTimeout(
            () => rej(new Error("timed out waiting for loadgen hold")),
            left,
          );
        }),
      ]).finally(() => clearTimeout(id));
      if (r.done) break;
      buf += r.value;
    }
  } finally {
    reader.releaseLock();
  }
  return buf.split("\n")[0];
}

/** Status counts of a `loadgen burst`, e.g. `{ "200": 4, "500": 16 }`. */
export async function burst(
  tools: Tools,
  proxyPort: number,
  upstreamPort: number,
  clients: number,
): Promise<Record<string, number>> {
  const r = await run(
    tools.loadgen,
    [
      "burst",
      `127.0.0.1:${proxyPort}`,
      `127.0.0.1:${upstreamPort}`,
      String(clients),
    ],
    { timeoutMs: 60_000 },
  );
  const m = r.stdout.match(/map\[(.*)\]/);
  if (!m) throw new Error(`cannot parse loadgen burst output: ${r.stdout}`);
  const counts: Record<string, number> = {};
  for (const pair of m[1].trim().split(/\s+/)) {
    if (!pair) continue;
    const [k, v] = pair.split(":");
    counts[k] = Number(v);
  }
  return counts;
}

/** Body of a plain GET straight to the upstream (no proxy, no env proxy). */
export async function upstreamGet(port: number, path: string): Promise<string> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  const id = setTimeout(() => {
    try {
      c.close();
    } catch {
      // already closed
    }
  }, 10_000);
  try {
    await c.write(
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`,
      ),
    );
    const text = await new Response(c.readable).text();
    return text.slice(text.indexOf("\r\n\r\n") + 4);
  } finally {
    clearTimeout(id);
  }
}

/** Median of a list of numbers. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** The better of two rate results (the first when the second is missing). */
export function best<T extends { reqPerSec?: number; perSec?: number }>(
  a: T | undefined,
  b: T | undefined,
): T | undefined {
  if (!a || !b) return a ?? b;
  const rate = (x: T): number => x.reqPerSec ?? x.perSec ?? 0;
  return rate(b) > rate(a) ? b : a;
}
