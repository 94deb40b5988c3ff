/**
 * dprl: an HTTP/HTTPS forward proxy that caps the number of concurrent
 * upstream connections per host, in one process or across a fleet of
 * processes that share their counters through Redis.
 *
 * Point `HTTP_PROXY`/`HTTPS_PROXY` (or any proxy-aware client) at it; every
 * upstream host gets at most N open connections, and a request over the cap is
 * refused at once with an explained error instead of overloading the host.
 *
 * Run as a program, this module starts the command-line proxy
 * (`deno run --allow-net --allow-env jsr:@dprl/cli --max-connections 25`).
 *
 * @example Local in-memory limits
 * ```ts ignore
 * import { ProxyRateLimiter } from "@dprl/cli";
 *
 * await using proxy = new ProxyRateLimiter({ defaultMaxConnectionsPerHost: 20 });
 * proxy.setHostLimit("api.example.com", 5);
 * await proxy.start();
 *
 * const client = Deno.createHttpClient({ proxy: { url: proxy.proxyUrl!.href } });
 * const res = await fetch("https://api.example.com/data", { client });
 * ```
 *
 * @example A fleet sharing one cap through Redis
 * ```ts ignore
 * import { ProxyRateLimiter } from "@dprl/cli";
 *
 * const proxy = new ProxyRateLimiter({
 *   port: 8080,
 *   defaultMaxConnectionsPerHost: 50,
 *   redis: "redis://127.0.0.1:6379",
 * });
 * await proxy.listenAndServe(); // resolves when stopped
 * ```
 *
 * @module
 */

import { getLogger, type Logger } from "@logtape/logtape";
import { LimitTable } from "./lib/limit/limit_table.ts";
import { hostKey } from "./lib/limit/host_key.ts";
import type { Limiter } from "./lib/limit/limiter.ts";
import { LocalLimiter } from "./lib/limit/local_limiter.ts";
import { type FailureMode, RedisLimiter } from "./lib/limit/redis_limiter.ts";
import type { RedisConfig } from "./lib/limit/redis_config.ts";
import { ProxyServer, type Timeouts } from "./lib/proxy/proxy_server.ts";

export { hostKey } from "./lib/limit/host_key.ts";
export type { FailureMode } from "./lib/limit/redis_limiter.ts";
export type {
  RedisClient,
  RedisClusterConfig,
  RedisConfig,
  RedisNode,
  RedisOptions,
} from "./lib/limit/redis_config.ts";
export type { Timeouts } from "./lib/proxy/proxy_server.ts";
export { LimiterUnavailableError } from "./lib/limit/limiter.ts";

/** The version of dprl. */
export const VERSION = "0.1.0";

/** The default prefix of dprl's Redis keys. */
export const REDIS_KEY_PREFIX = "dprl";

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
   * Without it the counters live in this process's memory.
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
  #limiter: Limiter;
  #logger: Logger;
  #server: ProxyServer | null = null;
  #url: URL | null = null;
  #served: Promise<void> | null = null;
  #stopping: Promise<void> | null = null;

  /** Creates a proxy; nothing listens until {@linkcode start}. */
  constructor(options: ProxyRateLimiterOptions = {}) {
    this.#options = options;
    this.#limits = new LimitTable(
      options.defaultMaxConnectionsPerHost ?? 0,
      options.hostLimits,
    );
    this.#logger = getLogger(["dprl"]);
    this.#limiter = options.redis === undefined ? new LocalLimiter() : new RedisLimiter({
      redis: options.redis,
      prefix: options.redisPrefix ?? REDIS_KEY_PREFIX,
      lease: options.lease ?? 15_000,
      timeout: options.redisTimeout ?? 1_000,
      failureMode: options.failureMode ?? "closed",
      logger: this.#logger.getChild("redis"),
    });
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
  activeConnectionsForHost(host: string): Promise<number> {
    return this.#limiter.count(hostKey(host));
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
   * Starts listening and serving in the background; resolves once the port
   * is bound.
   *
   * @example
   * ```ts ignore
   * await proxy.start();
   * ```
   */
  // deno-lint-ignore require-await
  async start(): Promise<void> {
    if (this.#server) throw new Error("Proxy is already started");
    if (this.#stopping) throw new Error("Proxy was stopped and cannot start again");
    const listener = Deno.listen({
      hostname: this.#options.hostname ?? "127.0.0.1",
      port: this.#options.port ?? 0,
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
    this.#server = new ProxyServer({
      listener,
      limits: this.#limits,
      limiter: this.#limiter,
      rejectStatus: this.#options.rejectStatus ?? 500,
      timeouts: this.#options.timeouts,
      maxHeadSize: this.#options.maxHeadSize,
      maxIdlePerHost: this.#options.maxIdlePerHost,
      logger: this.#logger,
    });
    this.#served = this.#server.serve();
    this.#logger.info("Proxy listening on {url} (bound to {address})", {
      url: this.#url.href,
      address: `${addr.hostname}:${addr.port}`,
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
    const server = this.#server;
    if (!server) return this.#stopping ?? Promise.resolve();
    this.#server = null;
    this.#stopping = (async () => {
      await server.shutdown(options.graceMs ?? 10_000);
      await this.#served;
      await this.#limiter.close();
      this.#url = null;
      this.#logger.info("Proxy stopped");
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

if (import.meta.main) {
  const { main } = await import("./cli.ts");
  Deno.exit(await main(Deno.args));
}
