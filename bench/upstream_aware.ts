/**
 * The benchmark's `upstream` section: dprl's upstream-aware limits, with
 * spawned dprl processes on loopback and upstreams in this process.
 *
 * - Adaptive: an upstream that serves 4 requests at a time (50 ms each),
 *   queues the rest and answers 503 past 12 in flight; 40 client loops
 *   through dprl `--adaptive --max-connections 64 --queue-timeout 10s`, then
 *   through a static `--max-connections 4`, with one proxy and with three on
 *   one Redis. The effective limit is polled from `/api/hosts` every 100 ms.
 * - Rate accuracy: three proxies on one Redis, a host rate of 10/s, 30
 *   client loops hammering for 5 s with `--queue-timeout 0`.
 * - Fleet-wide pause: three proxies on one Redis, an upstream whose first
 *   answer is 429 with `Retry-After: 30`; after that answer through the
 *   first proxy, the time until the other two refuse the host.
 *
 * @module
 */

import { freePort, sleep, type Spawned } from "./process.ts";
import { RedisServer } from "./redis_server.ts";
import {
  type AdaptiveRun,
  type PauseTrial,
  type RateRun,
  UPSTREAM_GOALS as G,
  type UpstreamFigures,
} from "./upstream_table.ts";
import {
  type CapacityUpstream,
  startCapacityUpstream,
} from "../tests/_helpers/capacity_upstream.ts";

/** What the section starts a dprl process with. */
export interface DprlLaunch {
  /** `--max-connections`. */
  max: number;
  /** Further dprl flags. */
  args: string[];
  /** Redis address `host:port`. */
  redis?: string;
  /** Port of the admin server. */
  adminPort?: number;
}

/** A started dprl process. */
export interface Launched {
  port: number;
  proc: Spawned;
}

/** What the section needs from the runner. */
export interface UpstreamOptions {
  /** Starts one dprl process and waits until it listens. */
  launch: (o: DprlLaunch) => Promise<Launched>;
  /** Where redis-server may write. */
  cacheDir: string;
  /** Shorter runs. */
  quick: boolean;
  log: (msg: string) => void;
  /** Runs one measurement; an error is recorded and the section goes on. */
  attempt: <T>(label: string, fn: () => Promise<T>) => Promise<T | undefined>;
}

/** The capacity-limited upstream of the adaptive runs. */
const CAPACITY = { capacity: 4, serviceMs: 50, maxInFlight: 12 };
const ADAPTIVE_CLIENTS = 40;
const RATE_CLIENTS = 30;
const RATE_MS = 5_000;
const POLL_MS = 100;
const PAUSE_POLL_MS = 10;
/** Polls of one pause trial at most (3 s). */
const PAUSE_POLLS = 300;

/** Measures the whole section. */
export async function measureUpstream(o: UpstreamOptions): Promise<UpstreamFigures> {
  const figures: UpstreamFigures = { adaptive: [], settings: { adaptiveMs: 0, pauseTrials: 0 } };
  const runMs = o.quick ? 5_000 : 10_000;
  const trials = o.quick ? 3 : 5;
  figures.settings = { adaptiveMs: runMs, pauseTrials: trials };
  const redis = await RedisServer.start(o.cacheDir);
  try {
    for (const proxies of [1, 3]) {
      for (const mode of ["static 4", "adaptive"] as const) {
        const label = `upstream: ${mode}, ${proxies} ${proxies === 1 ? "proxy" : "proxies"}`;
        const run = await o.attempt(label, async () => {
          await redis.flushAll();
          o.log(`${label} (${runMs / 1000}s)`);
          const r = await adaptiveRun(o, { proxies, mode, runMs, redis });
          o.log(`  ${describe(r)}`);
          return r;
        });
        if (run) figures.adaptive.push(run);
      }
    }
    figures.rate = await o.attempt("upstream: rate accuracy", async () => {
      await redis.flushAll();
      o.log(`upstream: rate accuracy, 3 proxies on one Redis, 10/s (${RATE_MS / 1000}s)`);
      const r = await rateRun(o, redis);
      o.log(`  ${r.reached} reached the upstream, busiest second ${r.busiestSecond}`);
      return r;
    });
    figures.pause = await o.attempt("upstream: fleet-wide pause", async () => {
      await redis.flushAll();
      o.log(`upstream: fleet-wide pause, 3 proxies on one Redis, ${trials} trials`);
      const r = await pauseTrials(o, redis, trials);
      o.log(`  ${r.map((t) => `${t.latencyMs.toFixed(1)} ms (${t.reached} reached)`).join(", ")}`);
      return r;
    });
  } finally {
    await redis.stop();
  }
  return figures;
}

function describe(r: AdaptiveRun): string {
  return `503 share ${(100 * r.dropShare).toFixed(1)}%, median in flight ${r.medianInFlight}, ` +
    `goodput ${r.goodput.toFixed(1)}/s` +
    (r.convergenceMs === undefined ? "" : `, converged after ${r.convergenceMs} ms`) +
    (r.finalLimit ? `, limit at the end ${r.finalLimit}` : "");
}

/** Starts `n` dprl processes with the same flags; each with an admin port when `admin`. */
async function startFleet(
  o: UpstreamOptions,
  n: number,
  launch: Omit<DprlLaunch, "adminPort">,
  admin: boolean,
): Promise<{ procs: Launched[]; adminPorts: number[]; stop: () => Promise<void> }> {
  const procs: Launched[] = [];
  const adminPorts: number[] = [];
  const stop = async () => void await Promise.all(procs.map((p) => p.proc.stop()));
  try {
    for (let i = 0; i < n; i++) {
      const adminPort = admin ? freePort() : undefined;
      procs.push(await o.launch({ ...launch, adminPort }));
      if (adminPort !== undefined) adminPorts.push(adminPort);
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { procs, adminPorts, stop };
}

function alive(procs: Launched[]): void {
  for (const p of procs) {
    if (p.proc.exited) throw new Error(`${p.proc.name} died: ${p.proc.stderr.trim().slice(-400)}`);
  }
}

/** Answers the clients saw, by status ("error" for a failed fetch). */
type Statuses = Record<string, number>;

/**
 * `clients` loops, spread over `proxyPorts`, each sending `GET url` one
 * after the other until `ms` have passed (at most `maxEach` requests each).
 * Returns the answers by status and the seconds from start to the last answer.
 */
async function hammer(
  proxyPorts: number[],
  url: string,
  clients: number,
  ms: number,
  maxEach: number,
): Promise<{ statuses: Statuses; seconds: number; start: number }> {
  const statuses: Statuses = {};
  const count = (k: string) => void (statuses[k] = (statuses[k] ?? 0) + 1);
  const start = performance.now();
  await Promise.all(Array.from({ length: clients }, async (_, i) => {
    const proxy = `http://127.0.0.1:${proxyPorts[i % proxyPorts.length]}`;
    const client = Deno.createHttpClient({ proxy: { url: proxy } });
    try {
      for (let n = 0; n < maxEach && performance.now() - start < ms; n++) {
        try {
          const res = await fetch(url, { client, signal: AbortSignal.timeout(30_000) });
          await res.body?.cancel();
          count(String(res.status));
        } catch {
          count("error");
        }
      }
    } finally {
      client.close();
    }
  }));
  return { statuses, seconds: (performance.now() - start) / 1000, start };
}

/** One poll of every proxy's view of the host: its effective limit and reason. */
interface LimitSample {
  /** ms since the run's start. */
  t: number;
  limits: (number | null)[];
  reasons: (string | null)[];
}

/** Polls `/api/hosts/{host}` of every admin port every 100 ms until `stop` resolves. */
async function pollLimits(
  adminPorts: number[],
  host: string,
  start: number,
  stop: Promise<unknown>,
): Promise<LimitSample[]> {
  const samples: LimitSample[] = [];
  let done = false;
  const end = () => void (done = true);
  stop.then(end, end);
  // Bounded by the run's end, and in count (10 minutes of polls).
  for (let n = 0; !done && n < 6_000; n++) {
    const t = performance.now() - start;
    const views = await Promise.all(adminPorts.map(async (port) => {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/api/hosts/${encodeURIComponent(host)}`, {
          signal: AbortSignal.timeout(2_000),
        });
        if (res.status !== 200) {
          await res.body?.cancel();
          return null;
        }
        return await res.json() as { effectiveLimit: number | null; limitReason: string | null };
      } catch {
        return null;
      }
    }));
    samples.push({
      t,
      limits: views.map((v) => v?.effectiveLimit ?? null),
      reasons: views.map((v) => v?.limitReason ?? null),
    });
    await sleep(Math.max(0, t + POLL_MS - (performance.now() - start)));
  }
  return samples;
}

/**
 * The convergence time: the time of the first sample from which every
 * sample up to at least `holdMs` later is in range, NaN when none is before
 * the polls end. A sample is in range when at least one proxy shows an
 * effective limit and every limit shown is within [lo, hi]; a proxy that
 * shows none (it has not heard the host's limit yet) is left out.
 */
export function convergence(
  samples: LimitSample[],
  lo: number,
  hi: number,
  holdMs: number,
): number {
  const inRange = (s: LimitSample) => {
    const shown = s.limits.filter((l) => l !== null);
    return shown.length > 0 && shown.every((l) => l >= lo && l <= hi);
  };
  for (let i = 0; i < samples.length; i++) {
    if (!inRange(samples[i])) continue;
    let j = i;
    while (j + 1 < samples.length && inRange(samples[j + 1])) j++;
    if (samples[j].t - samples[i].t >= holdMs) return Math.round(samples[i].t);
    i = j;
  }
  return NaN;
}

/** One run of 40 clients against the capacity-limited upstream. */
async function adaptiveRun(
  o: UpstreamOptions,
  c: { proxies: number; mode: "static 4" | "adaptive"; runMs: number; redis: RedisServer },
): Promise<AdaptiveRun> {
  const adaptive = c.mode === "adaptive";
  const launch: Omit<DprlLaunch, "adminPort"> = {
    max: adaptive ? 64 : 4,
    args: ["--queue-timeout", "10s", ...(adaptive ? ["--adaptive"] : [])],
    redis: c.proxies > 1 ? c.redis.addr : undefined,
  };
  const fleet = await startFleet(o, c.proxies, launch, adaptive);
  const up: CapacityUpstream = startCapacityUpstream(CAPACITY);
  try {
    const load = hammer(
      fleet.procs.map((p) => p.port),
      up.url,
      ADAPTIVE_CLIENTS,
      c.runMs,
      10_000,
    );
    const polls = adaptive
      ? pollLimits(fleet.adminPorts, up.authority, performance.now(), load)
      : Promise.resolve([]);
    const [{ statuses, seconds }, samples] = await Promise.all([load, polls]);
    alive(fleet.procs);
    return summarize(c, up, statuses, seconds, adaptive ? samples : undefined);
  } finally {
    await fleet.stop();
    await up[Symbol.asyncDispose]();
  }
}

function summarize(
  c: { proxies: number; mode: "static 4" | "adaptive" },
  up: CapacityUpstream,
  statuses: Statuses,
  seconds: number,
  samples: LimitSample[] | undefined,
): AdaptiveRun {
  const ok = up.answers.get(200) ?? 0;
  const dropped = up.answers.get(503) ?? 0;
  const sorted = [...up.inflight].sort((a, b) => a - b);
  const last = samples?.at(-1);
  return {
    proxies: c.proxies,
    mode: c.mode,
    seconds,
    ok,
    dropped,
    dropShare: dropped / Math.max(1, ok + dropped),
    medianInFlight: sorted[Math.floor(sorted.length / 2)] ?? 0,
    peakInFlight: up.peak(),
    goodput: ok / seconds,
    statuses,
    convergenceMs: samples ? convergence(samples, G.limitLow, G.limitHigh, G.holdMs) : undefined,
    polls: samples?.length,
    pollsWithoutLimit: samples?.filter((x) => x.limits.includes(null)).length,
    finalLimit: last
      ? last.limits.map((l, i) => `${l ?? "—"} (${last.reasons[i] ?? "—"})`).join(", ")
      : undefined,
  };
}

/** An upstream that answers 200 at once and records when each request came (ms, performance.now). */
function timedUpstream(first?: { status: number; retryAfter: string }) {
  const seen: number[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    seen.push(performance.now());
    if (first && seen.length === 1) {
      return new Response("busy\n", {
        status: first.status,
        headers: { "retry-after": first.retryAfter },
      });
    }
    return new Response("ok\n");
  });
  const { port } = server.addr as Deno.NetAddr;
  return {
    seen,
    authority: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}/`,
    close: () => server.shutdown(),
  };
}

/** Three proxies on one Redis, a host rate of 10/s, 30 clients for 5 s. */
async function rateRun(o: UpstreamOptions, redis: RedisServer): Promise<RateRun> {
  const up = timedUpstream();
  const fleet = await startFleet(o, 3, {
    max: 0,
    args: [
      "--host-rate",
      `${up.authority}=10/s`,
      "--reject-status",
      "429",
      "--queue-timeout",
      "0",
    ],
    redis: redis.addr,
  }, false);
  try {
    const { statuses, seconds, start } = await hammer(
      fleet.procs.map((p) => p.port),
      up.url,
      RATE_CLIENTS,
      RATE_MS,
      5_000,
    );
    alive(fleet.procs);
    const perSecond: number[] = [];
    for (const t of up.seen) {
      const s = Math.floor((t - start) / 1000);
      perSecond[s] = (perSecond[s] ?? 0) + 1;
    }
    return {
      proxies: 3,
      rate: 10,
      clients: RATE_CLIENTS,
      seconds,
      reached: up.seen.length,
      perSecond: Array.from(perSecond, (n) => n ?? 0),
      busiestSecond: Math.max(0, ...perSecond.filter((n) => n !== undefined)),
      statuses,
    };
  } finally {
    await fleet.stop();
    await up.close();
  }
}

/** Three proxies on one Redis; `trials` pauses, each of a fresh upstream (a new host). */
async function pauseTrials(
  o: UpstreamOptions,
  redis: RedisServer,
  trials: number,
): Promise<PauseTrial[]> {
  const fleet = await startFleet(o, 3, { max: 0, args: [], redis: redis.addr }, false);
  try {
    const out: PauseTrial[] = [];
    for (let i = 0; i < trials; i++) {
      out.push(await pauseTrial(fleet.procs.map((p) => p.port)));
      alive(fleet.procs);
    }
    return out;
  } finally {
    await fleet.stop();
  }
}

/** Whether `res` is dprl refusing a paused host. */
function refusesPaused(res: Response): boolean {
  return res.status === 503 &&
    /destination_unavailable/.test(res.headers.get("proxy-status") ?? "");
}

/**
 * One trial: a 429 with `Retry-After: 30` through the first proxy, then a
 * request through each of the other two every 10 ms until it refuses the
 * host (at most 300 polls). The latency runs from the 429's arrival at the
 * client to the later of the two refusals.
 */
async function pauseTrial(ports: number[]): Promise<PauseTrial> {
  const up = timedUpstream({ status: 429, retryAfter: "30" });
  const clients = ports.map((p) =>
    Deno.createHttpClient({ proxy: { url: `http://127.0.0.1:${p}` } })
  );
  try {
    const first = await fetch(up.url, { client: clients[0], signal: AbortSignal.timeout(5_000) });
    await first.body?.cancel();
    if (first.status !== 429) throw new Error(`the first answer was ${first.status}, not 429`);
    const t0 = performance.now();
    const refusedAt: (number | null)[] = [null, null];
    for (let n = 0; n < PAUSE_POLLS && refusedAt.includes(null); n++) {
      const pollStart = performance.now();
      await Promise.all([1, 2].map(async (k) => {
        if (refusedAt[k - 1] !== null) return;
        const res = await fetch(up.url, { client: clients[k], signal: AbortSignal.timeout(5_000) });
        await res.body?.cancel();
        if (refusesPaused(res)) refusedAt[k - 1] = performance.now() - t0;
      }));
      await sleep(Math.max(0, pollStart + PAUSE_POLL_MS - performance.now()));
    }
    const latencyMs = refusedAt.includes(null) ? NaN : Math.max(...(refusedAt as number[]));
    return { latencyMs, reached: up.seen.length - 1 };
  } finally {
    for (const c of clients) c.close();
    await up.close();
  }
}
