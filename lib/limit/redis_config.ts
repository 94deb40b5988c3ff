/**
 * How dprl is told to reach Redis.
 *
 * @module
 */

/** A Redis (or Sentinel, or Cluster) node address. */
export interface RedisNode {
  /** Host name or IP address. */
  host: string;
  /** TCP port. */
  port: number;
}

/**
 * Options of one Redis connection, as the ioredis client takes them: the
 * common ones are named here; any other ioredis option may be given too.
 *
 * @example
 * ```ts
 * import type { RedisOptions } from "@dprl/cli";
 *
 * const direct: RedisOptions = { host: "10.0.0.5", port: 6379, password: "secret", db: 2 };
 * const privateCa: RedisOptions = {
 *   url: "rediss://redis.internal:6380",
 *   tls: { ca: "-----BEGIN CERTIFICATE-----\n..." },
 * };
 * const sentinel: RedisOptions = {
 *   sentinels: [{ host: "10.0.0.7", port: 26379 }],
 *   name: "mymaster",
 * };
 * ```
 */
export interface RedisOptions {
  /**
   * A `redis://` or `rediss://` URL; what it says wins over the other
   * options, which add to it (e.g. `tls` with a private CA for `rediss://`).
   */
  url?: string;
  /** Host of a single Redis. Default `"127.0.0.1"`. */
  host?: string;
  /** Port of a single Redis. Default 6379. */
  port?: number;
  /** ACL user name. */
  username?: string;
  /** Password. */
  password?: string;
  /** Database number. Default 0. */
  db?: number;
  /**
   * TLS: `{}` enables it with the system's CAs; `ca` (PEM) trusts a private
   * CA, `cert` and `key` (PEM) present a client certificate for mutual TLS.
   * Any other Node.js `tls.connect` option may be given too.
   */
  tls?: {
    /** PEM of the CA (or CAs) that signed the server's certificate. */
    ca?: string;
    /** PEM of the client certificate, for mutual TLS. */
    cert?: string;
    /** PEM of the client certificate's private key. */
    key?: string;
    /** Any other `tls.connect` option. */
    [option: string]: unknown;
  };
  /** Sentinel nodes; with {@linkcode RedisOptions.name} selects Sentinel mode. */
  sentinels?: RedisNode[];
  /** Name of the master the Sentinels watch. */
  name?: string;
  /** Any other ioredis option. */
  [option: string]: unknown;
}

/**
 * A Redis Cluster: seed nodes and ioredis cluster options.
 *
 * @example
 * ```ts
 * import type { RedisClusterConfig } from "@dprl/cli";
 *
 * const cluster: RedisClusterConfig = {
 *   cluster: [{ host: "10.0.0.5", port: 7000 }, { host: "10.0.0.6", port: 7000 }],
 *   options: { redisOptions: { password: "secret" } },
 * };
 * ```
 */
export interface RedisClusterConfig {
  /** Seed nodes; the rest of the cluster is discovered from them. */
  cluster: RedisNode[];
  /** ioredis cluster options. */
  options?: Record<string, unknown>;
}

/**
 * A connected ioredis `Redis` or `Cluster` client. dprl uses it as it is and
 * leaves it open when it stops.
 */
export interface RedisClient {
  /** The ioredis connection status, e.g. `"ready"`. */
  readonly status: string;
  /** Registers a Lua script as a command (ioredis `defineCommand`). */
  defineCommand(name: string, definition: { numberOfKeys?: number; lua: string }): void;
}

/**
 * Where dprl shares its counters: a `redis://` or `rediss://` URL, the
 * options of one Redis or of a Sentinel set, a Redis Cluster, or a connected
 * ioredis client.
 *
 * @example
 * ```ts
 * import type { RedisConfig } from "@dprl/cli";
 *
 * const url: RedisConfig = "redis://127.0.0.1:6379/0";
 * ```
 */
export type RedisConfig = string | RedisOptions | RedisClusterConfig | RedisClient;

/**
 * What to do when Redis cannot be reached or does not answer in time:
 * `"closed"` refuses new connections, `"open"` admits them without counting,
 * `"local"` enforces each host's limit in this process's memory.
 */
export type FailureMode = "closed" | "open" | "local";
