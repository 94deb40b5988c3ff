/**
 * {@linkcode ProxyAdminSource}: a running proxy as its admin handler sees
 * it, read from the proxy's state on each call.
 *
 * @module
 */

import type { HostRule } from "../limit/rules/rules.ts";
import type { Logger } from "@logtape/logtape";
import { hostKey } from "../limit/host_key.ts";
import type { FleetLimitChanges } from "../limit/limit_changes.ts";
import type { LimitsView } from "../limit/limit_layers.ts";
import type { LimitTable } from "../limit/limit_table.ts";
import type { Fleet } from "../limit/fleet.ts";
import type { FailureMode } from "../limit/redis_config.ts";
import type { RuleLayers } from "../limit/rule_layers.ts";
import type { ParentView, UpstreamHostView } from "../metrics/host_summary.ts";
import type { ProxyStats } from "../metrics/proxy_stats.ts";
import type { ReloadOutcome } from "../proxy_options.ts";
import { VERSION } from "../version.ts";
import type { AdminSource, Readiness, WorkerView } from "./admin_source.ts";
import type { ParentProxies } from "../proxy/parent_proxy.ts";

/** What the admin source reads from the proxy, as it is at the time of the call. */
export interface ProxyState {
  /** The proxy's URL while it listens. */
  readonly proxyUrl: URL | null;
  /** The admin server's URL while it listens. */
  readonly adminUrl: URL | null;
  /** The engine while it runs. */
  readonly server: {
    hosts(): Iterable<UpstreamHostView>;
    readonly accepting: boolean;
  } | null;
  /** The limiter's fleet once loaded in distributed mode; `null` before and in memory mode. */
  readonly fleet: Fleet | null;
  /** Whether the proxy is stopping or stopped. */
  readonly stopping: boolean;
}

/** Options of {@linkcode ProxyAdminSource}. */
export interface ProxyAdminSourceOptions {
  /** When the proxy was made, in milliseconds since the epoch. */
  startedAt: number;
  /** Whether the counts are shared through Redis. */
  distributed: boolean;
  /** What the limiter does while Redis is unreachable. */
  failureMode: FailureMode;
  /** The statistics the engine updates. */
  stats: ProxyStats;
  /** The proxy's limit table, with this process's overrides. */
  limits: LimitTable;
  /** Where limit changes are logged. */
  logger: Logger;
  /** The proxy's state now. */
  state(): ProxyState;
  /** The proxy's layers of rules. */
  layers: RuleLayers;
  /** Changes the runtime table (the fleet's, in distributed mode). */
  setFleetLimits(changes: FleetLimitChanges): Promise<void>;
  /** Reads the config file again; absent without one. */
  reload?(): Promise<ReloadOutcome>;
  /** The parent proxies. */
  parents?: ParentProxies;
}

/** The proxy as its admin handler sees it. */
export class ProxyAdminSource implements AdminSource {
  /** dprl's version. */
  readonly version: string = VERSION;
  /** When the proxy was made, in milliseconds since the epoch. */
  readonly startedAt: number;
  /** Where the connection counts live. */
  readonly mode: "memory" | "redis";
  /** The statistics the engine updates. */
  readonly stats: ProxyStats;
  /** Reads the config file again; absent when the proxy has none. */
  readonly reload?: () => Promise<
    { ok: true; changes: string[] } | { ok: false; error: string }
  >;
  /** The parent proxies known, by origin. */
  parents(): ParentView[] {
    const now = Date.now();
    return (this.#o.parents?.all ?? []).map((p) => ({
      url: p.url.origin,
      open: p.open,
      backedOffUntil: p.backedOff(now) ? p.skipUntil : null,
    }));
  }

  /** The fleet's live workers; absent in memory mode. */
  readonly workers?: () => Promise<WorkerView[]>;
  #o: ProxyAdminSourceOptions;

  /** Creates the source; it reads the proxy through `options` on each call. */
  constructor(options: ProxyAdminSourceOptions) {
    this.#o = options;
    this.startedAt = options.startedAt;
    this.mode = options.distributed ? "redis" : "memory";
    this.stats = options.stats;
    const reload = options.reload;
    if (reload) {
      this.reload = async () => {
        const result = await reload();
        return result.ok
          ? { ok: true, changes: result.changes.map((c) => c.rule) }
          : { ok: false, error: result.error };
      };
    }
    if (options.distributed) this.workers = () => this.#workers();
  }

  /** This worker's id in Redis (distributed mode). */
  get workerId(): string | undefined {
    return this.#o.state().fleet?.workerId;
  }

  /** The proxy's URL, or `null` while it is not listening. */
  get proxyUrl(): URL | null {
    return this.#o.state().proxyUrl;
  }

  /** The admin server's URL, or `null` without one. */
  get adminUrl(): URL | null {
    return this.#o.state().adminUrl;
  }

  /** The default limit in effect (0: unlimited). */
  get defaultLimit(): number {
    return this.#o.limits.defaultLimit;
  }

  /** The limits in effect, each with its layer. */
  limitTable(): LimitsView {
    return this.#o.layers.view();
  }

  /** Whether the proxy can serve new connections. */
  ready(): Readiness {
    const { stopping, server, fleet } = this.#o.state();
    if (stopping) return { ok: false, reason: "shutting down" };
    if (!server?.accepting) return { ok: false, reason: "proxy port not listening" };
    if (fleet !== null && !fleet.up && this.#o.failureMode === "closed") {
      return { ok: false, reason: "Redis unreachable and failure mode is closed" };
    }
    return { ok: true };
  }

  /** Whether Redis answers; `null` in memory mode. */
  redisUp(): boolean | null {
    const fleet = this.#o.state().fleet;
    return !this.#o.distributed || fleet === null ? null : fleet.up;
  }

  /** The pool's hosts, with the fleet's cached counts in distributed mode. */
  *hosts(): Iterable<UpstreamHostView> {
    const { server, fleet } = this.#o.state();
    const counts = fleet?.fleetCounts();
    const seen = new Set<string>();
    for (const view of server?.hosts() ?? []) {
      seen.add(view.host);
      yield counts ? { ...view, fleetOpen: counts.get(view.host) ?? view.open } : view;
    }
    if (!counts) return;
    for (const [host, open] of counts) {
      if (!seen.has(host) && open > 0) yield { host, open: 0, idle: 0, fleetOpen: open };
    }
  }

  /** The limit that applies to a host. */
  limitFor(host: string): number {
    return this.#o.limits.limitFor(hostKey(host));
  }

  // The admin API changes the runtime table (the fleet's in distributed mode), and this
  // process's override of the same rule gives way, so that the change applies here.

  /** Sets a host's limit (or rule with settings) in the runtime table, over this process's override. */
  async setHostLimit(host: string, limit: number | HostRule): Promise<void> {
    await this.#o.setFleetLimits({ hosts: { [host]: limit } });
    this.#o.limits.delete(host);
    this.#o.logger.info("Limit of {host} set to {limit} through the admin API", {
      host,
      limit: typeof limit === "number" ? limit : JSON.stringify(limit),
    });
  }

  /** Removes a host's limit from the runtime table and this process's overrides. */
  async removeHostLimit(host: string): Promise<void> {
    await this.#o.setFleetLimits({ hosts: { [host]: null } });
    this.#o.limits.delete(host);
    this.#o.logger.info("Limit of {host} removed through the admin API", { host });
  }

  /** Sets the runtime table's default, over this process's default. */
  async setDefaultLimit(limit: number): Promise<void> {
    await this.#o.setFleetLimits({ default: limit });
    this.#o.limits.deleteDefault();
    this.#o.logger.info("Default limit set to {limit} through the admin API", { limit });
  }

  async #workers(): Promise<WorkerView[]> {
    const fleet = this.#o.state().fleet;
    if (fleet === null) throw new Error("Proxy not started");
    return (await fleet.workers()).map((w) => ({
      id: w.id,
      hostname: w.hostname,
      pid: w.pid,
      version: w.version,
      adminUrl: w.adminUrl || undefined,
      proxyUrl: w.proxyUrl || undefined,
      startedAt: Date.parse(w.started) || 0,
      open: w.connections,
    }));
  }
}
