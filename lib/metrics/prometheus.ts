/**
 * Renders a proxy's metrics in the Prometheus text exposition format 0.0.4,
 * at scrape time, from the plain counters of {@linkcode ProxyStats} and the
 * pool's current state. Nothing is computed on the hot path.
 *
 * @module
 */

import {
  type HostSummary,
  type ParentView,
  summarizeHosts,
  type UpstreamHostView,
} from "./host_summary.ts";
import {
  type Histogram,
  OTHER_HOST,
  type ProxyStats,
  REFUSAL_REASONS,
  type RefusalReason,
  REQUEST_KINDS,
} from "./proxy_stats.ts";

/** The content type of the Prometheus text format. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** The inputs of {@linkcode renderPrometheus}. */
export interface PrometheusInput {
  /** The process's statistics. */
  stats: ProxyStats;
  /** The hosts the upstream pool holds connections to now. */
  hosts: Iterable<UpstreamHostView>;
  /** The limit that applies to a host key. */
  limitFor: (host: string) => number;
  /** The limit of hosts without an override. */
  defaultLimit: number;
  /** dprl's version, for `dprl_build_info`. */
  version: string;
  /** When the process started, in milliseconds since the epoch. */
  startedAt: number;
  /** Whether Redis answers; `null` when the limiter is in memory. */
  redisUp: boolean | null;
  /** Whether fleet-wide counts are reported (distributed mode). */
  distributed: boolean;
  /** Most hosts given their own series; the rest are folded into `host="_other"`. */
  maxHosts: number;
  /** The parent proxies, by origin (never their credentials). */
  parents?: readonly ParentView[];
}

/** Open connections and back-off of each parent proxy. */
function parentMetrics(out: string[], parents: readonly ParentView[]): void {
  if (parents.length === 0) return;
  head(out, "dprl_parent_open_connections", "gauge", "Connections open through a parent proxy.");
  for (const p of parents) {
    out.push(`dprl_parent_open_connections{parent="${escapeLabel(p.url)}"} ${p.open}`);
  }
  head(out, "dprl_parent_backed_off", "gauge", "Whether a parent proxy is skipped (1) or not.");
  for (const p of parents) {
    out.push(`dprl_parent_backed_off{parent="${escapeLabel(p.url)}"} ${p.backedOffUntil ? 1 : 0}`);
  }
}

/**
 * Renders every dprl metric. Per-host series exist for the `maxHosts`
 * busiest hosts (by open plus admitted connections); the others are summed
 * under `host="_other"`.
 *
 * @example
 * ```ts
 * import { ProxyStats } from "./proxy_stats.ts";
 * const text = renderPrometheus({
 *   stats: new ProxyStats(),
 *   hosts: [{ host: "example.com", open: 2, idle: 1 }],
 *   limitFor: () => 10,
 *   defaultLimit: 10,
 *   version: "0.1.0",
 *   startedAt: Date.now(),
 *   redisUp: null,
 *   distributed: false,
 *   maxHosts: 500,
 * });
 * ```
 */
export function renderPrometheus(input: PrometheusInput): string {
  const { stats } = input;
  const rows = foldHosts(
    summarizeHosts({ stats: stats.hosts(), hosts: input.hosts, limitFor: input.limitFor }),
    input.maxHosts,
  );
  const out: string[] = [];
  hostMetrics(out, rows, input);
  processMetrics(out, input);
  out.push("");
  return out.join("\n");
}

/** The per-host series: connections, queues, limits, then the counters. */
function hostMetrics(out: string[], rows: MetricRow[], input: PrometheusInput): void {
  const labels = rows.map((row) => `host="${escapeLabel(row.host)}"`);

  head(
    out,
    "dprl_upstream_connections",
    "gauge",
    "Upstream connections open from this process, idle pooled ones included.",
  );
  rows.forEach((row, i) => out.push(`dprl_upstream_connections{${labels[i]}} ${row.open}`));

  head(
    out,
    "dprl_upstream_connections_idle",
    "gauge",
    "Idle pooled upstream connections of this process.",
  );
  rows.forEach((row, i) => out.push(`dprl_upstream_connections_idle{${labels[i]}} ${row.idle}`));

  head(out, "dprl_queued", "gauge", "Requests of this process waiting for a slot of a host.");
  rows.forEach((row, i) => out.push(`dprl_queued{${labels[i]}} ${row.queued}`));

  head(
    out,
    "dprl_host_paused_until_seconds",
    "gauge",
    "When the pause a host asked for with Retry-After ends (Unix time), while it runs.",
  );
  rows.forEach((row, i) => {
    if (row.pausedUntil === undefined) return;
    out.push(`dprl_host_paused_until_seconds{${labels[i]}} ${(row.pausedUntil / 1000).toFixed(3)}`);
  });

  head(
    out,
    "dprl_host_effective_limit",
    "gauge",
    "The limit in force of a host whose limit adapts, with the reason of its last change.",
  );
  rows.forEach((row, i) => {
    if (row.adaptive === undefined) return;
    const reason = escapeLabel(row.adaptive.reason);
    out.push(`dprl_host_effective_limit{${labels[i]},reason="${reason}"} ${row.adaptive.limit}`);
  });

  if (input.distributed) {
    head(
      out,
      "dprl_fleet_upstream_connections",
      "gauge",
      "Upstream connections open over every live worker of the fleet.",
    );
    rows.forEach((row, i) => {
      if (row.fleetOpen !== undefined) {
        out.push(`dprl_fleet_upstream_connections{${labels[i]}} ${row.fleetOpen}`);
      }
    });
  }

  head(out, "dprl_host_limit", "gauge", "Connection limit of a host (0 = unlimited).");
  rows.forEach((row, i) => {
    if (row.host !== OTHER_HOST) out.push(`dprl_host_limit{${labels[i]}} ${limitValue(row.limit)}`);
  });

  head(
    out,
    "dprl_default_host_limit",
    "gauge",
    "Connection limit of hosts without an override (0 = unlimited).",
  );
  out.push(`dprl_default_host_limit ${limitValue(input.defaultLimit)}`);

  hostCounters(out, rows, labels);
}

/** The per-host counters: admissions, refusals by reason, upstream errors by token. */
function hostCounters(out: string[], rows: MetricRow[], labels: string[]): void {
  head(
    out,
    "dprl_connections_admitted_total",
    "counter",
    "Upstream connections admitted by the limiter.",
  );
  rows.forEach((row, i) =>
    out.push(`dprl_connections_admitted_total{${labels[i]}} ${row.admitted}`)
  );

  head(
    out,
    "dprl_connections_refused_total",
    "counter",
    "Upstream connections refused, by reason.",
  );
  rows.forEach((row, i) => {
    for (const reason of REFUSAL_REASONS) {
      const n = row.refused[reason];
      if (n > 0 || reason === "limit") {
        out.push(`dprl_connections_refused_total{${labels[i]},reason="${reason}"} ${n}`);
      }
    }
  });

  head(
    out,
    "dprl_upstream_errors_total",
    "counter",
    "Upstream failures, by Proxy-Status error token.",
  );
  rows.forEach((row, i) => {
    for (const [token, n] of row.errors) {
      out.push(`dprl_upstream_errors_total{${labels[i]},error="${escapeLabel(token)}"} ${n}`);
    }
  });
}

/** The process's series: requests, client errors, bytes, histograms, Redis, reloads, build. */
function processMetrics(out: string[], input: PrometheusInput): void {
  const { stats } = input;
  head(out, "dprl_requests_total", "counter", "Client requests, by kind.");
  for (const kind of REQUEST_KINDS) {
    out.push(`dprl_requests_total{kind="${kind}"} ${stats.requests[kind]}`);
  }

  head(
    out,
    "dprl_client_errors_total",
    "counter",
    "Error responses sent for bad client input, by status.",
  );
  for (const [status, n] of [...stats.clientErrors].sort((a, b) => a[0] - b[0])) {
    out.push(`dprl_client_errors_total{status="${status}"} ${n}`);
  }

  head(out, "dprl_client_connections", "gauge", "Client connections open now.");
  out.push(`dprl_client_connections ${stats.clientConnections}`);

  head(
    out,
    "dprl_bytes_relayed_total",
    "counter",
    "Bytes relayed, towards upstreams and towards clients.",
  );
  out.push(`dprl_bytes_relayed_total{direction="upstream"} ${stats.bytesRelayed.upstream}`);
  out.push(`dprl_bytes_relayed_total{direction="downstream"} ${stats.bytesRelayed.downstream}`);

  histogram(
    out,
    "dprl_connect_duration_seconds",
    "Time to open an upstream connection.",
    stats.connectDuration,
  );

  histogram(
    out,
    "dprl_queue_wait_seconds",
    "Time requests waited in line for a slot before they were served.",
    stats.queueWait,
  );

  if (input.redisUp !== null) {
    head(out, "dprl_redis_up", "gauge", "Whether the limiter reaches Redis (1) or not (0).");
    out.push(`dprl_redis_up ${input.redisUp ? 1 : 0}`);
    histogram(
      out,
      "dprl_redis_call_duration_seconds",
      "Time of limiter calls to Redis.",
      stats.redisCallDuration,
    );
  }

  parentMetrics(out, input.parents ?? []);
  eventMetrics(out, stats);

  head(out, "dprl_build_info", "gauge", "Always 1; the version in a label.");
  out.push(`dprl_build_info{version="${escapeLabel(input.version)}"} 1`);

  head(
    out,
    "process_start_time_seconds",
    "gauge",
    "Start time of the process since the Unix epoch, in seconds.",
  );
  out.push(`process_start_time_seconds ${Math.floor(input.startedAt / 1000)}`);
}

/** Counters of events: pauses hosts asked for, reloads of the config file. */
function eventMetrics(out: string[], stats: ProxyStats): void {
  head(
    out,
    "dprl_upstream_pauses_total",
    "counter",
    "Pauses a host asked for with Retry-After on a 429 or 503, by status.",
  );
  for (const [status, n] of [...stats.pauses].sort((a, b) => a[0] - b[0])) {
    out.push(`dprl_upstream_pauses_total{status="${status}"} ${n}`);
  }
  head(
    out,
    "dprl_config_reloads_total",
    "counter",
    "Reloads of the config file, by result (error: the old rules stayed).",
  );
  out.push(`dprl_config_reloads_total{result="ok"} ${stats.configReloads.ok}`);
  out.push(`dprl_config_reloads_total{result="error"} ${stats.configReloads.error}`);
  head(
    out,
    "dprl_tls_handshake_failures_total",
    "counter",
    "TLS handshakes on the proxy port that failed or took too long (nothing was proxied).",
  );
  out.push(`dprl_tls_handshake_failures_total ${stats.tlsHandshakeFailures}`);
  head(
    out,
    "dprl_idle_collections_total",
    "counter",
    "Full garbage collections run once the proxy fell quiet after a busy spell.",
  );
  out.push(`dprl_idle_collections_total ${stats.idleCollections}`);
}

/**
 * Escapes a label value: backslash, double quote and line feed.
 *
 * @example
 * ```ts
 * escapeLabel('a"b\\c'); // 'a\\"b\\\\c'
 * ```
 */
export function escapeLabel(value: string): string {
  return /[\\"\n]/.test(value)
    ? value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n")
    : value;
}

interface MetricRow {
  host: string;
  open: number;
  idle: number;
  queued: number;
  fleetOpen?: number;
  pausedUntil?: number;
  adaptive?: { limit: number; reason: string };
  limit: number;
  admitted: number;
  refused: Record<RefusalReason, number>;
  errors: Map<string, number>;
}

/** Keeps the `max` busiest rows and sums the rest (and any `_other` record) into `_other`. */
function foldHosts(rows: HostSummary[], max: number): MetricRow[] {
  const kept: MetricRow[] = [];
  let other: MetricRow | undefined;
  for (const row of rows) {
    const metric = toMetricRow(row);
    if (kept.length < max && row.host !== OTHER_HOST) {
      kept.push(metric);
      continue;
    }
    if (other === undefined) {
      other = {
        ...metric,
        host: OTHER_HOST,
        refused: { ...metric.refused },
        errors: new Map(metric.errors),
      };
      continue;
    }
    other.open += metric.open;
    other.idle += metric.idle;
    other.queued += metric.queued;
    if (metric.fleetOpen !== undefined) other.fleetOpen = (other.fleetOpen ?? 0) + metric.fleetOpen;
    other.admitted += metric.admitted;
    for (const reason of REFUSAL_REASONS) other.refused[reason] += metric.refused[reason];
    for (const [token, n] of metric.errors) {
      other.errors.set(token, (other.errors.get(token) ?? 0) + n);
    }
  }
  if (other !== undefined) kept.push(other);
  return kept;
}

const NO_REFUSALS: Record<RefusalReason, number> = {
  limit: 0,
  limiter_unavailable: 0,
  queue_timeout: 0,
  queue_full: 0,
  paused: 0,
  rate: 0,
};
const NO_ERRORS: Map<string, number> = new Map();

function toMetricRow(row: HostSummary): MetricRow {
  return {
    host: row.host,
    open: row.open,
    idle: row.idle,
    queued: row.queued,
    fleetOpen: row.fleetOpen,
    pausedUntil: row.pausedUntil,
    adaptive: row.adaptive,
    limit: row.limit,
    admitted: row.stats?.admitted ?? 0,
    refused: row.stats?.refused ?? NO_REFUSALS,
    errors: row.stats?.upstreamErrors ?? NO_ERRORS,
  };
}

function limitValue(limit: number): number {
  return limit > 0 ? limit : 0;
}

function head(out: string[], name: string, type: string, help: string): void {
  out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
}

function histogram(out: string[], name: string, help: string, h: Histogram): void {
  head(out, name, "histogram", help);
  const { cumulative, sum, count } = h.snapshot();
  h.bounds.forEach((bound, i) => out.push(`${name}_bucket{le="${bound}"} ${cumulative[i]}`));
  out.push(`${name}_bucket{le="+Inf"} ${count}`, `${name}_sum ${sum}`, `${name}_count ${count}`);
}
