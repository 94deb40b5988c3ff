/**
 * {@linkcode ProxyRateLimiter}: the proxy with its limits, in memory or shared
 * through Redis. `mod.ts` re-exports it; the command line builds one.
 *
 * @module
 */

import { getLogger, type Logger } from "@logtape/logtape";
import { DEFAULTS, type Timeouts } from "./defaults.ts";
import { LimitTable } from "./limit/limit_table.ts";
import { RuleTable } from "./limit/rules/rule_table.ts";
import {
  canonicalRules,
  hostLimits,
  layerRules,
  type LimitRules,
  validateRules,
} from "./limit/rules/rules.ts";
import { diffRules, type RuleDifference } from "./limit/rules/diff.ts";
import {
  CHANGES_PREVIEW as LOGGED_CHANGES,
  LoadedRules,
  loadedTable,
  mergeRuns,
  type ReloadContext,
} from "./config/reload.ts";
import type { FleetLimitChanges, FleetLimits } from "./limit/fleet_limits.ts";
import { type LimitsView, limitsView } from "./limit/limit_layers.ts";
import { hostKey } from "./limit/host_key.ts";
import type { Limiter } from "./limit/limiter.ts";
import { LocalLimiter } from "./limit/local_limiter.ts";
import type { FailureMode, RedisLimiter } from "./limit/redis_limiter.ts";
import type { RedisConfig, RedisOptions } from "./limit/redis_config.ts";
import { ProxyServer } from "./proxy/proxy_server.ts";
import { checkUsers, ClientPolicy } from "./access/client_policy.ts";
import { DestinationPolicy } from "./access/destination_policy.ts";
import { ProxyStats } from "./metrics/proxy_stats.ts";
import { logAccess } from "./log_format.ts";
import { type AdminHandlerOptions, createAdminHandler } from "./admin/admin_handler.ts";
import { type AdminServer, isLoopback, startAdminServer } from "./admin/admin_server.ts";
import type { AdminSource, Readiness, WorkerInfo } from "./admin/admin_source.ts";
import type { UpstreamHostView } from "./metrics/host_summary.ts";
import { VERSION } from "./version.ts";

/**
 * The admin server of a {@linkcode ProxyRateLimiter}: health checks,
 * Prometheus metrics, the JSON API and the dashboard on their own port.
 *
 * @example
 * ```ts
 * import type { AdminOptions } from "@dprl/cli";
 *
 * const admin: AdminOptions = { port: 9090, token: "a-long-random-secret" };
 * ```
 */
export interface AdminOptions {
  /** Port of the admin server; 0 picks a free one. */
  port: number;
  /**
   * Address to listen on. Default `"127.0.0.1"`. An address that is not a
   * loopback address needs a `token`.
   */
  hostname?: string;
  /** Bearer token that every endpoint except `/healthz` and `/readyz` needs. */
  token?: string;
  /**
   * Most hosts given their own metric series, the busiest; the rest are
   * summed under `host="_other"`. Default 500.
   */
  metricsMaxHosts?: number;
}

/** What the Redis limiter offers the control plane beyond {@linkcode Limiter}. */
type FleetLimiter = Partial<
  Pick<
    RedisLimiter,
    "workerId" | "up" | "onCall" | "workers" | "fleetCounts" | "setWorkerInfo" | "nodes" | "client"
  >
>;

/**
 * Options of {@linkcode ProxyRateLimiter}. Every field is optional.
 *
 * @example
 * ```ts
 * import type { ProxyRateLimiterOptions } from "@dprl/cli";
 *
 * const options: ProxyRateLimiterOptions = {
 *   port: 0, // pick a free port
 *   defaultMaxConnectionsPerHost: 20,
 *   hostLimits: { "api.example.com": 5 },
 * };
 * ```
 */
export interface ProxyRateLimiterOptions {
  /** Port to listen on; 0 picks a free one. Default 0. */
  port?: number;
  /** Address to listen on. Default `"127.0.0.1"`. */
  hostname?: string;
  /**
   * Limit for hosts without an override; 0 or less means unlimited.
   * Default 0.
   */
  defaultMaxConnectionsPerHost?: number;
  /** Per-host overrides, e.g. `{ "api.example.com": 5 }`. */
  hostLimits?: Record<string, number>;
  /**
   * Limit rules: a default, per-host limits with wildcards and groups of
   * hosts with a shared limit (the schema of the config file). The fleet's
   * runtime table (the admin API's; the fleet's in distributed mode) wins
   * over them rule by rule, and this process's overrides
   * (`defaultMaxConnectionsPerHost`, `hostLimits` and the setters such as
   * {@linkcode ProxyRateLimiter.setHostLimit}) win over both. The command
   * line puts its config file's rules here and its flags in `flagRules`.
   * A host rule or group may also set `queue-timeout` and `queue-max` for
   * its hosts, over `queueTimeout` and `queueMax`; the layers above change
   * limits only. See {@linkcode LimitRules}.
   */
  rules?: LimitRules;
  /**
   * Rules under `rules`, which win over them rule by rule: the command
   * line's `--max-connections` and `--host-limit`. `GET /api/limits` names
   * their source `flag`. Default none.
   */
  flagRules?: LimitRules;
  /**
   * Reads the rules again, for {@linkcode ProxyRateLimiter.reload} (the
   * command line passes `loadRulesFile`, which reads its config
   * file and compiles the table in a `Worker`). Throwing keeps the current
   * rules.
   */
  loadRules?: (
    context: ReloadContext,
  ) => LimitRules | LoadedRules | Promise<LimitRules | LoadedRules>;
  /** HTTP status sent when a host is at its limit. Default 500. */
  rejectStatus?: number;
  /** Timeouts in milliseconds; see {@linkcode Timeouts} for the defaults. */
  timeouts?: Partial<Timeouts>;
  /** Largest accepted request or response head, in bytes. Default 65536. */
  maxHeadSize?: number;
  /** Idle upstream sockets kept per host for reuse. Default 64. */
  maxIdlePerHost?: number;
  /**
   * Shares the counters through Redis: a `redis://` or `rediss://` URL,
   * ioredis options, a cluster description or a connected ioredis client.
   * Without it the counters live in this process's memory and the proxy
   * needs only `--allow-net`.
   *
   * The Redis client is loaded by {@linkcode ProxyRateLimiter.start} and
   * lists the environment as it loads: Redis mode needs `--ignore-env` (or
   * `--allow-env`) besides `--allow-net`, and `env: true` in a worker's
   * permissions.
   */
  redis?: RedisConfig;
  /** Prefix of the Redis keys. Default `"dprl"`. */
  redisPrefix?: string;
  /**
   * This worker's lease in Redis, in milliseconds (the original's
   * `maxLifetime` safety TTL): a worker that dies stops counting after it.
   * The heartbeat renews it every third of it. Default 15000.
   */
  lease?: number;
  /** How long a Redis call may take before it counts as failed. Default 1000. */
  redisTimeout?: number;
  /**
   * What to do when Redis cannot be reached: `"closed"` refuses new
   * connections (the default), `"open"` admits them uncounted, `"local"`
   * enforces the limits in this process's memory.
   */
  failureMode?: FailureMode;
  /**
   * Client addresses (CIDRs) that may use the proxy. Default: loopback and
   * the private ranges (`127.0.0.0/8`, `::1`, `10.0.0.0/8`, `172.16.0.0/12`,
   * `192.168.0.0/16`, `fc00::/7`). With `users`, any address may connect
   * unless this is given, and every request must authenticate.
   */
  allowClients?: string[];
  /**
   * Proxy users (Basic authentication): user name to password, or to a
   * bcrypt hash (`$2y$...`, as `htpasswd -B` writes); any other hash
   * (`$apr1$...`, `{SHA}...`) is refused. Without users no authentication
   * is asked for.
   */
  users?: Record<string, string>;
  /**
   * Destinations that may be reached: host globs (`*.example.com`), CIDRs,
   * each with an optional `:port` or `:port-port`. Without any, every
   * destination not denied.
   */
  allow?: string[];
  /** Destinations that are refused; they win over `allow`. */
  deny?: string[];
  /**
   * Refuses loopback, private, link-local (cloud metadata included), CGNAT,
   * ULA, multicast and unspecified addresses, checked on the resolved
   * addresses that are then dialed. Default `false`. The proxy's own port
   * and its Redis are refused always.
   */
  denyPrivate?: boolean;
  /** Open client connections in all; beyond it a 503. 0: no cap. Default 10000. */
  maxClients?: number;
  /** Open client connections per client address; 0: no cap. Default 0. */
  maxClientsPerIp?: number;
  /**
   * Time a request or CONNECT over its host's limit waits for a slot, in
   * milliseconds; slots go to waiters first come first served. Default 0:
   * refused at once. A host rule or group of `rules` may set its own
   * (`queue-timeout`).
   */
  queueTimeout?: number;
  /**
   * Requests that may wait per host in this process; beyond it, refused at
   * once. Default 1000. A host rule or group of `rules` may set its own
   * (`queue-max`).
   */
  queueMax?: number;
  /** Logs one line per exchange or tunnel (category `["dprl", "access"]`). Default `false`. */
  accessLog?: boolean;
  /**
   * Starts an admin server with the proxy (and stops it with the proxy):
   * `/healthz`, `/readyz`, `/metrics`, the JSON API under `/api/` and the
   * dashboard at `/`. Without it no admin port is opened;
   * {@linkcode ProxyRateLimiter.adminHandler} still serves the same
   * endpoints from an application's own server.
   */
  admin?: AdminOptions;
}

/**
 * An HTTP/HTTPS forward proxy that enforces per-host concurrent connection
 * limits locally or, with the `redis` option, across every proxy sharing one
 * Redis.
 *
 * @example
 * ```ts ignore
 * import { ProxyRateLimiter } from "@dprl/cli";
 *
 * const proxy = new ProxyRateLimiter({ defaultMaxConnectionsPerHost: 2 });
 * await proxy.start();
 * console.log(proxy.proxyUrl?.href); // e.g. http://127.0.0.1:40123/
 * await proxy.stop();
 * ```
 */
export class ProxyRateLimiter implements AsyncDisposable {
  #options: ProxyRateLimiterOptions;
  #limits: LimitTable;
  #logger: Logger;
  /** The rules of the `flagRules` option, under the file's. */
  #flagRules: LimitRules;
  /** The rules of the `rules` option, `setRules` or the last reload. */
  #fileLayer: LimitRules | LoadedRules = {};
  get #fileRules(): LimitRules {
    const layer = this.#fileLayer;
    return layer instanceof LoadedRules ? layer.fileRules : layer;
  }
  set #fileRules(rules: LimitRules) {
    this.#fileLayer = rules;
  }
  /** The fleet's runtime table (distributed mode): the highest layer of rules. */
  #fleetRules: LimitRules = {};
  #fleetLimits: FleetLimits | null = null;
  /** The limiter, once loaded (the Redis client is loaded only when asked for). */
  #limiter: Promise<Limiter> | null = null;
  #starting: Promise<void> | null = null;
  #server: ProxyServer | null = null;
  #url: URL | null = null;
  #served: Promise<void> | null = null;
  #stopping: Promise<void> | null = null;
  #stats: ProxyStats;
  /** The limiter once loaded, for the control plane's synchronous reads. */
  #loaded: (Limiter & FleetLimiter) | null = null;
  #admin: AdminServer | null = null;
  #adminSource: AdminSource | null = null;
  #startedAt = Date.now();
  /** Keeps the Redis servers the limiter meets out of clients' reach. */
  #guard: ReturnType<typeof setInterval> | undefined;
  /** Whether the fleet's addresses are being read from the registry. */
  #guarding = false;

  /**
   * Creates a proxy; nothing listens until {@linkcode start}. Throws a
   * RangeError when the admin server would listen on a non-loopback
   * address without a token, and a RangeError or TypeError on a bad entry
   * of `users` (a value that looks like a hash but is not bcrypt, say).
   */
  constructor(options: ProxyRateLimiterOptions = {}) {
    const admin = options.admin;
    if (admin && admin.token === undefined && !isLoopback(admin.hostname ?? "127.0.0.1")) {
      throw new RangeError(
        `Admin address ${admin.hostname} is not a loopback address; set an admin token to expose it`,
      );
    }
    checkUsers(options.users ?? {});
    this.#options = options;
    // Idle hosts keep a record of their own as far as /metrics shows one.
    this.#stats = new ProxyStats({ idleHosts: admin?.metricsMaxHosts });
    this.#flagRules = validateRules(options.flagRules ?? {});
    this.#fileRules = validateRules(options.rules ?? {});
    // This process's overrides, above the rules as before rules existed.
    this.#limits = new LimitTable(options.defaultMaxConnectionsPerHost, options.hostLimits);
    this.#applyRules();
    this.#logger = getLogger(["dprl"]);
  }

  /** Compiles the layers (flags, file, then fleet) and swaps the table in at once. */
  #applyRules(): RuleDifference[] {
    const table = new RuleTable(layerRules(this.#flagRules, this.#fileRules, this.#fleetRules));
    const changes = diffRules(this.#limits.rules.rules, table.rules);
    this.#limits.rules = table;
    return changes;
  }

  #logChanges(changes: RuleDifference[], why: string, count = changes.length): void {
    for (const c of changes.slice(0, LOGGED_CHANGES)) {
      this.#logger.info("Limit rule {rule} {change} ({why})", {
        rule: c.rule,
        change: c.a === undefined
          ? `added: ${c.b}`
          : c.b === undefined
          ? `removed (was ${c.a})`
          : `changed from ${c.a} to ${c.b}`,
        why,
      });
    }
    if (count > LOGGED_CHANGES) {
      this.#logger.info("{count} more limit rules changed ({why})", {
        count: count - LOGGED_CHANGES,
        why,
      });
    }
  }

  /**
   * The rules in effect, in canonical form: the `rules` option's (or those
   * of {@linkcode setRules} or the last reload) with the fleet's runtime
   * table over them. This process's overrides ({@linkcode setHostLimit} &
   * co.) are not in it.
   *
   * @example
   * ```ts
   * import { ProxyRateLimiter } from "@dprl/cli";
   * new ProxyRateLimiter({ rules: { hosts: { "*.example.org": 10 } } }).rules;
   * // { hosts: { "*.example.org": 10 } }
   * ```
   */
  get rules(): LimitRules {
    return this.#limits.rules.rules;
  }

  /**
   * Replaces the rules of the `rules` option (the config file's layer) at
   * once: open connections stay open and counted; a lowered limit admits
   * nothing new until the count is under it, a raised one admits at once.
   * Throws a `RulesError` naming the first invalid rule, and then changes
   * nothing. Returns the rules that changed.
   *
   * @example
   * ```ts
   * import { ProxyRateLimiter } from "@dprl/cli";
   * const proxy = new ProxyRateLimiter();
   * proxy.setRules({
   *   default: 25,
   *   hosts: { "api.example.com": 5, "*.example.org": 10 },
   *   groups: [{ name: "storage", match: ["*.s3.amazonaws.com"], limit: 100 }],
   * });
   * ```
   */
  setRules(rules: LimitRules): RuleDifference[] {
    const previous = this.#fileRules;
    this.#fileRules = validateRules(rules);
    try {
      return this.#applyRules();
    } catch (err) {
      this.#fileRules = previous;
      throw err;
    }
  }

  /**
   * Reads the rules again with the `loadRules` option (the command line's
   * config file) and swaps them in, as {@linkcode setRules} does. A broken
   * file keeps the current rules and logs one error. Both outcomes count in
   * `dprl_config_reloads_total{result}`. A reload asked for while one runs
   * waits for the one reload that starts after it, shared by every caller
   * meanwhile (a burst of requests costs two reads of the file at most).
   *
   * @example
   * ```ts ignore
   * const result = await proxy.reload();
   * if (!result.ok) console.error(result.error);
   * ```
   */
  reload(): Promise<ReloadOutcome> {
    return this.#reload();
  }

  /** Reloads merged: a reload asked for during one joins the next. */
  #reload = mergeRuns(() => this.#reloadOnce());

  async #reloadOnce(): Promise<ReloadOutcome> {
    const load = this.#options.loadRules;
    if (!load) throw new Error("Proxy has no loadRules option to reload from");
    let changes: LoadedRules | RuleDifference[];
    try {
      const loaded = await load({
        above: this.#fleetRules,
        current: this.#limits.rules.rulesText,
      });
      changes = loaded instanceof LoadedRules ? this.#swap(loaded) : this.setRules(loaded);
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      this.#stats.onConfigReload("error");
      this.#logger.error("Config not reloaded, the current limits stay: {error}", { error });
      return { ok: false, error };
    }
    this.#stats.onConfigReload("ok");
    // A table swapped in from a worker reads its changes only when asked for.
    const [preview, count] = changes instanceof LoadedRules
      ? [changes.preview, changes.changeCount]
      : [changes, changes.length];
    this.#logChanges(preview, "reload", count);
    if (count === 0) this.#logger.info("Config reloaded, no limit changed");
    this.#compareFiles();
    const loaded = changes;
    return {
      ok: true,
      get changes(): RuleDifference[] {
        return loaded instanceof LoadedRules ? loaded.changes : loaded;
      },
    };
  }

  /**
   * Swaps in a table compiled off the event loop, unless the fleet's table
   * or the rules changed meanwhile: then the file's rules are layered again.
   */
  #swap(loaded: LoadedRules): LoadedRules | RuleDifference[] {
    const { above, current } = loaded.context;
    const table = loadedTable(loaded);
    if (!table || above !== this.#fleetRules || current !== this.#limits.rules.rulesText) {
      return this.setRules(loaded.fileRules);
    }
    this.#fileLayer = loaded;
    this.#limits.rules = table;
    return loaded;
  }

  /**
   * Changes the fleet's runtime limit table: in distributed mode it is kept
   * in Redis and every proxy of the fleet applies it within a second; it wins
   * over every config file and flag. In memory mode (or before
   * {@linkcode start}) it applies to this proxy only. `null` (or a host
   * limit of 0 or less) removes an entry. Throws a `TypeError` on an invalid
   * pattern or limit.
   *
   * @example
   * ```ts ignore
   * await proxy.setFleetLimits({ hosts: { "api.example.com": 3, "*.example.org": null } });
   * ```
   */
  async setFleetLimits(changes: FleetLimitChanges): Promise<void> {
    if (this.#fleetLimits) return await this.#fleetLimits.set(changes);
    const hosts = hostLimits(this.#fleetRules);
    const next: LimitRules = {};
    const { default: def } = changes;
    const current = this.#fleetRules.default;
    const d = def === undefined ? current : def === null ? undefined : checkLimit(def);
    if (d !== undefined) next.default = Math.max(0, d);
    const checked = hostLimits(canonicalRules({
      hosts: Object.fromEntries(
        Object.entries(changes.hosts ?? {}).map(([h, l]) => [h, l === null ? 0 : checkLimit(l)]),
      ),
    }));
    for (const [host, limit] of Object.entries(checked)) {
      if (limit <= 0) delete hosts[host];
      else hosts[host] = limit;
    }
    if (Object.keys(hosts).length) next.hosts = hosts;
    this.#fleetRules = next;
    this.#logChanges(this.#applyRules(), "runtime change");
  }

  /**
   * Sets the limit for hosts without an override; 0 or less means unlimited.
   *
   * @example
   * ```ts
   * import { ProxyRateLimiter } from "@dprl/cli";
   * new ProxyRateLimiter().setDefaultMaxConnectionsPerHost(10);
   * ```
   */
  setDefaultMaxConnectionsPerHost(limit: number): void {
    this.#limits.defaultLimit = limit;
  }

  /**
   * Sets or updates one host's limit; a limit of 0 or less removes the
   * override. `host` may carry a port (`"api.example.com:8443"`).
   *
   * @example
   * ```ts
   * import { ProxyRateLimiter } from "@dprl/cli";
   * new ProxyRateLimiter().setHostLimit("api.example.com", 5);
   * ```
   */
  setHostLimit(host: string, limit: number): void {
    this.#limits.set(host, limit);
  }

  /**
   * Replaces every per-host limit; entries of 0 or less are ignored.
   *
   * @example
   * ```ts
   * import { ProxyRateLimiter } from "@dprl/cli";
   * new ProxyRateLimiter().setHostLimits({ "a.example": 5, "b.example": 2 });
   * ```
   */
  setHostLimits(limits: Record<string, number>): void {
    this.#limits.replace(limits);
  }

  /**
   * Removes one host's override; the default applies to it again.
   *
   * @example
   * ```ts
   * import { ProxyRateLimiter } from "@dprl/cli";
   * new ProxyRateLimiter().removeHostLimit("api.example.com");
   * ```
   */
  removeHostLimit(host: string): void {
    this.#limits.delete(host);
  }

  /**
   * The open upstream connections to `host`: this process's in local mode,
   * the sum over every live worker in distributed mode.
   *
   * @example
   * ```ts ignore
   * const n = await proxy.activeConnectionsForHost("api.example.com");
   * ```
   */
  async activeConnectionsForHost(host: string): Promise<number> {
    return await (await this.#loadLimiter()).count(hostKey(host));
  }

  /**
   * The URL to use as the proxy of a client, or `null` before
   * {@linkcode start}.
   *
   * @example
   * ```ts ignore
   * const client = Deno.createHttpClient({ proxy: { url: proxy.proxyUrl!.href } });
   * ```
   */
  get proxyUrl(): URL | null {
    return this.#url;
  }

  /**
   * The URL of the admin server (the `admin` option), or `null` without
   * one or before {@linkcode start}.
   *
   * @example
   * ```ts ignore
   * const proxy = new ProxyRateLimiter({ admin: { port: 0 } });
   * await proxy.start();
   * await fetch(new URL("/metrics", proxy.adminUrl!));
   * ```
   */
  get adminUrl(): URL | null {
    return this.#admin?.url ?? null;
  }

  /**
   * The admin endpoints (health checks, Prometheus metrics, the JSON API and
   * the dashboard) as a handler that an application mounts in its own
   * `Deno.serve`. The token and the metrics host cap default to the `admin`
   * option's.
   *
   * @example
   * ```ts ignore
   * const proxy = new ProxyRateLimiter();
   * await proxy.start();
   * Deno.serve({ port: 9090 }, proxy.adminHandler({ token: "a-long-random-secret" }));
   * ```
   */
  adminHandler(options: AdminHandlerOptions = {}): (req: Request) => Promise<Response> {
    return createAdminHandler(this.#source(), {
      token: options.token ?? this.#options.admin?.token,
      metricsMaxHosts: options.metricsMaxHosts ?? this.#options.admin?.metricsMaxHosts,
    });
  }

  /**
   * Starts listening and serving in the background; resolves once the port
   * is bound. In Redis mode it first loads the Redis client.
   *
   * @example
   * ```ts ignore
   * await proxy.start();
   * ```
   */
  start(): Promise<void> {
    if (this.#stopping) {
      return Promise.reject(new Error("Proxy was stopped and cannot start again"));
    }
    if (this.#starting) return Promise.reject(new Error("Proxy is already started"));
    const starting = this.#listen();
    this.#starting = starting;
    // A failed start may be tried again.
    starting.catch(() => {
      if (this.#starting === starting) this.#starting = null;
    });
    return starting;
  }

  async #listen(): Promise<void> {
    const limiter = await this.#loadLimiter();
    const listener = Deno.listen({
      hostname: this.#options.hostname ?? DEFAULTS.hostname,
      port: this.#options.port ?? DEFAULTS.port,
    });
    const addr = listener.addr;
    const host = addr.hostname === "::"
      ? "[::1]"
      : addr.hostname.includes(":")
      ? `[${addr.hostname}]`
      : addr.hostname === "0.0.0.0"
      ? "127.0.0.1"
      : addr.hostname;
    this.#url = new URL(`http://${host}:${addr.port}/`);
    const o = this.#options;
    const clients = new ClientPolicy({
      allowClients: o.allowClients,
      users: o.users && new Map(Object.entries(o.users)),
    });
    const destinations = new DestinationPolicy({
      allow: o.allow,
      deny: o.deny,
      denyPrivate: o.denyPrivate,
      resolveTimeout: o.timeouts?.connect,
    });
    // Never a loop through the proxy itself, never a path to its counters.
    await destinations.protect(addr.hostname, addr.port);
    for (const node of redisNodes(o.redis)) await destinations.protect(node.host, node.port);
    const warning = clients.exposureWarning(addr.hostname);
    if (warning) this.#logger.warn(warning);
    if (
      (addr.hostname === "0.0.0.0" || addr.hostname === "::") && !destinations.interfacesVisible
    ) {
      this.#logger.warn(
        "Cannot see this machine's network addresses: a CONNECT to this proxy's port on one of " +
          "them is not known to be a loop; run with --allow-sys=networkInterfaces",
      );
    }
    const access = getLogger(["dprl", "access"]);
    this.#server = new ProxyServer({
      listener,
      limits: this.#limits,
      limiter,
      rejectStatus: this.#options.rejectStatus ?? DEFAULTS.rejectStatus,
      timeouts: this.#options.timeouts,
      maxHeadSize: this.#options.maxHeadSize,
      maxIdlePerHost: this.#options.maxIdlePerHost,
      logger: this.#logger,
      clients,
      destinations,
      stats: this.#stats,
      onAccess: o.accessLog ? (entry) => logAccess(access, entry) : undefined,
      maxClients: o.maxClients,
      maxClientsPerIp: o.maxClientsPerIp,
      queueTimeout: o.queueTimeout,
      queueMax: o.queueMax,
    });
    this.#loaded = limiter;
    const fleet = limiter as Limiter & FleetLimiter;
    if (o.redis !== undefined) fleet.onCall = (ms) => this.#stats.onRedisCall(ms);
    if (fleet.nodes) {
      // Redis servers met while running (a Sentinel's master, Cluster nodes) are refused too,
      // and so are the proxy and admin ports of the fleet's workers, read from the registry.
      let ticks = 0;
      const guard = () => {
        for (const node of fleet.nodes!()) {
          destinations.protect(node.host, node.port).catch(() => {});
        }
        if (ticks++ % FLEET_GUARD_TICKS === 0) this.#guardFleet(destinations);
      };
      guard();
      const timer = setInterval(guard, 1000);
      Deno.unrefTimer(timer);
      this.#guard = timer;
    }
    this.#served = this.#server.serve();
    if (fleet.client && fleet.workerId) await this.#startFleetLimits(fleet.client);
    this.#logger.info("Proxy listening on {url} (bound to {address})", {
      url: this.#url.href,
      address: `${addr.hostname}:${addr.port}`,
    });
    if (o.admin) {
      try {
        this.#admin = await startAdminServer({ source: this.#source(), ...o.admin });
      } catch (err) {
        const server = this.#server;
        this.#server = null;
        await server.shutdown(0);
        await this.#served;
        this.#url = null;
        throw err;
      }
      // The control plane is no destination either.
      await destinations.protect(
        o.admin.hostname ?? DEFAULTS.adminHostname,
        this.#admin.url.port ? Number(this.#admin.url.port) : 80,
      );
      fleet.setWorkerInfo?.({ adminUrl: this.#admin.url.href, version: VERSION });
      this.#logger.info("Admin server listening on {url}", { url: this.#admin.url.href });
    }
  }

  /**
   * Refuses as destinations the proxy and admin addresses of every worker in
   * the registry, replacing the last list; keeps it while Redis is down.
   */
  async #guardFleet(destinations: DestinationPolicy): Promise<void> {
    if (this.#guarding) return;
    this.#guarding = true;
    try {
      const workers = await this.#loaded?.workers?.();
      if (!workers) return;
      const members = workers.flatMap((w) => [w.adminUrl, w.proxyUrl]).flatMap(urlAddress);
      await destinations.protectFleet(members);
    } catch (error) {
      this.#logger.debug("Fleet addresses not refreshed: {error}", { error });
    } finally {
      this.#guarding = false;
    }
  }

  /** Follows the fleet's runtime limit table in Redis and tells the fleet this file's rules. */
  async #startFleetLimits(client: NonNullable<FleetLimiter["client"]>): Promise<void> {
    const { FleetLimits } = await import("./limit/fleet_limits.ts");
    this.#fleetLimits = new FleetLimits({
      client,
      prefix: this.#options.redisPrefix ?? DEFAULTS.redisPrefix,
      pollMs: DEFAULTS.fleetLimitsPoll,
      timeout: this.#options.redisTimeout ?? DEFAULTS.redisTimeout,
      logger: this.#logger,
      onChange: (rules) => {
        this.#fleetRules = rules;
        this.#logChanges(this.#applyRules(), "fleet table");
      },
    });
    await this.#fleetLimits.start();
    // In the worker registry from the start: the fleet compares files among live workers.
    this.#loaded?.setWorkerInfo?.({ version: VERSION, proxyUrl: this.#url?.href ?? "" });
    this.#compareFiles();
  }

  /**
   * Publishes this proxy's file rules and warns, naming the rules, about
   * every live worker whose file says otherwise.
   */
  async #compareFiles(): Promise<void> {
    const fleet = this.#fleetLimits;
    const limiter = this.#loaded;
    if (!fleet || !limiter?.workerId || !limiter.workers) return;
    try {
      const mine = layerRules(this.#flagRules, this.#fileRules);
      const theirs = await fleet.announceFile(limiter.workerId, mine);
      const live = new Set((await limiter.workers()).map((w) => w.id));
      for (const [id, rules] of theirs) {
        if (!live.has(id) || id === limiter.workerId) continue;
        const diff = diffRules(mine, rules);
        if (diff.length === 0) continue;
        this.#logger.warn("Limit rules differ from worker {worker}: {rules}", {
          worker: id,
          rules: diff.map((d) => `${d.rule}: ${d.a ?? "none"} here, ${d.b ?? "none"} there`)
            .join("; "),
        });
      }
    } catch (error) {
      this.#logger.debug("Config files of the fleet not compared: {error}", { error });
    }
  }

  /** The proxy as the admin handler sees it. */
  #source(): AdminSource {
    if (this.#adminSource) return this.#adminSource;
    // deno-lint-ignore no-this-alias
    const proxy = this;
    const limits = this.#limits;
    const fleet = (): FleetLimiter | null => this.#loaded;
    this.#adminSource = {
      version: VERSION,
      startedAt: this.#startedAt,
      mode: this.#options.redis === undefined ? "memory" : "redis",
      get workerId() {
        return fleet()?.workerId;
      },
      get proxyUrl() {
        return proxy.#url;
      },
      get adminUrl() {
        return proxy.adminUrl;
      },
      stats: this.#stats,
      get defaultLimit() {
        return limits.defaultLimit;
      },
      limitTable: () => this.#limitsView(),
      ready: () => this.#readiness(),
      redisUp: () => {
        const up = fleet()?.up;
        return this.#options.redis === undefined || typeof up !== "boolean" ? null : up;
      },
      hosts: () => this.#hostViews(),
      limitFor: (host) => limits.limitFor(hostKey(host)),
      // The admin API changes the runtime table (the fleet's in distributed mode), and this
      // process's override of the same rule gives way, so that the change applies here.
      setHostLimit: async (host, limit) => {
        await this.setFleetLimits({ hosts: { [host]: limit } });
        limits.delete(host);
        this.#logger.info("Limit of {host} set to {limit} through the admin API", { host, limit });
      },
      removeHostLimit: async (host) => {
        await this.setFleetLimits({ hosts: { [host]: null } });
        limits.delete(host);
        this.#logger.info("Limit of {host} removed through the admin API", { host });
      },
      setDefaultLimit: async (limit) => {
        await this.setFleetLimits({ default: limit });
        limits.deleteDefault();
        this.#logger.info("Default limit set to {limit} through the admin API", { limit });
      },
    };
    if (this.#options.loadRules) {
      this.#adminSource.reload = async () => {
        const result = await this.reload();
        return result.ok
          ? { ok: true, changes: result.changes.map((c) => c.rule) }
          : { ok: false, error: result.error };
      };
    }
    if (this.#options.redis !== undefined) {
      this.#adminSource.workers = async (): Promise<WorkerInfo[]> => {
        const limiter = fleet();
        if (!limiter?.workers) {
          throw new Error(limiter ? "The limiter keeps no worker registry" : "Proxy not started");
        }
        return (await limiter.workers()).map((w) => ({
          id: w.id,
          hostname: w.hostname,
          pid: w.pid,
          version: w.version,
          adminUrl: w.adminUrl || undefined,
          proxyUrl: w.proxyUrl || undefined,
          startedAt: Date.parse(w.started) || 0,
          open: w.connections,
        }));
      };
    }
    return this.#adminSource;
  }

  /** The limits in effect, each with its layer. */
  #limitsView(): LimitsView {
    const overrides: LimitRules = { hosts: this.#limits.entries() };
    const ownDefault = this.#limits.ownDefault;
    if (ownDefault !== undefined) overrides.default = ownDefault;
    return limitsView([
      { source: "flag", rules: this.#flagRules },
      { source: "file", rules: this.#fileRules },
      { source: "runtime", rules: this.#fleetRules },
      { source: "override", rules: overrides },
    ]);
  }

  #readiness(): Readiness {
    if (this.#stopping) return { ok: false, reason: "shutting down" };
    if (!this.#server?.accepting) return { ok: false, reason: "proxy port not listening" };
    const up = this.#loaded?.up;
    if (up === false && (this.#options.failureMode ?? DEFAULTS.failureMode) === "closed") {
      return { ok: false, reason: "Redis unreachable and failure mode is closed" };
    }
    return { ok: true };
  }

  /** The pool's hosts, with the fleet's cached counts in distributed mode. */
  *#hostViews(): Iterable<UpstreamHostView> {
    const counts = this.#loaded?.fleetCounts?.();
    const seen = new Set<string>();
    for (const view of this.#server?.hosts() ?? []) {
      seen.add(view.host);
      yield counts ? { ...view, fleetOpen: counts.get(view.host) ?? view.open } : view;
    }
    if (!counts) return;
    for (const [host, open] of counts) {
      if (!seen.has(host) && open > 0) yield { host, open: 0, idle: 0, fleetOpen: open };
    }
  }

  /** The limiter; the Redis client is imported on first use only. */
  #loadLimiter(): Promise<Limiter> {
    this.#limiter ??= this.#options.redis === undefined
      ? Promise.resolve(new LocalLimiter())
      : this.#loadRedisLimiter(this.#options.redis);
    return this.#limiter;
  }

  async #loadRedisLimiter(redis: RedisConfig): Promise<Limiter> {
    let module;
    try {
      module = await import("./limit/redis_limiter.ts");
    } catch (err) {
      if (err instanceof Deno.errors.NotCapable) {
        throw new Deno.errors.NotCapable(
          "Redis mode needs environment access because the Redis client lists the environment " +
            "as it loads: run with --ignore-env or --allow-env",
          { cause: err },
        );
      }
      throw err;
    }
    return new module.RedisLimiter({
      redis,
      prefix: this.#options.redisPrefix ?? DEFAULTS.redisPrefix,
      lease: this.#options.lease ?? DEFAULTS.lease,
      timeout: this.#options.redisTimeout ?? DEFAULTS.redisTimeout,
      failureMode: this.#options.failureMode ?? DEFAULTS.failureMode,
      logger: this.#logger.getChild("redis"),
    });
  }

  /**
   * Stops gracefully: stops accepting, lets open exchanges and tunnels finish
   * for up to `graceMs` milliseconds (default 10000), closes the rest and
   * removes this worker's entries from Redis.
   *
   * @example
   * ```ts ignore
   * await proxy.stop({ graceMs: 5000 });
   * ```
   */
  stop(options: { graceMs?: number } = {}): Promise<void> {
    if (this.#stopping) return this.#stopping;
    const starting = this.#starting;
    if (!starting) {
      // Never started: only a limiter loaded by activeConnectionsForHost to release.
      const limiter = this.#limiter;
      this.#limiter = null;
      return limiter ? limiter.then((l) => l.close(), () => {}) : Promise.resolve();
    }
    this.#stopping = (async () => {
      await starting.catch(() => {});
      const server = this.#server;
      this.#server = null;
      if (server) {
        await server.shutdown(options.graceMs ?? DEFAULTS.shutdownGrace);
        await this.#served;
      }
      clearInterval(this.#guard);
      const workerId = this.#loaded?.workerId;
      if (this.#fleetLimits && workerId && this.#loaded?.up !== false) {
        await this.#fleetLimits.forgetFile(workerId).catch(() => {});
      }
      this.#fleetLimits?.close();
      this.#fleetLimits = null;
      const limiter = await this.#limiter?.catch(() => null);
      await limiter?.close();
      await this.#admin?.close();
      this.#admin = null;
      this.#url = null;
      if (server) this.#logger.info("Proxy stopped");
    })();
    return this.#stopping;
  }

  /**
   * Starts the proxy and resolves when it has stopped (by
   * {@linkcode stop}) and cleaned up.
   *
   * @example
   * ```ts ignore
   * await new ProxyRateLimiter({ port: 8080 }).listenAndServe();
   * ```
   */
  async listenAndServe(): Promise<void> {
    await this.start();
    await this.#served;
    await this.#stopping;
  }

  /** Stops the proxy; used by `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/** The outcome of {@linkcode ProxyRateLimiter.reload}. */
export type ReloadOutcome =
  | {
    /** The rules were read and swapped in. */
    ok: true;
    /** The rules that changed, each as `rule`, `a` (before) and `b` (after). */
    changes: RuleDifference[];
  }
  | {
    /** The rules could not be read; the current ones stay. */
    ok: false;
    /** What is wrong, as one line (`dprl.yaml:7:3: ...` for a config file). */
    error: string;
  };

/** Guard ticks (of a second) between two reads of the fleet's addresses. */
const FLEET_GUARD_TICKS = 5;

/** The address of a URL from the worker registry, or none. */
function urlAddress(url: string): { hostname: string; port: number }[] {
  try {
    const u = new URL(url);
    const port = Number(u.port || (u.protocol === "https:" ? 443 : 80));
    return [{ hostname: u.hostname.replace(/^\[|\]$/g, ""), port }];
  } catch {
    return [];
  }
}

function checkLimit(limit: number): number {
  if (!Number.isSafeInteger(limit)) throw new TypeError(`Limit must be an integer, got ${limit}`);
  return Math.max(0, limit);
}

/** The Redis nodes a configuration names, to keep them out of clients' reach. */
function redisNodes(config: RedisConfig | undefined): { host: string; port: number }[] {
  if (config === undefined) return [];
  if (typeof config === "string") {
    try {
      const url = new URL(config);
      return [{ host: url.hostname.replace(/^\[|\]$/g, ""), port: Number(url.port || 6379) }];
    } catch {
      return [];
    }
  }
  if ("cluster" in config && Array.isArray(config.cluster)) return config.cluster;
  if ("defineCommand" in config) return []; // a connected client: its address is its own
  const options = config as RedisOptions;
  return [
    ...(options.sentinels ?? []),
    { host: options.host ?? "127.0.0.1", port: options.port ?? 6379 },
  ];
}
