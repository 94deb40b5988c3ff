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
  /**
   * Once one side of a tunnel has ended, time the other side gets before
   * both close. Default 30000.
   */
  fin: number;
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
  /** Most header fields in a request (more gets 431) or a response (502), as Apache's default. */
  maxHeaderFields: 100,
  /** Idle upstream sockets kept per host. */
  maxIdlePerHost: 64,
  /** Timeouts, in milliseconds. */
  timeouts: {
    head: 10_000,
    connect: 10_000,
    idle: 300_000,
    keepAlive: 60_000,
    upstreamIdle: 30_000,
    fin: 30_000,
  } as Readonly<Timeouts>,
  /** Open client connections in all; beyond it new ones get a 503. 0: no cap. */
  maxClients: 10_000,
  /** Time a request over its host's limit may wait for a slot (ms); 0 refuses at once. */
  queueTimeout: 0,
  /** Requests that may wait per host in one process; beyond it, refused at once. */
  queueMax: 1000,
  /**
   * Longest pause a host's `Retry-After` (on a 429 or 503) may ask for, in
   * milliseconds; 0 honours none.
   */
  retryAfterMax: 60_000,
  /** The floor of an adaptive limit. */
  adaptiveMin: 1,
  /** Open client connections per client address. 0: no cap. */
  maxClientsPerIp: 0,
  /** Grace period of a stop, in milliseconds. */
  shutdownGrace: 10_000,
  /** Quiet time after a change of the config file before it is reloaded, in milliseconds. */
  configWatchDebounce: 250,
  /** How often each proxy checks the version of the fleet's limit table, in milliseconds. */
  fleetLimitsPoll: 500,
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
  /** Clients admitted without authentication: loopback and private networks. */
  allowClients: [
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
  ] as readonly string[],
  /** Master name known to Redis Sentinels. */
  redisMasterName: "mymaster",
  /** Address of the admin server (metrics, health, API, dashboard). */
  adminHostname: "127.0.0.1",
  /** Format of the command line's log lines: `text` or `json` (one object per line). */
  logFormat: "text" as "text" | "json",
  /** Most hosts given their own metric series; the rest are summed as `_other`. */
  metricsMaxHosts: 500,
  /** Most hosts given their own statistics record; further hosts share `_other`. */
  statsMaxTrackedHosts: 10_000,
} as const;
