/**
 * {@linkcode ProxyRateLimiter}: the proxy with its limits, in memory or shared
 * through Redis. `mod.ts` re-exports it; the command line builds one.
 *
 * @module
 */

import { getLogger, type Logger } from "@logtape/logtape";
import { DEFAULTS } from "./defaults.ts";
import { LimitTable } from "./limit/limit_table.ts";
import type { LimitRules } from "./limit/rules/rules.ts";
import type { RuleDifference } from "./limit/rules/diff.ts";
import { RuleLayers } from "./limit/rule_layers.ts";
import type { FleetLimits } from "./limit/fleet_limits.ts";
import { applyChanges, checkChanges, type FleetLimitChanges } from "./limit/limit_changes.ts";
import { mergeRuns } from "./config/reload.ts";
import { hostKey } from "./limit/host_key.ts";
import { type LoadedLimiter, loadLimiter, type RedisFleet } from "./limit/load_limiter.ts";
import { ProxyServer } from "./proxy/proxy_server.ts";
import { joinReloads, ProxyPort } from "./proxy/proxy_port.ts";
import type { ClientListener } from "./proxy/client_conn.ts";
import { checkUsers, type ClientPolicy } from "./access/client_policy.ts";
import type { DestinationPolicy } from "./access/destination_policy.ts";
import { ParentProxies } from "./proxy/parent_proxy.ts";
import { FleetGuard } from "./access/fleet_guard.ts";
import { proxyPolicies } from "./access/proxy_policies.ts";
import { ProxyStats } from "./metrics/proxy_stats.ts";
import { logAccess } from "./log_format.ts";
import { type AdminHandlerOptions, createAdminHandler } from "./admin/admin_handler.ts";
import { type AdminServer, checkAdminAddress, startAdminServer } from "./admin/admin_server.ts";
import { ProxyAdminSource } from "./admin/proxy_admin_source.ts";
import type { ProxyRateLimiterOptions, ReloadOutcome } from "./proxy_options.ts";
import { VERSION } from "./version.ts";

export type { AdminOptions, ProxyRateLimiterOptions, ReloadOutcome } from "./proxy_options.ts";

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
  /** Flag, file (the `rules` option, `setRules` or the last reload) and runtime rules. */
  #layers: RuleLayers;
  #fleetLimits: FleetLimits | null = null;
  /** The limiter, once loaded (the Redis client is loaded only when asked for). */
  #limiter: Promise<LoadedLimiter> | null = null;
  #starting: Promise<void> | null = null;
  #server: ProxyServer | null = null;
  #port: ProxyPort | null = null;
  #served: Promise<void> | null = null;
  #stopping: Promise<void> | null = null;
  #stats: ProxyStats;
  /** The limiter once loaded, for the control plane's synchronous reads. */
  #loaded: LoadedLimiter | null = null;
  #admin: AdminServer | null = null;
  #adminSource: ProxyAdminSource | null = null;
  #startedAt = Date.now();
  /** Keeps the Redis servers the limiter meets out of clients' reach. */
  #guard: FleetGuard | null = null;
  /** The parent proxies of `upstreamProxy`. */
  #parents: ParentProxies;

  /**
   * Creates a proxy; nothing listens until {@linkcode start}. Throws a
   * RangeError when the admin server would listen on a non-loopback
   * address without a token, and a RangeError or TypeError on a bad entry
   * of `users` (a value that looks like a hash but is not bcrypt, say), or
   * on a bad `upstreamProxy` URL.
   */
  constructor(options: ProxyRateLimiterOptions = {}) {
    const admin = options.admin;
    if (admin) checkAdminAddress(admin.hostname ?? DEFAULTS.adminHostname, admin.token);
    checkUsers(options.users ?? {});
    this.#parents = new ParentProxies(options.upstreamProxy);
    this.#options = options;
    this.#logger = getLogger(["dprl"]);
    // Idle hosts keep a record of their own as far as /metrics shows one.
    this.#stats = new ProxyStats({ idleHosts: admin?.metricsMaxHosts });
    // This process's overrides, above the rules as before rules existed.
    this.#limits = new LimitTable(options.defaultMaxConnectionsPerHost, options.hostLimits);
    this.#layers = new RuleLayers({
      flag: options.flagRules,
      file: options.rules,
      limits: this.#limits,
      logger: this.#logger,
    });
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
    return this.#layers.setFile(rules);
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
    const tls = this.#port?.reloadable ? await this.#port.reloadTls() : null;
    if (!load) {
      if (tls) return tls;
      throw new Error("Proxy has no loadRules option nor tls function to reload from");
    }
    const outcome = await this.#layers.reload(load, (result) => this.#stats.onConfigReload(result));
    if (outcome.ok) this.#compareFiles();
    return joinReloads(outcome, tls);
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
    const rules = applyChanges(this.#layers.runtime, checkChanges(changes));
    this.#layers.setRuntime(rules, "runtime change");
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
    return await (await this.#loadLimiter()).limiter.count(hostKey(host));
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
    return this.#port?.url ?? null;
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

  /**
   * Opens what the proxy runs on, one step after the other. Each step that
   * opens something defers its closing; when a later step fails, what was
   * opened is closed in reverse order and the error is thrown. Once all is
   * open, {@linkcode stop} closes it.
   */
  async #listen(): Promise<void> {
    await using opened = new AsyncDisposableStack();
    const { limiter, fleet } = await this.#openLimiter(opened);
    const listener = await this.#openListener(opened);
    const o = this.#options;
    const { clients, destinations } = await proxyPolicies(o, listener.addr, this.#logger);
    this.#openServer(opened, { listener, limiter, clients, destinations });
    this.#openGuard(opened, fleet, destinations);
    if (fleet !== null) await this.#openFleetLimits(opened, fleet);
    const address = `${listener.addr.hostname}:${listener.addr.port}`;
    const url = this.#port!.url.href;
    this.#logger.info("Proxy listening on {url} (bound to {address})", { url, address });
    await this.#openAdmin(opened, fleet, destinations);
    // All open: stop() closes it from now on.
    opened.move();
  }

  /** Loads the limiter (in distributed mode, the Redis client and its connection). */
  async #openLimiter(opened: AsyncDisposableStack): Promise<LoadedLimiter> {
    const loaded = await this.#loadLimiter();
    opened.defer(async () => {
      this.#loaded = null;
      this.#limiter = null;
      await loaded.limiter.close();
    });
    if (loaded.fleet !== null) loaded.fleet.onCall = (ms) => this.#stats.onRedisCall(ms);
    this.#loaded = loaded;
    return loaded;
  }

  /** Binds the proxy port (TLS with the `tls` option) and sets the proxy URL. */
  async #openListener(opened: AsyncDisposableStack): Promise<ClientListener> {
    const o = this.#options;
    const port = await ProxyPort.open({
      hostname: o.hostname ?? DEFAULTS.hostname,
      port: o.port ?? DEFAULTS.port,
      tls: o.tls,
      handshakeTimeout: o.timeouts?.head ?? DEFAULTS.timeouts.head,
      maxClients: o.maxClients ?? DEFAULTS.maxClients,
      maxClientsPerIp: o.maxClientsPerIp ?? DEFAULTS.maxClientsPerIp,
      onHandshakeFailure: () => this.#stats.onTlsHandshakeFailure(),
      logger: this.#logger,
    });
    opened.defer(() => {
      this.#port = null;
      port.listener.close();
    });
    this.#port = port;
    return port.listener;
  }

  /** Starts the engine on the listener. */
  #openServer(opened: AsyncDisposableStack, parts: {
    listener: ClientListener;
    limiter: LoadedLimiter["limiter"];
    clients: ClientPolicy;
    destinations: DestinationPolicy;
  }): void {
    const o = this.#options, access = getLogger(["dprl", "access"]);
    const server = new ProxyServer({
      ...parts,
      limits: this.#limits,
      rejectStatus: o.rejectStatus ?? DEFAULTS.rejectStatus,
      timeouts: o.timeouts,
      maxHeadSize: o.maxHeadSize,
      maxIdlePerHost: o.maxIdlePerHost,
      logger: this.#logger,
      stats: this.#stats,
      onAccess: o.accessLog ? (entry) => logAccess(access, entry) : undefined,
      collectWhenIdle: o.collectWhenIdle,
      maxClients: o.maxClients,
      maxClientsPerIp: o.maxClientsPerIp,
      queueTimeout: o.queueTimeout,
      queueMax: o.queueMax,
      retryAfterMax: o.retryAfterMax,
      maxRate: o.maxRate,
      adaptive: o.adaptive,
      adaptiveMin: o.adaptiveMin,
      parents: this.#parents,
    });
    this.#server = server;
    const served = server.serve();
    this.#served = served;
    opened.defer(async () => {
      this.#server = null;
      await server.shutdown(0);
      await served;
    });
  }

  /** Keeps the Redis servers the limiter meets and the fleet's workers out of clients' reach. */
  #openGuard(
    opened: AsyncDisposableStack,
    fleet: RedisFleet | null,
    destinations: DestinationPolicy,
  ): void {
    this.#guard = opened.use(new FleetGuard({ destinations, fleet, logger: this.#logger }));
    this.#guard.start();
  }

  /**
   * In distributed mode, follows the fleet's runtime limit table and tells
   * the fleet this process's file rules.
   */
  async #openFleetLimits(opened: AsyncDisposableStack, fleet: RedisFleet): Promise<void> {
    const client = fleet.client;
    const { FleetLimits } = await import("./limit/fleet_limits.ts");
    this.#fleetLimits = new FleetLimits({
      client,
      prefix: this.#options.redisPrefix ?? DEFAULTS.redisPrefix,
      pollMs: DEFAULTS.fleetLimitsPoll,
      timeout: this.#options.redisTimeout ?? DEFAULTS.redisTimeout,
      logger: this.#logger,
      onChange: (rules) => this.#layers.setRuntime(rules, "fleet table"),
    });
    opened.defer(() => this.#closeFleetLimits());
    await this.#fleetLimits.start();
    // In the worker registry from the start: the fleet compares files among live workers.
    fleet.setWorkerInfo({ version: VERSION, proxyUrl: this.#port?.url.href ?? "" });
    this.#compareFiles();
  }

  /** Forgets this worker's file rules in Redis (when it answers) and stops following the table. */
  async #closeFleetLimits(): Promise<void> {
    const fleet = this.#loaded?.fleet ?? null;
    if (this.#fleetLimits && fleet !== null && fleet.up) {
      await this.#fleetLimits.forgetFile(fleet.workerId).catch(() => {});
    }
    this.#fleetLimits?.close();
    this.#fleetLimits = null;
  }

  /** Starts the admin server, when asked for; the control plane is no destination either. */
  async #openAdmin(
    opened: AsyncDisposableStack,
    fleet: RedisFleet | null,
    destinations: DestinationPolicy,
  ): Promise<void> {
    const options = this.#options.admin;
    if (!options) return;
    const admin = await startAdminServer({ source: this.#source(), ...options });
    this.#admin = admin;
    opened.defer(async () => {
      this.#admin = null;
      await admin.close();
    });
    await destinations.protect(
      options.hostname ?? DEFAULTS.adminHostname,
      admin.url.port ? Number(admin.url.port) : 80,
    );
    fleet?.setWorkerInfo({ adminUrl: admin.url.href, version: VERSION });
    this.#logger.info("Admin server listening on {url}", { url: admin.url.href });
  }

  /**
   * Publishes this proxy's file rules and warns, naming the rules, about
   * every live worker whose file says otherwise.
   */
  #compareFiles(): void {
    const table = this.#fleetLimits;
    const fleet = this.#loaded?.fleet ?? null;
    if (!table || fleet === null) return;
    const live = async () => (await fleet.workers()).map((w) => w.id);
    table.compareFiles(fleet.workerId, this.#layers.own(), live);
  }

  /** The proxy as the admin handler sees it. */
  #source(): ProxyAdminSource {
    this.#adminSource ??= new ProxyAdminSource({
      startedAt: this.#startedAt,
      distributed: this.#options.redis !== undefined,
      failureMode: this.#options.failureMode ?? DEFAULTS.failureMode,
      stats: this.#stats,
      limits: this.#limits,
      logger: this.#logger,
      state: () => ({
        proxyUrl: this.#port?.url ?? null,
        adminUrl: this.adminUrl,
        server: this.#server,
        fleet: this.#loaded?.fleet ?? null,
        stopping: this.#stopping !== null,
      }),
      layers: this.#layers,
      setFleetLimits: (changes) => this.setFleetLimits(changes),
      reload: this.#options.loadRules || typeof this.#options.tls === "function"
        ? () => this.reload()
        : undefined,
      parents: this.#parents,
    });
    return this.#adminSource;
  }

  /** The limiter; the Redis client is imported on first use only. */
  #loadLimiter(): Promise<LoadedLimiter> {
    this.#limiter ??= loadLimiter({
      redis: this.#options.redis,
      prefix: this.#options.redisPrefix ?? DEFAULTS.redisPrefix,
      lease: this.#options.lease ?? DEFAULTS.lease,
      timeout: this.#options.redisTimeout ?? DEFAULTS.redisTimeout,
      failureMode: this.#options.failureMode ?? DEFAULTS.failureMode,
      logger: this.#logger.getChild("redis"),
    });
    return this.#limiter;
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
      return limiter ? limiter.then((l) => l.limiter.close(), () => {}) : Promise.resolve();
    }
    this.#stopping = (async () => {
      await starting.catch(() => {});
      const server = this.#server;
      this.#server = null;
      if (server) {
        await server.shutdown(options.graceMs ?? DEFAULTS.shutdownGrace);
        await this.#served;
      }
      this.#guard?.[Symbol.dispose]();
      await this.#closeFleetLimits();
      const loaded = await this.#limiter?.catch(() => null);
      await loaded?.limiter.close();
      await this.#admin?.close();
      this.#admin = null;
      this.#port = null;
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
