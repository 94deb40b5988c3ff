/**
 * dprl beside what two of its goals compare it with, in turns: plain HTTP
 * through dprl and straight at the upstream, and CONNECT tunnels through
 * dprl and through goproxy-dprl. Each also goes through the bare Deno relay
 * of its kind (`bench/bare_relay.ts`: `--forward` for plain HTTP, CONNECT for
 * tunnels), the floor of each in Deno. The sides of each pair run one after
 * the other on the same processes, round after round (who goes first
 * alternates), so that each round's ratio compares two moments seconds
 * apart, not two runs minutes apart on a shared machine.
 *
 * @module
 */

import { median, type Tools, tunnels, wrk } from "./measure.ts";
import { cpuDuring } from "./process.ts";
import { fmt, table } from "./markdown_table.ts";
import { Scraper } from "./admin_cost.ts";
import type { AdminFigures, AdminRound } from "./admin_table.ts";

/** One round: each side of each pair once. */
export interface TurnRound {
  /** wrk straight at the upstream, req/s. */
  noProxyHttp: number;
  /** wrk through dprl, req/s. */
  dprlHttp: number;
  /** dprl's CPU per request, µs. */
  dprlHttpCpuUs: number;
  /** wrk through the bare Deno forwarder (`bench/bare_relay.ts --forward`), req/s: the floor. */
  bareHttp: number;
  /** The bare forwarder's CPU per request, µs. */
  bareHttpCpuUs: number;
  /** Tunnels/s through dprl. */
  dprlTunnels: number;
  /** Tunnels/s through goproxy-dprl. */
  goTunnels: number;
  /** dprl's CPU per tunnel, µs. */
  dprlTunnelCpuUs: number;
  /** goproxy-dprl's CPU per tunnel, µs. */
  goTunnelCpuUs: number;
  /** Tunnels/s through the bare Deno CONNECT relay (`bench/bare_relay.ts`): the floor. */
  bareTunnels: number;
  /** The bare CONNECT relay's CPU per tunnel, µs. */
  bareTunnelCpuUs: number;
}

/** The in-turns section's figures. */
export interface InTurnsFigures {
  /** Seconds of each run. */
  seconds: number;
  rounds: TurnRound[];
}

/** A proxy already running. */
export interface RunningProxy {
  port: number;
  pid: number;
}

/** Options of {@linkcode measureInTurns}. */
export interface InTurnsOptions {
  tools: Tools;
  upstreamPort: number;
  dprl: RunningProxy;
  goproxy: RunningProxy;
  /** The bare Deno forwarder to the upstream. */
  bare: RunningProxy;
  /** The bare Deno CONNECT relay. */
  bareTunnel: RunningProxy;
  rounds: number;
  seconds: number;
  log: (msg: string) => void;
}

/** CPU µs per operation of `pid` while `fn` runs. */
async function perOp<T>(
  pid: number | null,
  fn: () => Promise<T>,
  ops: (r: T) => number,
): Promise<{ r: T; cpuUs: number }> {
  if (pid === null) return { r: await fn(), cpuUs: NaN };
  const { r, used } = await cpuDuring(pid, fn);
  return { r, cpuUs: ops(r) > 0 ? (used * 1e6) / ops(r) : NaN };
}

/** Runs `runs` in the order of the round (reversed every other round); results in their order. */
async function inOrder<T>(round: number, ...runs: (() => Promise<T>)[]): Promise<T[]> {
  const out: T[] = new Array(runs.length);
  const order = runs.map((_, i) => i);
  if (round % 2) order.reverse();
  for (const i of order) out[i] = await runs[i]();
  return out;
}

/** Measures both pairs in turns, after a warm-up of each proxy. */
export async function measureInTurns(o: InTurnsOptions): Promise<InTurnsFigures> {
  const { tools, upstreamPort: up, dprl, goproxy, bare, bareTunnel } = o;
  await wrk(tools, dprl.port, up, 2);
  await wrk(tools, bare.port, up, 2);
  await tunnels(tools, dprl.port, up, 2);
  await tunnels(tools, goproxy.port, up, 2);
  await tunnels(tools, bareTunnel.port, up, 2);
  const rounds: TurnRound[] = [];
  for (let i = 0; i < o.rounds; i++) {
    o.log(`dprl in turns with no proxy and with goproxy-dprl, round ${i + 1}/${o.rounds}`);
    const http = (p: RunningProxy | null) => () =>
      perOp(p?.pid ?? null, () => wrk(tools, p?.port ?? null, up, o.seconds), (r) => r.requests);
    const [direct, viaBare, viaDprl] = await inOrder(i, http(null), http(bare), http(dprl));
    const tunnel = (p: RunningProxy) => () =>
      perOp(p.pid, () => tunnels(tools, p.port, up, o.seconds), (r) => r.ok);
    const [dprlT, goT, bareT] = await inOrder(i, tunnel(dprl), tunnel(goproxy), tunnel(bareTunnel));
    rounds.push({
      noProxyHttp: direct.r.reqPerSec,
      dprlHttp: viaDprl.r.reqPerSec,
      dprlHttpCpuUs: viaDprl.cpuUs,
      bareHttp: viaBare.r.reqPerSec,
      bareHttpCpuUs: viaBare.cpuUs,
      dprlTunnels: dprlT.r.perSec,
      goTunnels: goT.r.perSec,
      dprlTunnelCpuUs: dprlT.cpuUs,
      goTunnelCpuUs: goT.cpuUs,
      bareTunnels: bareT.r.perSec,
      bareTunnelCpuUs: bareT.cpuUs,
    });
  }
  return { seconds: o.seconds, rounds };
}

/** Options of {@linkcode measureAdminInTurns}. */
export interface AdminInTurnsOptions {
  tools: Tools;
  upstreamPort: number;
  /** dprl without an admin server. */
  off: RunningProxy;
  /** dprl with its admin server on `adminPort`, scraped once a second while its loads run. */
  on: RunningProxy & { adminPort: number };
  rounds: number;
  seconds: number;
  log: (msg: string) => void;
}

/**
 * The control plane's cost in turns: plain HTTP, then tunnels, through dprl
 * without and with its admin server (scraped once a second while its own
 * loads run), one after the other, the order reversed every other round.
 */
export async function measureAdminInTurns(o: AdminInTurnsOptions): Promise<AdminFigures> {
  const { tools, upstreamPort: up, off, on } = o;
  const scraper = new Scraper(on.adminPort);
  for (const p of [off, on]) {
    await wrk(tools, p.port, up, 2);
    await tunnels(tools, p.port, up, 2);
  }
  const rounds: AdminRound[] = [];
  for (let i = 0; i < o.rounds; i++) {
    o.log(`dprl without and with its admin server, in turns, round ${i + 1}/${o.rounds}`);
    const scraped = <T>(p: RunningProxy, fn: () => Promise<T>) => () =>
      p === on ? scraper.during(fn) : fn();
    const http = (p: RunningProxy) =>
      scraped(p, () => perOp(p.pid, () => wrk(tools, p.port, up, o.seconds), (r) => r.requests));
    const tunnel = (p: RunningProxy) =>
      scraped(p, () => perOp(p.pid, () => tunnels(tools, p.port, up, o.seconds), (r) => r.ok));
    const [httpOff, httpOn] = await inOrder(i, http(off), http(on));
    const [tunnelsOff, tunnelsOn] = await inOrder(i, tunnel(off), tunnel(on));
    rounds.push({
      httpOff: httpOff.r.reqPerSec,
      httpOn: httpOn.r.reqPerSec,
      tunnelsOff: tunnelsOff.r.perSec,
      tunnelsOn: tunnelsOn.r.perSec,
      httpCpuOff: httpOff.cpuUs,
      httpCpuOn: httpOn.cpuUs,
      tunnelCpuOff: tunnelsOff.cpuUs,
      tunnelCpuOn: tunnelsOn.cpuUs,
    });
  }
  const scrapes = scraper.stats();
  if (scrapes.failed > 0) throw new Error(`${scrapes.failed} scrape(s) failed`);
  return { seconds: o.seconds, rounds, scrapesUnderLoad: scrapes };
}

/** The ratio `a ÷ b` of every round. */
export function roundRatios<R>(
  f: { rounds: R[] } | undefined,
  a: (r: R) => number,
  b: (r: R) => number,
): number[] {
  return f?.rounds.map((r) => a(r) / b(r)) ?? [];
}

/** The least of `xs` (the goals hold in every round), or `undefined` when empty. */
export function least(xs: number[]): number | undefined {
  return xs.length ? Math.min(...xs) : undefined;
}

/** The most of `xs`, or `undefined` when empty. */
export function most(xs: number[]): number | undefined {
  return xs.length ? Math.max(...xs) : undefined;
}

/** The median of `xs`, or `undefined` when empty. */
export function middle(xs: number[]): number | undefined {
  return xs.length ? median(xs) : undefined;
}

/** dprl's CPU per request, µs: the median of the rounds. */
export function cpuPerRequest(f: InTurnsFigures | undefined): number | undefined {
  return middle(f?.rounds.map((r) => r.dprlHttpCpuUs) ?? []);
}

/** The section's table: every round. */
export function inTurnsTable(f: InTurnsFigures | undefined): string {
  if (!f?.rounds.length) return "Not measured.";
  return table(
    [
      "round",
      "plain HTTP req/s: no proxy",
      "dprl",
      "dprl ÷ no proxy",
      "dprl CPU µs/req",
      "bare Deno forwarder ÷ no proxy (CPU µs/req)",
      "tunnels/s: dprl",
      "goproxy-dprl",
      "dprl ÷ goproxy-dprl",
      "CPU µs/tunnel: dprl / goproxy-dprl",
      "bare Deno relay ÷ goproxy-dprl (CPU µs/tunnel)",
    ],
    f.rounds.map((r, i) => [
      String(i + 1),
      fmt(r.noProxyHttp),
      fmt(r.dprlHttp),
      `${fmt(r.dprlHttp / r.noProxyHttp, 2)}×`,
      fmt(r.dprlHttpCpuUs),
      `${fmt(r.bareHttp / r.noProxyHttp, 2)}× (${fmt(r.bareHttpCpuUs)})`,
      fmt(r.dprlTunnels),
      fmt(r.goTunnels),
      `${fmt(r.dprlTunnels / r.goTunnels, 2)}×`,
      `${fmt(r.dprlTunnelCpuUs)} / ${fmt(r.goTunnelCpuUs)}`,
      `${fmt(r.bareTunnels / r.goTunnels, 2)}× (${fmt(r.bareTunnelCpuUs)})`,
    ]),
    ["r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r"],
  );
}
