/**
 * Every default value of dprl, in one place: the module API, the command
 * line and its `--help` read them from here.
 *
 * @module
 */

/** Bounds on every wait, in milliseconds. */
export interface Timeouts {
  /** Time for a new client to send a complete request head. Default 10000. */
  head: number;
  /** Time to open an upstream connection. Default 10000. */
  connect: number;
  /**
   * Time an exchange or tunnel may go without a byte in either direction
   * (including the wait for a response). Default 300000.
   */
  idle: number;
  /** Time a client connection may idle between requests. Default 60000. */
  keepAlive: number;
  /** Time an idle upstream socket stays pooled for reuse. Default 30000. */
  upstreamIdle: number;
}

/** The defaults, by option. */
export const DEFAULTS = {
  /** Port of the command line's proxy (the module API picks a free one). */
  cliPort: 8080,
  /** Address the command line listens on. */
  cliHostname: "0.0.0.0",
  /** Port of the module API's proxy: 0 picks a free one. */
  port: 0,
  /** Address the module API listens on. */
  hostname: "127.0.0.1",
  /** Limit of hosts without an override; 0 is unlimited. */
  defaultMaxConnectionsPerHost: 0,
  /** Status sent when a host is at its limit. */
  rejectStatus: 500,
  /** Largest request or response head, in bytes. */
  maxHeadSize: 64 * 1024,
  /** Most header fields in a request (more gets 431) or a response (502). */
  maxHeaderFields: 256,
  /** Idle upstream sockets kept per host. */
  maxIdlePerHost: 64,
  /** Timeouts, in milliseconds. */
  timeouts: {
    head: 10_000,
    connect: 10_000,
    idle: 300_000,
    keepAlive: 60_000,
    upstreamIdle: 30_000,
  } as Readonly<Timeouts>,
  /** Grace period of a stop, in milliseconds. */
  shutdownGrace: 10_000,
  /** Prefix of the Redis keys. */
  redisPrefix: "dprl",
  /** Worker lease in Redis, in milliseconds. */
  lease: 15_000,
  /** Time a Redis call may take, in milliseconds. */
  redisTimeout: 1_000,
  /** What happens to new connections while Redis is unreachable. */
  failureMode: "closed" as "closed" | "open" | "local",
  /** Log level of the command line. */
  logLevel: "info",
  /** Master name known to Redis Sentinels. */
  redisMasterName: "mymaster",
} as const;
