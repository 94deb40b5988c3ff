/**
 * One row per upstream host, joining what the upstream pool holds now with
 * what the statistics have counted, busiest first.
 *
 * @module
 */

import type { HostStats } from "./proxy_stats.ts";

/** What the proxy holds to one upstream host at this moment. */
export interface UpstreamHostView {
  /** The host key. */
  host: string;
  /** Upstream connections open from this process, idle pooled ones included. */
  open: number;
  /** Idle pooled upstream connections of this process. */
  idle: number;
  /** Upstream connections open over the whole fleet (distributed mode; cached). */
  fleetOpen?: number;
  /** Requests of this process waiting for a slot of the host. */
  queued?: number;
  /** When the pause the host asked for with `Retry-After` ends (ms since epoch), while it runs. */
  pausedUntil?: number;
  /** The host's adaptive limit and why it last changed, when its limit adapts. */
  adaptive?: { limit: number; reason: string };
  /** The host's request rate (per second), when it has one. */
  rate?: number;
}

/** One host's current state and counters. */
export interface HostSummary {
  /** The host key. */
  host: string;
  /** Upstream connections open here, idle included. */
  open: number;
  /** Idle pooled upstream connections here. */
  idle: number;
  /** Open over the fleet, when known. */
  fleetOpen?: number;
  /** Requests waiting here for a slot. */
  queued: number;
  /** When the host's pause ends (ms since epoch), while it runs. */
  pausedUntil?: number;
  /** The host's adaptive limit and why it last changed, when its limit adapts. */
  adaptive?: { limit: number; reason: string };
  /** The host's request rate (per second), when it has one. */
  rate?: number;
  /** The limit that applies (0 or less: unlimited). */
  limit: number;
  /** The host's counters, or `undefined` when nothing was counted yet. */
  stats?: HostStats;
}

/** The inputs of {@linkcode summarizeHosts}. */
export interface SummarizeOptions {
  /** The host records of a {@linkcode ProxyStats}. */
  stats: ReadonlyMap<string, HostStats>;
  /** The hosts the upstream pool holds connections to. */
  hosts: Iterable<UpstreamHostView>;
  /** The limit that applies to a host key. */
  limitFor: (host: string) => number;
}

/**
 * Joins pool views and statistics into one row per host, sorted by open
 * plus admitted connections, the busiest first (ties by name).
 */
export function summarizeHosts(options: SummarizeOptions): HostSummary[] {
  const rows = new Map<string, HostSummary>();
  for (const view of options.hosts) {
    rows.set(view.host, {
      host: view.host,
      open: view.open,
      idle: view.idle,
      fleetOpen: view.fleetOpen,
      queued: view.queued ?? 0,
      pausedUntil: view.pausedUntil,
      adaptive: view.adaptive,
      rate: view.rate,
      limit: options.limitFor(view.host),
      stats: options.stats.get(view.host),
    });
  }
  for (const [host, stats] of options.stats) {
    const row = rows.get(host);
    if (row === undefined) {
      rows.set(host, { host, open: 0, idle: 0, queued: 0, limit: options.limitFor(host), stats });
    }
  }
  return [...rows.values()].sort((a, b) =>
    busyness(b) - busyness(a) || (a.host < b.host ? -1 : a.host > b.host ? 1 : 0)
  );
}

function busyness(row: HostSummary): number {
  return row.open + row.queued + (row.stats?.admitted ?? 0);
}

/** A parent proxy as the admin API and metrics show it: its origin, never its credentials. */
export interface ParentView {
  /** `http://host:port` or `https://host:port`. */
  url: string;
  /** Connections open through it now. */
  open: number;
  /** Until when it is skipped after failing to connect (ms since epoch); `null`: in use. */
  backedOffUntil: number | null;
}
