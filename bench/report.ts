/**
 * The benchmark's figures, the targets they are held to, and their rendering
 * as Markdown tables.
 *
 * @module
 */

import { type TlsFigures, tlsTable } from "./tls_cost.ts";
import {
  cpuPerRequest,
  type InTurnsFigures,
  inTurnsTable,
  least,
  middle,
  most,
  roundRatios,
} from "./in_turns.ts";
import type { Facts } from "./machine.ts";
import type { IdleMemoryResult, ThroughputResult, TunnelsResult, WrkResult } from "./measure.ts";
import { fmt, table } from "./markdown_table.ts";
import { type RedisCostFigures, redisCostTable } from "./redis_cost_table.ts";
import { type AdminFigures, adminTable } from "./admin_table.ts";
import { type UpstreamFigures, upstreamMethod, upstreamTables } from "./upstream_table.ts";

/** The row of dprl measured in turns with the bare relays (bench/run.ts). */
export const DPRL_BESIDE_BARE = "dprl, in turns with the bare relays";

/** Everything measured for one proxy (any figure may be missing on error). */
export interface ProxyFigures {
  http?: WrkResult;
  tunnels?: TunnelsResult;
  throughput?: ThroughputResult;
  memory?: IdleMemoryResult;
}

/** Outcome of one cap-accuracy burst across several distributed proxies. */
export interface CapResult {
  proxies: number;
  limit: number;
  clients: number;
  counts: Record<string, number>;
  peak: number;
}

/** All results of one run. */
export interface Results {
  date: string;
  seconds: number;
  machine: Facts;
  versions: Facts;
  settings: {
    durationS: number;
    holdTunnels: number;
    throughputMiB: number;
    throughputRuns: number;
    rounds: number;
  };
  proxies: Record<string, ProxyFigures>;
  /** Tunnel runs of the distributed section, by configuration label. */
  distributed: Record<string, TunnelsResult>;
  /** Every round's rate by figure (the tables show the best round). */
  rounds: Record<string, number[]>;
  cap: Record<string, CapResult>;
  /** dprl without and with its admin server scraped once a second (the `admin` section). */
  admin?: AdminFigures;
  /** What distributed mode costs Redis (the `distributed` section). */
  redisCost?: RedisCostFigures;
  /** Adaptive limits, request rates and fleet-wide pauses (the `upstream` section). */
  upstream?: UpstreamFigures;
  /** dprl in turns with no proxy and with goproxy-dprl (part of the `proxies` section). */
  inTurns?: InTurnsFigures;
  /** dprl with and without TLS on the proxy port, side by side (the `tls` section). */
  tls?: TlsFigures;
  /** The ratios of the RESULTS.md committed before this run, by figure. */
  previous?: Record<string, number>;
  errors: string[];
}

/** One ratio held to a target. */
export interface Ratio {
  figure: string;
  ratio: number;
  target: string;
  pass: boolean | null;
}

const DIST = {
  dprlRedis: "dprl, Redis (limit 100000)",
  dprlRedisFull: "dprl, Redis + 100,000 unrelated keys",
  goRedis: "goproxy-dprl, Redis",
  goRedisFull: "goproxy-dprl, Redis + 100,000 unrelated keys",
};

/** Labels of the distributed section's configurations. */
export const DISTRIBUTED_LABELS: typeof DIST = DIST;

/** Computes every ratio with its target. */
export function ratios(r: Results): Ratio[] {
  const p = r.proxies;
  const d = r.distributed;
  const out: Ratio[] = [];
  const add = (
    figure: string,
    a: number | undefined,
    b: number | undefined,
    op: ">=" | "<=" | "info",
    target: number,
  ): void => {
    const ratio = a !== undefined && b !== undefined && b > 0 ? a / b : NaN;
    out.push({
      figure,
      ratio,
      target: op === "info" ? "(no target)" : `${op} ${target}`,
      pass: op === "info" || Number.isNaN(ratio)
        ? null
        : op === ">="
        ? ratio >= target
        : ratio <= target,
    });
  };
  const go = p["goproxy-dprl"];
  const dp = p["dprl"];
  const bare = Math.max(
    ...Object.entries(p).filter(([name]) => name.startsWith("bare Deno relay"))
      .map(([, f]) => f.throughput?.mbPerSec ?? NaN).filter((x) => !Number.isNaN(x)),
  );
  add(
    "one tunnel MB/s, dprl ÷ the best bare Deno relay (64 KiB, 256 KiB, 1 MiB buffers)",
    (p[DPRL_BESIDE_BARE] ?? dp)?.throughput?.mbPerSec,
    Number.isFinite(bare) ? bare : undefined,
    ">=",
    1,
  );
  add("plain HTTP req/s, dprl ÷ goproxy-dprl", dp?.http?.reqPerSec, go?.http?.reqPerSec, ">=", 2.5);
  add(
    "plain HTTP req/s, dprl ÷ proxy-chain",
    dp?.http?.reqPerSec,
    p["proxy-chain"]?.http?.reqPerSec,
    ">=",
    2,
  );
  add(
    "CONNECT tunnels/s, dprl ÷ goproxy-dprl",
    dp?.tunnels?.perSec,
    go?.tunnels?.perSec,
    ">=",
    1.5,
  );
  const n = r.inTurns?.rounds.length ?? 0;
  add(
    `CONNECT tunnels/s, dprl ÷ goproxy-dprl, in turns (least of ${n} rounds)`,
    least(roundRatios(r.inTurns, (x) => x.dprlTunnels, (x) => x.goTunnels)),
    1,
    ">=",
    1.5,
  );
  add(
    `CONNECT tunnels/s, the bare Deno relay ÷ goproxy-dprl, in turns (most of ${n} rounds)`,
    most(roundRatios(r.inTurns, (x) => x.bareTunnels, (x) => x.goTunnels)),
    1,
    "info",
    0,
  );
  add(
    `plain HTTP req/s, dprl ÷ no proxy, in turns (least of ${n} rounds)`,
    least(roundRatios(r.inTurns, (x) => x.dprlHttp, (x) => x.noProxyHttp)),
    1,
    ">=",
    0.45,
  );
  add(
    `plain HTTP req/s, the bare Deno forwarder ÷ no proxy, in turns (most of ${n} rounds)`,
    most(roundRatios(r.inTurns, (x) => x.bareHttp, (x) => x.noProxyHttp)),
    1,
    "info",
    0,
  );
  add(
    "CONNECT tunnels/s, dprl ÷ tinyproxy",
    dp?.tunnels?.perSec,
    p["tinyproxy"]?.tunnels?.perSec,
    ">=",
    1.1,
  );
  add(
    "one tunnel MB/s, dprl ÷ goproxy-dprl",
    dp?.throughput?.mbPerSec,
    go?.throughput?.mbPerSec,
    ">=",
    1.1,
  );
  add(
    "memory per idle tunnel, dprl ÷ goproxy-dprl",
    dp?.memory?.perTunnelKiB,
    go?.memory?.perTunnelKiB,
    "<=",
    1,
  );
  add(
    "memory per idle tunnel, dprl ÷ proxy-chain",
    dp?.memory?.perTunnelKiB,
    p["proxy-chain"]?.memory?.perTunnelKiB,
    "<=",
    1,
  );
  const side = r.redisCost?.sideBySide ?? [];
  add(
    "distributed cost: dprl tunnels/s, Redis ÷ in memory (side by side, all rounds)",
    side.length ? side.reduce((n, x) => n + x.redis, 0) : undefined,
    side.length ? side.reduce((n, x) => n + x.memory, 0) : undefined,
    ">=",
    0.9,
  );
  const many = r.redisCost?.manyHosts;
  add(
    "distributed cost over 2,000 hosts round-robin: dprl tunnels/s, Redis ÷ in memory (side by side)",
    many?.redis,
    many?.memory,
    ">=",
    0.9,
  );
  add(
    "Redis size: dprl tunnels/s, 100k keys ÷ empty",
    d[DIST.dprlRedisFull]?.perSec,
    d[DIST.dprlRedis]?.perSec,
    "info",
    0,
  );
  const full = r.redisCost?.sideBySideFull;
  add(
    "Redis size: dprl tunnels/s, Redis holding 100k unrelated keys ÷ in memory (side by side)",
    full?.redis,
    full?.memory,
    ">=",
    0.9,
  );
  add(
    "Redis size: goproxy-dprl tunnels/s, 100k keys ÷ empty",
    d[DIST.goRedisFull]?.perSec,
    d[DIST.goRedis]?.perSec,
    "info",
    0,
  );
  add(
    "distributed cost: goproxy-dprl tunnels/s, Redis ÷ in memory",
    d[DIST.goRedis]?.perSec,
    go?.tunnels?.perSec,
    "info",
    0,
  );
  const a = r.admin;
  const turns = `in turns (median of ${a?.rounds.length ?? 0} rounds)`;
  add(
    `control plane: plain HTTP req/s, admin scraped every 1 s ÷ no admin, ${turns}`,
    middle(roundRatios(a, (x) => x.httpOn, (x) => x.httpOff)),
    1,
    ">=",
    0.95,
  );
  add(
    `control plane: CONNECT tunnels/s, admin scraped every 1 s ÷ no admin, ${turns}`,
    middle(roundRatios(a, (x) => x.tunnelsOn, (x) => x.tunnelsOff)),
    1,
    ">=",
    0.95,
  );
  return out;
}

/** Whether a cap run admitted exactly `limit` requests with peak `limit`. */
export function capExact(c: CapResult): boolean {
  return (c.counts["200"] ?? 0) === c.limit && c.peak === c.limit;
}

function cpu(
  x: { cpuUsPerOp?: number; cpuUserUsPerOp?: number; cpuCores?: number } | undefined,
): string {
  if (x?.cpuUsPerOp === undefined) return "—";
  const user = x.cpuUserUsPerOp ?? NaN;
  return `${fmt(x.cpuUsPerOp)} = ${fmt(user)} + ${fmt(x.cpuUsPerOp - user)} (${
    fmt(x.cpuCores, 2)
  })`;
}

/** The per-proxy raw figures table. */
export function rawTable(r: Results): string {
  const rows = Object.entries(r.proxies).map(([name, f]) => [
    name,
    fmt(f.http?.reqPerSec),
    fmt(f.http?.p99Ms, 2),
    f.http ? `${fmt(f.http.non2xx)} / ${fmt(f.http.socketErrors)}` : "—",
    cpu(f.http),
    fmt(f.tunnels?.perSec),
    fmt(f.tunnels?.p99Ms, 2),
    f.tunnels ? fmt(f.tunnels.fail) : "—",
    cpu(f.tunnels),
    fmt(f.throughput?.mbPerSec),
    fmt(f.memory?.perTunnelKiB, 1),
    f.memory
      ? `${fmt(f.memory.tunnels)}${f.memory.failed ? ` (+${f.memory.failed} failed)` : ""}`
      : "—",
    f.memory ? `${fmt(f.memory.baseKiB / 1024, 1)} → ${fmt(f.memory.heldKiB / 1024, 1)}` : "—",
  ]);
  return table(
    [
      "proxy",
      "HTTP req/s",
      "HTTP p99 ms",
      "HTTP non-2xx / socket errors",
      "HTTP: proxy CPU µs/req = user + sys (cores)",
      "tunnels/s",
      "tunnel p99 ms",
      "tunnel failures",
      "tunnels: proxy CPU µs/tunnel = user + sys (cores)",
      "one tunnel MB/s",
      "KiB per idle tunnel",
      "tunnels held",
      "RSS MiB idle → held",
    ],
    rows,
    ["l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r"],
  );
}

/** The distributed section's table. */
export function distributedTable(r: Results): string {
  const rows = Object.entries(r.distributed).map(([label, t]) => [
    label,
    fmt(t.perSec),
    fmt(t.p99Ms, 2),
    fmt(t.fail),
    cpu(t),
  ]);
  return table(
    [
      "configuration",
      "tunnels/s",
      "p99 ms",
      "failures",
      "proxy CPU µs/tunnel = user + sys (cores)",
    ],
    rows,
    ["l", "r", "r", "r", "r"],
  );
}

/** Every round's rate, to show how much the machine's other load moved them. */
export function roundsTable(r: Results): string {
  const n = r.settings.rounds;
  const rows = Object.entries(r.rounds).map(([label, xs]) => [
    label,
    ...Array.from({ length: n }, (_, i) => fmt(xs[i])),
  ]);
  return table(
    ["figure", ...Array.from({ length: n }, (_, i) => `round ${i + 1}`)],
    rows,
    ["l", ...Array.from({ length: n }, () => "r")],
  );
}

/** The cap-accuracy table. */
export function capTable(r: Results): string {
  const rows = Object.entries(r.cap).map(([name, c]) => [
    name,
    `${c.proxies} proxies, one Redis`,
    String(c.limit),
    String(c.clients),
    Object.entries(c.counts).map(([k, v]) => `${k}: ${v}`).join(", "),
    String(c.peak),
    capExact(c) ? "exact" : "NOT exact",
  ]);
  return table(
    ["proxy", "setup", "limit", "clients", "statuses", "upstream peak", "result"],
    rows,
    ["l", "l", "r", "r", "l", "r", "l"],
  );
}

/** The ratios table, with the cap-accuracy verdict as its last row. */
export function ratioTable(r: Results): string {
  const before = (figure: string) => {
    const p = r.previous?.[figure];
    return p === undefined ? "—" : `${p.toFixed(2)}×`;
  };
  const rows = ratios(r).map((x) => [
    x.figure,
    Number.isNaN(x.ratio) ? "—" : `${x.ratio.toFixed(2)}×`,
    before(x.figure),
    x.target,
    Number.isNaN(x.ratio)
      ? "not measured"
      : x.pass === null
      ? "info"
      : x.pass
      ? "pass"
      : "**miss**",
  ]);
  const cap = r.cap["dprl"];
  rows.push([
    "cap accuracy: dprl, 3 proxies sharing Redis",
    cap ? `${cap.counts["200"] ?? 0} admitted, peak ${cap.peak}` : "—",
    "",
    cap ? `= ${cap.limit} (exact)` : "= limit (exact)",
    !cap ? "not measured" : capExact(cap) ? "pass" : "**miss**",
  ]);
  const cpu = cpuPerRequest(r.inTurns);
  rows.push([
    "proxy CPU per plain-HTTP request, dprl, in turns (median of the rounds)",
    cpu === undefined ? "—" : `${cpu.toFixed(0)} µs`,
    "",
    "< 45 µs",
    cpu === undefined ? "not measured" : cpu < 45 ? "pass" : "**miss**",
  ]);
  const scrape = r.admin?.scrape500;
  rows.push([
    `control plane: one /metrics scrape with ${scrape?.hostSeries ?? 500} host series (p95)`,
    scrape ? `${scrape.p95Ms.toFixed(1)} ms` : "—",
    "",
    "< 50 ms",
    !scrape ? "not measured" : scrape.p95Ms < 50 ? "pass" : "**miss**",
  ]);
  return table(
    ["figure", "ratio", "last committed", "target", "result"],
    rows,
    ["l", "r", "r", "l", "l"],
  );
}

function factsTable(f: Facts): string {
  return table(["", ""], f.map(([k, v]) => [k, v.replaceAll("|", "\\|")]), ["l", "l"]);
}

/** The whole RESULTS.md. */
export function markdown(r: Results): string {
  const s = r.settings;
  return `# dprl benchmark results

Written by \`deno task bench\` (\`bench/run.ts\`) on ${r.date}; the run took
${Math.round(r.seconds)} s. Every proxy ran as its own process, one at a time,
on loopback, under the same load in this one run. Ratios matter more than the
absolute figures, which depend on the machine.

## Machine

${factsTable(r.machine)}

## Versions

${factsTable(r.versions)}

## Method

- Rates (plain HTTP, tunnels, distributed) are measured in ${s.rounds} round(s);
  each round measures every proxy on a fresh process, in alternating order, and
  the best round counts (other load on a shared machine only ever lowers a
  rate). The proxy's CPU time (user + system, all threads, from
  /proc/PID/stat) per request or tunnel is shown beside each rate, split
  into user and kernel time: it hardly depends on other load, and "cores"
  says how much CPU the proxy used. On a 2-core machine the load generator
  and the upstream share the CPU with the proxy, so a proxy's rate follows
  its CPU per operation, not only its design.
- Upstream: \`loadgen upstream\` (shared/tools/loadgen), a fresh one per proxy.
- Plain HTTP: \`wrk -t2 -c32 -d${s.durationS}s --latency\` sending absolute-form
  \`GET http://127.0.0.1:UP/\` (12-byte body) through the proxy, after a 2 s warm-up.
  "no proxy" is wrk straight at the upstream. tinyproxy closes the client
  connection after every response, which wrk counts as a socket (read) error
  per request; its requests are still answered and counted.
- CONNECT tunnels: \`loadgen tunnels PROXY UP 32 ${s.durationS}s\` (CONNECT, one GET,
  close, in a loop), after a 2 s warm-up.
- One tunnel: curl \`--proxytunnel\` downloading \`/big?mb=${s.throughputMiB}\`
  (${s.throughputMiB} MiB) through one CONNECT tunnel, median of ${s.throughputRuns}
  run(s); MB = 10^6 bytes. "no proxy" is curl straight at the upstream (the
  client's own ceiling). The bare Deno relays (\`bench/bare_relay.ts\`, one
  buffer of 64 KiB, 256 KiB or 1 MiB, read then write) and a second dprl take
  the same download in turns, one run each per round for five rounds, so that the ratio of
  dprl to the best of them compares the same moments of the machine; that
  dprl is the row "${DPRL_BESIDE_BARE}".
- Idle tunnels: VmRSS of the proxy process (for dprl the \`deno\` process) on a
  fresh start, after a short warm-up, then while \`loadgen hold\` keeps
  **${s.holdTunnels.toLocaleString("en-US")} CONNECT tunnels** open and idle,
  each read after 3 s of quiet; (held − idle) ÷ tunnels. ${
    s.holdTunnels.toLocaleString("en-US")
  }, not 10,000:
  a process may hold 20,000 files and each tunnel is two sockets; tinyproxy's
  peer config also stops at MaxClients 4096, and every proxy gets the same count.
- Limits: dprl \`--max-connections 0\`, goproxy-dprl \`-max 0\` (unlimited),
  tinyproxy and proxy-chain have none. Distributed runs use limit 100000 so the
  limiter (and Redis) is on every connection's path; Redis is a fresh
  \`redis-server\` on a free port; 100,000 unrelated keys are written with one
  pipeline of SETs.
- Control plane: one dprl without and one with \`--admin-port\`, same loads
  as above, in turns (${r.admin?.seconds ?? "—"} s each, the order reversed every
  other round; the ratio is the median of the rounds'); both first get
  statistics for 500 hosts (one request each to 500 closed loopback ports), so
  that every scrape renders 500 host series. With the admin server,
  \`/metrics\` is fetched over HTTP once a second during its loads, as
  Prometheus would; the scrape time is measured back to back on the idle proxy
  (30 scrapes).
- Cap accuracy: 3 proxies sharing one Redis, per-host limit 4; one
  \`loadgen burst\` of 20 clients per proxy at once (\`GET /slow?ms=300\`);
  admitted = 200 responses; peak = the upstream's \`/peak\`.

## Raw figures per proxy

${rawTable(r)}

## In turns

dprl beside wrk straight at the upstream and the bare Deno forwarder
(\`bench/bare_relay.ts --forward\`, which pipes each connection to the upstream
and parses nothing: the floor of plain-HTTP forwarding in Deno), plain HTTP as
above, and beside goproxy-dprl and the bare Deno CONNECT relay
(\`bench/bare_relay.ts\`, which reads the head, dials and pipes: the floor of a
tunnel in Deno), tunnels as above; ${r.inTurns?.seconds ?? "—"} s
each, one process each for the whole section, one after the other in every
round (the order reversed every other round): each round's ratio compares
moments seconds apart. The goals that hold "in every round" are read here.

${inTurnsTable(r.inTurns)}

## Distributed (Redis)

${distributedTable(r)}

${redisCostTable(r.redisCost)}

## Cap accuracy

${capTable(r)}

## Control plane

${adminTable(r.admin)}

## Upstream-aware limits

${upstreamMethod(r.upstream)}

${upstreamTables(r.upstream)}

## HTTPS to the proxy

Two dprl processes, one with \`--tls-cert\`/\`--tls-key\` (an ECDSA P-256 certificate) and one
without, side by side in alternating half-second slices, driven by the same Deno client
(\`bench/tls_cost.ts\`): a new connection per tunnel, so each TLS tunnel pays a handshake on both
sides of a 2-core machine; the requests go on 32 keep-alive connections.

${tlsTable(r.tls)}

## Every round

The tables above use each figure's best round; this is every round.

${roundsTable(r)}

## Ratios and targets

${ratioTable(r)}
${
    r.errors.length
      ? `\n## Errors during the run\n\n${
        r.errors.map((e) => `- ${e.replaceAll("\n", " ")}`).join("\n")
      }\n`
      : ""
  }`;
}
