/**
 * An {@linkcode AdminSource} whose pool state the tests set by hand, built
 * on the real {@linkcode LimitTable} and {@linkcode ProxyStats}.
 *
 * @module
 */

import type { AdminSource, Readiness, WorkerView } from "../../lib/admin/admin_source.ts";
import { hostKey } from "../../lib/limit/host_key.ts";
import type { HostRule } from "../../lib/limit/rules/rules.ts";
import { type LimitsView, limitsView } from "../../lib/limit/limit_layers.ts";
import { LimitTable } from "../../lib/limit/limit_table.ts";
import type { UpstreamHostView } from "../../lib/metrics/host_summary.ts";
import { ProxyStats } from "../../lib/metrics/proxy_stats.ts";

/** Options of {@linkcode TableAdminSource}. */
export interface TableAdminSourceOptions {
  /** Default limit. */
  defaultLimit?: number;
  /** Per-host limits. */
  hostLimits?: Record<string, number>;
  /** The version shown. Default "0.0.0-test". */
  version?: string;
  /** Distributed mode, with these workers. */
  workers?: WorkerView[];
}

/** An admin source over a limit table, statistics and a hand-set pool. */
export class TableAdminSource implements AdminSource {
  readonly version: string;
  readonly startedAt: number = Date.now() - 61_000;
  readonly mode: "memory" | "redis";
  readonly workerId?: string;
  readonly proxyUrl: URL | null = new URL("http://127.0.0.1:8080/");
  adminUrl: URL | null = null;
  readonly stats: ProxyStats = new ProxyStats();
  readonly table: LimitTable;
  /** The pool state, by host key. */
  readonly pool: Map<string, UpstreamHostView> = new Map();
  /** What `ready()` answers. */
  readiness: Readiness = { ok: true };
  /** What `redisUp()` answers in distributed mode. */
  redis = true;
  /** Every limit change, in order. */
  readonly changes: string[] = [];
  readonly workers?: () => Promise<WorkerView[]>;

  constructor(options: TableAdminSourceOptions = {}) {
    this.version = options.version ?? "0.0.0-test";
    this.table = new LimitTable(options.defaultLimit ?? 0, options.hostLimits ?? {});
    const workers = options.workers;
    this.mode = workers === undefined ? "memory" : "redis";
    if (workers !== undefined) {
      this.workerId = workers[0]?.id;
      this.workers = () => Promise.resolve(workers);
    }
  }

  /** Sets what the pool holds to a host. */
  setPool(host: string, open: number, idle = 0, fleetOpen?: number): void {
    const key = hostKey(host);
    this.pool.set(key, { host: key, open, idle, fleetOpen });
  }

  get defaultLimit(): number {
    return this.table.defaultLimit;
  }

  /** The table as the runtime layer alone. */
  limitTable(): LimitsView {
    return limitsView([{
      source: "runtime",
      rules: { default: this.table.defaultLimit, hosts: this.table.entries() },
    }]);
  }

  ready(): Readiness {
    return this.readiness;
  }

  redisUp(): boolean | null {
    return this.mode === "redis" ? this.redis : null;
  }

  hosts(): Iterable<UpstreamHostView> {
    return this.pool.values();
  }

  limitFor(host: string): number {
    return this.table.limitFor(host);
  }

  setHostLimit(host: string, limit: number | HostRule): void {
    // The table holds limits; a rule's settings are recorded as changes.
    this.table.set(
      host,
      typeof limit === "number" ? limit : limit.limit ?? this.table.limitFor(host),
    );
    this.changes.push(
      `set ${hostKey(host)} ${typeof limit === "number" ? limit : JSON.stringify(limit)}`,
    );
  }

  removeHostLimit(host: string): void {
    this.table.delete(host);
    this.changes.push(`remove ${hostKey(host)}`);
  }

  setDefaultLimit(limit: number): void {
    this.table.defaultLimit = limit;
    this.changes.push(`default ${limit}`);
  }
}
