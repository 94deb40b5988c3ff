/**
 * The options of {@linkcode ProxyRateLimiter} and the outcome of its reload.
 *
 * @module
 */

import type { TlsSource } from "./proxy/proxy_port.ts";
import type { Timeouts } from "./defaults.ts";
import type { LimitRules } from "./limit/rules/rules.ts";
import type { FailureMode, RedisConfig } from "./limit/redis_config.ts";
import type { LoadedRules, ReloadContext } from "./config/reload.ts";

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
  /**
   * The longest pause a host may ask for with `Retry-After` on a 429 or 503
   * response to a plain-HTTP request, in milliseconds: until it ends, new
   * requests and tunnels to the host wait in the queue (when their queue
   * timeout reaches past it) or get a 503 with `Retry-After`. 0 honours
   * none. Default 60000. In distributed mode the whole fleet honours it.
   */
  retryAfterMax?: number;
  /**
   * New upstream requests (plain HTTP) and tunnels (CONNECT) per second that
   * each host may be sent; over it, a request waits for its turn (when its
   * queue timeout reaches that far) or is refused with `rejectStatus` and
   * `Retry-After`. In distributed mode the rate is the fleet's. No rate by
   * default. A host rule, group (shared by its members) or the default rule
   * of `rules` may set its own (`rate`).
   */
  maxRate?: number;
  /**
   * Each host's limit adapts to what the host serves: it moves between
   * `adaptiveMin` and the host's configured limit (its ceiling; an unlimited
   * host adapts up to 1000), following the time to the response head, 429
   * and 503 answers and failures. In distributed mode the whole fleet
   * enforces one limit per host. Default `false`. A host rule, group or the
   * default rule of `rules` may say otherwise (`adaptive`).
   */
  adaptive?: boolean;
  /** The floor of an adaptive limit, 1 or more. Default 1. */
  adaptiveMin?: number;
  /**
   * TLS on the proxy port: clients speak HTTPS to the proxy (`https://` proxy
   * URLs). The certificate chain and key in PEM, and with `clientCa` the CA
   * whose certificates every client must present (the name in a client's
   * certificate then names it in the access log). Given as a function, it is
   * read at start and again on each {@linkcode ProxyRateLimiter.reload}: new
   * handshakes get the new pair, connections open keep theirs, and a pair that
   * cannot be read or used keeps the one served. A handshake may take up to the
   * head timeout. Plain TCP without it.
   */
  tls?: TlsSource;
  /**
   * Parent proxies to go out through (`http://` or `https://` URLs, each
   * with optional `user:password@`, which go to the parent only): a new
   * upstream connection goes through the one with the fewest open
   * connections, skipping for a while (1 s, doubling to 30 s) one that
   * failed to connect. A rule's `via` may name others or say `direct`.
   * Limits, rates, queue and destination rules apply to the target host as
   * without a parent; a target name is not resolved here (the parent
   * resolves it). Default: none, every host is dialed directly.
   */
  upstreamProxy?: string[];
  /** Logs one line per exchange or tunnel (category `["dprl", "access"]`). Default `false`. */
  accessLog?: boolean;
  /**
   * Runs one full garbage collection when no request or tunnel has begun
   * for a second and the heap has grown by 4 MiB since the last one, so
   * that a quiet proxy holding idle tunnels does not keep the garbage of
   * their opening in its resident memory. The process's own: it sets V8's
   * `--expose-gc` flag at start. `dprl` (the CLI) turns it on. Default `false`.
   */
  collectWhenIdle?: boolean;
  /**
   * Starts an admin server with the proxy (and stops it with the proxy):
   * `/healthz`, `/readyz`, `/metrics`, the JSON API under `/api/` and the
   * dashboard at `/`. Without it no admin port is opened;
   * {@linkcode ProxyRateLimiter.adminHandler} still serves the same
   * endpoints from an application's own server.
   */
  admin?: AdminOptions;
}

export type { ReloadOutcome } from "./limit/rule_layers.ts";
