/**
 * The narrow interface between the proxy and its control plane: what the
 * admin handler reads and changes. The proxy implements it; the admin
 * handler only calls it.
 *
 * @module
 */

import type { HostRule } from "../limit/rules/rules.ts";
import type { LimitsView } from "../limit/limit_layers.ts";
import type { ParentView, UpstreamHostView } from "../metrics/host_summary.ts";
import type { ProxyStats } from "../metrics/proxy_stats.ts";

/** One live worker of a distributed fleet, as the admin API shows it. */
export interface WorkerView {
  /** The worker id (the field name in the Redis counters). */
  id: string;
  /** The machine's host name. */
  hostname: string;
  /** The process id. */
  pid: number;
  /** dprl's version on that worker. */
  version: string;
  /** The worker's admin URL, if it runs an admin server. */
  adminUrl?: string;
  /** The worker's proxy URL, when it registered one. */
  proxyUrl?: string;
  /** When the worker started, in milliseconds since the epoch. */
  startedAt: number;
  /** Upstream connections the worker holds open, over every host. */
  open: number;
}

/** Whether the proxy can serve new connections, and why not. */
export interface Readiness {
  /** `true` while the proxy port accepts and the limiter can grant. */
  ok: boolean;
  /** Why not, as one line (for example "shutting down" or "Redis unreachable"). */
  reason?: string;
}

/** The proxy as its admin server sees it. */
export interface AdminSource {
  /** dprl's version. */
  readonly version: string;
  /** When the proxy started, in milliseconds since the epoch. */
  readonly startedAt: number;
  /** Where the connection counts live. */
  readonly mode: "memory" | "redis";
  /** This worker's id in Redis (distributed mode). */
  readonly workerId?: string;
  /** The proxy's URL, or `null` while it is not listening. */
  readonly proxyUrl: URL | null;
  /** The admin server's URL, or `null` when the handler is mounted elsewhere. */
  readonly adminUrl: URL | null;
  /** The statistics the engine updates. */
  readonly stats: ProxyStats;
  /** The default limit in effect (0: unlimited). */
  readonly defaultLimit: number;
  /** The limits in effect, each with the layer it comes from. */
  limitTable(): LimitsView;
  /** Whether the proxy can serve new connections. */
  ready(): Readiness;
  /** Whether Redis answers; `null` in memory mode. */
  redisUp(): boolean | null;
  /**
   * The hosts the upstream pool holds connections to, with cached fleet
   * counts; in distributed mode also the hosts only other workers hold
   * (with `open: 0`), when the fleet counts know them.
   */
  hosts(): Iterable<UpstreamHostView>;
  /** The limit that applies to a host key (0 or less: unlimited). */
  limitFor(host: string): number;
  /**
   * Sets a host's limit, or its rule with settings, in the runtime table
   * (the fleet's, in distributed mode), over any override of this process;
   * throws a RangeError or TypeError on a bad value.
   */
  setHostLimit(host: string, limit: number | HostRule): void | Promise<void>;
  /** Removes a host's limit from the runtime table and this process's overrides. */
  removeHostLimit(host: string): void | Promise<void>;
  /**
   * Sets the runtime table's default limit, over any default of this
   * process; throws a RangeError or TypeError on a bad value.
   */
  setDefaultLimit(limit: number): void | Promise<void>;
  /**
   * Reads the config file again and swaps in its rules; resolves with the
   * error (one line) when the file is broken and the old rules stay.
   * Absent when the proxy has no config file.
   */
  reload?(): Promise<{ ok: true; changes: string[] } | { ok: false; error: string }>;
  /** The parent proxies known (`--upstream-proxy` and rules' `via`). */
  parents?(): ParentView[];
  /** The live workers of the fleet (distributed mode only). */
  workers?(): Promise<WorkerView[]>;
}
