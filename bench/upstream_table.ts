/**
 * The figures of the benchmark's `upstream` section (adaptive limits, request
 * rates and fleet-wide pauses), their goals and their Markdown.
 *
 * @module
 */

import { fmt, table } from "./markdown_table.ts";

/** One run of 40 clients against the upstream that serves 4 at a time. */
export interface AdaptiveRun {
  /** dprl processes (more than one: on one Redis). */
  proxies: number;
  /** `--adaptive --max-connections 64`, or `--max-connections 4`. */
  mode: "adaptive" | "static 4";
  /** From the first request to the last answer. */
  seconds: number;
  /** The upstream's 200 answers. */
  ok: number;
  /** The upstream's 503 answers (more than 12 in flight). */
  dropped: number;
  /** dropped ÷ (ok + dropped). */
  dropShare: number;
  /** Median of the upstream's in-flight count at each arrival. */
  medianInFlight: number;
  peakInFlight: number;
  /** ok ÷ seconds. */
  goodput: number;
  /** What the clients got, by status. */
  statuses: Record<string, number>;
  /** Adaptive runs: the convergence time in ms (see {@linkcode upstreamMethod}); NaN: never. */
  convergenceMs?: number;
  /** Adaptive runs: each proxy's effective limit (reason) at the last poll. */
  finalLimit?: string;
  /** Adaptive runs: polls of `/api/hosts` (all proxies at once). */
  polls?: number;
  /** Adaptive runs: polls in which a proxy showed no effective limit. */
  pollsWithoutLimit?: number;
}

/** Three proxies on one Redis under a host rate. */
export interface RateRun {
  proxies: number;
  /** Requests a second. */
  rate: number;
  clients: number;
  seconds: number;
  /** Requests that reached the upstream. */
  reached: number;
  /** Requests that reached the upstream in each second from the start. */
  perSecond: number[];
  busiestSecond: number;
  statuses: Record<string, number>;
}

/** One trial of the fleet-wide pause. */
export interface PauseTrial {
  /** From the 429 at the client to the second of the other proxies refusing; NaN: not within 3 s. */
  latencyMs: number;
  /** Requests that reached the upstream after the 429 (misses). */
  reached: number;
}

/** Everything the `upstream` section measured. */
export interface UpstreamFigures {
  settings: { adaptiveMs: number; pauseTrials: number };
  adaptive: AdaptiveRun[];
  rate?: RateRun;
  pause?: PauseTrial[];
}

/** The goals of the section. */
export const UPSTREAM_GOALS = {
  /** The range the effective limit should settle in. */
  limitLow: 4,
  limitHigh: 12,
  /** How long it must stay there to count as converged. */
  holdMs: 2_000,
  maxDropShare: 0.02,
  maxMedianInFlight: 8,
  minGoodputRatio: 0.8,
  minReached: 40,
  maxReached: 60,
  maxBusiestSecond: 15,
  maxPauseMs: 300,
} as const;

const G = UPSTREAM_GOALS;

/** How the section measures (the Markdown list of RESULTS.md). */
export function upstreamMethod(f: UpstreamFigures | undefined): string {
  const s = (f?.settings.adaptiveMs ?? 10_000) / 1000;
  const trials = f?.settings.pauseTrials ?? 5;
  return [
    `- Adaptive: an upstream in the benchmark's process serves 4 requests at a time (50 ms each),`,
    `queues the rest and answers 503 at once while more than 12 are in flight. 40 client loops (one`,
    "keep-alive client each, `GET` one after the other) go through dprl `--adaptive`,",
    "`--max-connections 64` and `--queue-timeout 10s` for",
    `${s} s; the same run with a static \`--max-connections 4\` (the host's capacity, same queue`,
    `timeout) gives the goodput to compare with. Once with one proxy, once with three on one Redis`,
    `(the clients round-robin over them; the static 4 is then the fleet's). The 503 share and the`,
    `in-flight count (at each arrival) are the upstream's; goodput is its 200 answers per second.`,
    "\n- Convergence: every proxy's `/api/hosts/{host}` is polled every 100 ms from the start of the",
    `client loops; the convergence time is the time of the first poll from which every poll for at`,
    `least ${
      G.holdMs / 1000
    } s is in range ("—": no such stretch before the run ended). A poll is in`,
    "range when at least one proxy shows an `effectiveLimit` and every one shown is within",
    `[${G.limitLow}, ${G.limitHigh}]. A proxy that shows none (\`null\`: it has not heard the`,
    "host's limit yet) is left out; such polls are counted in their own column.",
    "\n- Rate accuracy: three proxies on one Redis with `--host-rate 127.0.0.1:PORT=10/s`,",
    "`--reject-status 429` and `--queue-timeout 0`; 30 client loops (round-robin over the proxies)",
    `send requests one after the other for 5 s. Counted: requests that reached the upstream, and the`,
    `most in one second from the start (GCRA with a burst of one lets at most T × rate + 1 through`,
    `in T seconds).`,
    `\n- Fleet-wide pause: three proxies A, B, C on one Redis; an upstream whose first answer is 429`,
    "with `Retry-After: 30`, a fresh one (a new host) per trial. Once that answer has reached the",
    `client through A, each of B and C is sent a request every 10 ms (at most 300 polls) until it`,
    "answers 503 with `destination_unavailable` in its `Proxy-Status`; the latency is from the",
    `429's arrival to the later of the two refusals (worst of ${trials} trials). A poll that`,
    `reaches the upstream instead is a miss.`,
  ].join(" ").replaceAll(" \n", "\n");
}

function pct(x: number | undefined): string {
  return x === undefined || Number.isNaN(x) ? "—" : `${(100 * x).toFixed(1)}%`;
}

function verdict(ok: boolean | undefined): string {
  return ok === undefined ? "not measured" : ok ? "pass" : "**miss**";
}

function proxiesLabel(n: number): string {
  return n === 1 ? "1 proxy" : `${n} proxies, one Redis`;
}

/** adaptive goodput ÷ static 4 goodput with as many proxies. */
function goodputRatio(f: UpstreamFigures, proxies: number): number | undefined {
  const find = (mode: AdaptiveRun["mode"]) =>
    f.adaptive.find((r) => r.proxies === proxies && r.mode === mode);
  const a = find("adaptive"), s = find("static 4");
  return a && s && s.goodput > 0 ? a.goodput / s.goodput : undefined;
}

/** The adaptive runs, one row each. */
export function adaptiveTable(f: UpstreamFigures): string {
  const rows = f.adaptive.map((r) => {
    const ratio = r.mode === "adaptive" ? goodputRatio(f, r.proxies) : undefined;
    return [
      proxiesLabel(r.proxies),
      r.mode === "adaptive" ? "adaptive, ceiling 64" : "static 4",
      `${fmt(r.ok)} / ${fmt(r.dropped)}`,
      pct(r.dropShare),
      `${r.medianInFlight} / ${r.peakInFlight}`,
      fmt(r.goodput, 1),
      ratio === undefined ? "—" : `${ratio.toFixed(2)}×`,
      r.convergenceMs === undefined || Number.isNaN(r.convergenceMs)
        ? "—"
        : `${fmt(r.convergenceMs / 1000, 1)} s`,
      r.polls === undefined ? "—" : `${fmt(r.pollsWithoutLimit)} of ${fmt(r.polls)}`,
      r.finalLimit ?? "—",
      Object.entries(r.statuses).map(([k, v]) => `${k}: ${fmt(v)}`).join(", "),
    ];
  });
  return table(
    [
      "setup",
      "limit",
      "upstream 200 / 503",
      "503 share",
      "in flight at the upstream, median / peak",
      "goodput (200/s)",
      "goodput ÷ static 4",
      "convergence",
      "polls with a proxy showing no limit",
      "effective limit at the end (reason), per proxy",
      "client answers",
    ],
    rows,
    ["l", "l", "r", "r", "r", "r", "r", "r", "r", "l", "l"],
  );
}

function adaptiveGoals(f: UpstreamFigures): string[][] {
  const rows: string[][] = [];
  for (const proxies of [1, 3]) {
    const r = f.adaptive.find((x) => x.proxies === proxies && x.mode === "adaptive");
    const ratio = goodputRatio(f, proxies);
    const who = `adaptive, ${proxiesLabel(proxies)}`;
    rows.push(
      [
        `${who}: 503 share at the upstream`,
        pct(r?.dropShare),
        `≤ ${100 * G.maxDropShare}%`,
        verdict(r && r.dropShare <= G.maxDropShare),
      ],
      [
        `${who}: median in flight at the upstream`,
        r ? String(r.medianInFlight) : "—",
        `≤ ${G.maxMedianInFlight}`,
        verdict(r && r.medianInFlight <= G.maxMedianInFlight),
      ],
      [
        `${who}: goodput ÷ static 4`,
        ratio === undefined ? "—" : `${ratio.toFixed(2)}×`,
        `≥ ${G.minGoodputRatio}`,
        verdict(ratio === undefined ? undefined : ratio >= G.minGoodputRatio),
      ],
    );
  }
  return rows;
}

function rateAndPauseGoals(f: UpstreamFigures): string[][] {
  const rate = f.rate;
  const trials = f.pause;
  const worst = trials?.length
    ? Math.max(...trials.map((t) => (Number.isNaN(t.latencyMs) ? Infinity : t.latencyMs)))
    : undefined;
  const reached = trials?.reduce((n, t) => n + t.reached, 0);
  return [
    [
      "rate 10/s, 3 proxies, one Redis: requests that reached the upstream in 5 s",
      rate ? `${rate.reached} (per second: ${rate.perSecond.join(", ")})` : "—",
      `${G.minReached}–${G.maxReached}`,
      verdict(rate && rate.reached >= G.minReached && rate.reached <= G.maxReached),
    ],
    [
      "rate 10/s, 3 proxies, one Redis: busiest second",
      rate ? String(rate.busiestSecond) : "—",
      `≤ ${G.maxBusiestSecond}`,
      verdict(rate && rate.busiestSecond <= G.maxBusiestSecond),
    ],
    [
      `fleet-wide pause: 429 through A until B and C refuse, worst of ${trials?.length ?? "—"}`,
      worst === undefined
        ? "—"
        : `${Number.isFinite(worst) ? `${worst.toFixed(1)} ms` : "not within 3 s"} (${
          trials!.map((t) => Number.isNaN(t.latencyMs) ? "—" : t.latencyMs.toFixed(1)).join(", ")
        })`,
      `≤ ${G.maxPauseMs} ms`,
      verdict(worst === undefined ? undefined : worst <= G.maxPauseMs),
    ],
    [
      "fleet-wide pause: polls of B and C that reached the upstream (all trials)",
      reached === undefined ? "—" : String(reached),
      "0",
      verdict(reached === undefined ? undefined : reached === 0),
    ],
  ];
}

/** The section's figures against their goals. */
export function upstreamGoalsTable(f: UpstreamFigures): string {
  return table(
    ["figure", "value", "goal", ""],
    [...adaptiveGoals(f), ...rateAndPauseGoals(f)],
    ["l", "r", "l", "l"],
  );
}

/** The section's tables, or a line saying it was not measured. */
export function upstreamTables(f: UpstreamFigures | undefined): string {
  if (!f) return "Not measured.";
  const rate = f.rate
    ? `\n\nRate run: ${
      Object.entries(f.rate.statuses).map(([k, v]) => `${k}: ${fmt(v)}`).join(", ")
    } answers to the clients in ${f.rate.seconds.toFixed(1)} s.`
    : "";
  return `${adaptiveTable(f)}

${upstreamGoalsTable(f)}${rate}`;
}
