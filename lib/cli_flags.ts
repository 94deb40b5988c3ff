/**
 * The flags of the command line: their names, values, environment
 * variables, defaults and help, and the `--help` text made from them.
 *
 * @module
 */

import { DEFAULTS } from "./defaults.ts";
import { formatDuration } from "./duration.ts";
import { VERSION } from "./version.ts";

/** A flag: its value's name, environment variable, default and help text. */
export interface Flag {
  /** Name of the value in `--help` (`--port <port>`); absent for a switch. */
  value?: string;
  /** Its environment variable. */
  env?: string;
  /** Its default, as `--help` shows it. */
  default?: string;
  /** Repeatable; its variable takes a comma-separated list. */
  multiple?: boolean;
  /** One-letter alias (`-h`). */
  short?: string;
  /** What it does, for `--help`. */
  help: string;
  /** Heading printed above this flag in `--help`. */
  section?: string;
}

/** Every flag of the command line, by long name, in the order of `--help`. */
export const FLAGS: Record<string, Flag> = {
  "port": {
    section: "Listening and limits:",
    value: "port",
    env: "DPRL_PORT",
    default: String(DEFAULTS.cliPort),
    help: "port to listen on; 0 picks a free one",
  },
  "hostname": {
    value: "address",
    env: "DPRL_HOSTNAME",
    default: DEFAULTS.cliHostname,
    help: "address to listen on",
  },
  "max-connections": {
    value: "n",
    env: "DPRL_MAX_CONNECTIONS",
    default: String(DEFAULTS.defaultMaxConnectionsPerHost),
    help: "limit of open connections to each host without a --host-limit; 0 is unlimited",
  },
  "host-limit": {
    value: "host=n",
    env: "DPRL_HOST_LIMITS",
    multiple: true,
    help: "limit of one host, repeatable; host:port for ports other than 80 and 443",
  },
  "config": {
    value: "file",
    env: "DPRL_CONFIG",
    help: "YAML or JSON file of limit rules (wildcards, groups) and any of these settings " +
      "under its long name; its limits win over --max-connections and --host-limit",
  },
  "watch-config": {
    env: "DPRL_WATCH_CONFIG",
    help: "reload the limit rules of --config when the file changes (SIGHUP and " +
      "POST /api/reload always do)",
  },
  "reject-status": {
    value: "status",
    env: "DPRL_REJECT_STATUS",
    default: String(DEFAULTS.rejectStatus),
    help: "HTTP status sent when a host is at its limit",
  },
  "queue-timeout": {
    value: "duration",
    env: "DPRL_QUEUE_TIMEOUT",
    default: formatDuration(DEFAULTS.queueTimeout),
    help: "time a request over its host's limit waits for a slot, first come first served; " +
      "0 refuses at once",
  },
  "queue-max": {
    value: "n",
    env: "DPRL_QUEUE_MAX",
    default: String(DEFAULTS.queueMax),
    help: "requests that may wait per host; beyond it they are refused at once",
  },
  "retry-after-max": {
    value: "duration",
    env: "DPRL_RETRY_AFTER_MAX",
    default: formatDuration(DEFAULTS.retryAfterMax),
    help: "longest pause a host's Retry-After (on a 429 or 503) may ask for: meanwhile its new " +
      "requests wait or get a 503; 0 honours none",
  },
  "max-rate": {
    value: "n/s",
    env: "DPRL_MAX_RATE",
    help: "new requests (plain HTTP) or tunnels (CONNECT) per second, minute or hour each host " +
      "may be sent, across the fleet: 10/s, 600/m or 3600/h; unset, no rate",
  },
  "host-rate": {
    value: "host=n/s",
    env: "DPRL_HOST_RATES",
    multiple: true,
    help: "request rate of one host, repeatable, as --max-rate takes it",
  },
  "adaptive": {
    env: "DPRL_ADAPTIVE",
    help: "each host's limit adapts to what it serves (latency, 429/503, failures), between " +
      "--adaptive-min and its configured limit",
  },
  "adaptive-min": {
    value: "n",
    env: "DPRL_ADAPTIVE_MIN",
    default: String(DEFAULTS.adaptiveMin),
    help: "floor of an adaptive limit",
  },
  "max-idle-per-host": {
    value: "n",
    env: "DPRL_MAX_IDLE_PER_HOST",
    default: String(DEFAULTS.maxIdlePerHost),
    help: "idle upstream connections kept per host for reuse; 0 keeps none",
  },
  "log-level": {
    value: "level",
    env: "LOG_LEVEL",
    default: DEFAULTS.logLevel,
    help: "debug (logs every upstream connection), info, warn or error",
  },
  "allow-clients": {
    section: "Access (DPRL_AUTH, environment only: user:password pairs, comma-separated, " +
      "turns proxy authentication on):",
    value: "cidr,...",
    env: "DPRL_ALLOW_CLIENTS",
    help: "client addresses that may use the proxy; without it loopback and the private " +
      "ranges, or any address once authentication is on",
  },
  "auth-file": {
    value: "file",
    env: "DPRL_AUTH_FILE",
    help: "htpasswd file of bcrypt hashes (htpasswd -B); every request must then authenticate",
  },
  "tls-cert": {
    value: "file",
    env: "DPRL_TLS_CERT",
    help: "PEM certificate chain: the proxy port speaks TLS (clients use an https:// proxy " +
      "URL); needs --tls-key; reloaded on SIGHUP and POST /api/reload",
  },
  "tls-key": {
    value: "file",
    env: "DPRL_TLS_KEY",
    help: "PEM private key of --tls-cert",
  },
  "tls-client-ca": {
    value: "file",
    env: "DPRL_TLS_CLIENT_CA",
    help: "PEM CA certificates: every client must present a certificate signed by one, " +
      "whose name then names it in the access log",
  },
  "allow": {
    value: "rule",
    env: "DPRL_ALLOW",
    multiple: true,
    help: "destination allowed (host, *.glob, address or CIDR, optional :port or :port-port), " +
      "repeatable; when any is given, only these",
  },
  "deny": {
    value: "rule",
    env: "DPRL_DENY",
    multiple: true,
    help: "destination refused, repeatable; deny wins over allow",
  },
  "deny-private": {
    env: "DPRL_DENY_PRIVATE",
    help: "refuse loopback, private, link-local (cloud metadata), CGNAT, ULA and multicast " +
      "destinations, checked on the resolved addresses",
  },
  "max-clients": {
    value: "n",
    env: "DPRL_MAX_CLIENTS",
    default: String(DEFAULTS.maxClients),
    help: "open client connections in all; beyond it a new one gets 503; 0 is no cap",
  },
  "max-clients-per-ip": {
    value: "n",
    env: "DPRL_MAX_CLIENTS_PER_IP",
    default: String(DEFAULTS.maxClientsPerIp),
    help: "open client connections from one address; beyond it a new one gets 503; 0 is no cap",
  },
  "access-log": {
    env: "DPRL_ACCESS_LOG",
    help: "log one line per exchange or tunnel: client, method, host, status, bytes, duration",
  },
  "upstream-proxy": {
    section: "Parent proxies:",
    value: "url",
    env: "DPRL_UPSTREAM_PROXY",
    multiple: true,
    help: "parent proxy to go out through (http:// or https://, optional user:password@), " +
      "repeatable: the least busy first, one that fails to connect skipped for a while; " +
      "a rule's via may name others or say direct",
  },
  "redis-url": {
    section: "Distributed mode (give one of --redis-url, --redis-addr, --redis-cluster, " +
      "--redis-sentinels):",
    value: "url",
    env: "REDIS_URL",
    help: "Redis URL, redis:// or rediss:// for TLS",
  },
  "redis-addr": {
    value: "host:port",
    env: "REDIS_ADDR",
    help: "address of one Redis",
  },
  "redis-cluster": {
    value: "host:port,...",
    env: "REDIS_CLUSTER",
    help: "seed nodes of a Redis Cluster",
  },
  "redis-sentinels": {
    value: "host:port,...",
    env: "REDIS_SENTINELS",
    help: "Redis Sentinel nodes",
  },
  "redis-master-name": {
    value: "name",
    env: "REDIS_MASTER_NAME",
    default: DEFAULTS.redisMasterName,
    help: "master name known to the Sentinels",
  },
  "redis-password": { value: "password", env: "REDIS_PASSWORD", help: "Redis password" },
  "redis-db": { value: "n", env: "REDIS_DB", help: "Redis database number" },
  "redis-prefix": {
    value: "prefix",
    env: "DPRL_REDIS_PREFIX",
    default: DEFAULTS.redisPrefix,
    help: "prefix of the Redis keys",
  },
  "redis-timeout": {
    value: "duration",
    env: "DPRL_REDIS_TIMEOUT",
    default: formatDuration(DEFAULTS.redisTimeout),
    help: "how long a Redis call may take before it counts as failed",
  },
  "redis-failure-mode": {
    value: "mode",
    env: "DPRL_REDIS_FAILURE_MODE",
    default: DEFAULTS.failureMode,
    help: "while Redis is unreachable: closed (refuse), open (admit) or local (limit in memory)",
  },
  "redis-tls-ca": {
    value: "file",
    env: "DPRL_REDIS_TLS_CA",
    help: "PEM file of the CA that signed Redis's certificate (implies TLS)",
  },
  "redis-tls-cert": {
    value: "file",
    env: "DPRL_REDIS_TLS_CERT",
    help: "PEM file of a client certificate for Redis (mutual TLS)",
  },
  "redis-tls-key": {
    value: "file",
    env: "DPRL_REDIS_TLS_KEY",
    help: "PEM file of the key of --redis-tls-cert",
  },
  "lease": {
    value: "duration",
    env: "DPRL_LEASE",
    default: formatDuration(DEFAULTS.lease),
    help: "worker lease in Redis; a dead worker's connections stop counting after it",
  },
  "head-timeout": {
    section: "Timeouts (500ms, 10s, 2m, 1h; a bare number is seconds):",
    value: "duration",
    env: "DPRL_HEAD_TIMEOUT",
    default: formatDuration(DEFAULTS.timeouts.head),
    help: "time a new client has to send its request head",
  },
  "connect-timeout": {
    value: "duration",
    env: "DPRL_CONNECT_TIMEOUT",
    default: formatDuration(DEFAULTS.timeouts.connect),
    help: "time to open an upstream connection",
  },
  "idle-timeout": {
    value: "duration",
    env: "DPRL_IDLE_TIMEOUT",
    default: formatDuration(DEFAULTS.timeouts.idle),
    help: "time an exchange or tunnel may pass without traffic",
  },
  "keep-alive-timeout": {
    value: "duration",
    env: "DPRL_KEEP_ALIVE_TIMEOUT",
    default: formatDuration(DEFAULTS.timeouts.keepAlive),
    help: "time a client connection may idle between requests",
  },
  "upstream-idle-timeout": {
    value: "duration",
    env: "DPRL_UPSTREAM_IDLE_TIMEOUT",
    default: formatDuration(DEFAULTS.timeouts.upstreamIdle),
    help: "time an idle upstream connection is kept for reuse",
  },
  "fin-timeout": {
    value: "duration",
    env: "DPRL_FIN_TIMEOUT",
    default: formatDuration(DEFAULTS.timeouts.fin),
    help: "once one side of a tunnel has ended, time the other side gets before both close",
  },
  "shutdown-grace": {
    value: "duration",
    env: "DPRL_SHUTDOWN_GRACE",
    default: formatDuration(DEFAULTS.shutdownGrace),
    help: "on SIGINT or SIGTERM, time open exchanges and tunnels get to finish",
  },
  "admin-port": {
    section: "Observing and operating:",
    value: "port",
    env: "DPRL_ADMIN_PORT",
    help: "port of the admin server (health, metrics, API, dashboard); 0 picks a free one; " +
      "unset: no admin server",
  },
  "admin-hostname": {
    value: "address",
    env: "DPRL_ADMIN_HOSTNAME",
    default: DEFAULTS.adminHostname,
    help: "address of the admin server; a non-loopback address needs --admin-token",
  },
  "admin-token": {
    value: "token",
    env: "DPRL_ADMIN_TOKEN",
    help: "bearer token every admin endpoint except /healthz and /readyz needs",
  },
  "metrics-max-hosts": {
    value: "n",
    env: "DPRL_METRICS_MAX_HOSTS",
    default: String(DEFAULTS.metricsMaxHosts),
    help: "hosts given their own metric series, the busiest; the rest are summed as _other",
  },
  "log-format": {
    value: "text|json",
    env: "DPRL_LOG_FORMAT",
    default: DEFAULTS.logFormat,
    help: "text, or json for one JSON object per line",
  },
  "help": { section: "Other:", short: "h", help: "print this help and exit" },
  "version": { help: "print the version and exit" },
};

const EXAMPLES = [
  "dprl --max-connections 25",
  "dprl --max-connections 50 --host-limit api.example.com=5 --host-limit example.org:8443=2",
  "dprl --max-connections 50 --redis-url redis://10.0.0.5:6379/0",
  "DPRL_MAX_CONNECTIONS=10 LOG_LEVEL=debug dprl --port 3128",
  "dprl --auth-file /etc/dprl/users.htpasswd --allow-clients 10.0.0.0/8 --deny-private",
  "dprl --config /etc/dprl/dprl.yaml --watch-config",
  "curl -x http://127.0.0.1:8080 https://example.com/",
];

/** Width of `--help` lines. */
const WIDTH = 100;
/** Column where the flags' descriptions start. */
const DESCRIPTION_COLUMN = 32;

/** Breaks `text` into lines of at most `width` characters, each after `indent`. */
function wrap(text: string, indent: number, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line && indent + line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) lines.push(line);
  return lines;
}

/** The help text printed by `--help`: every line fits 100 columns. */
export function usage(): string {
  const out = [
    `dprl ${VERSION}: a forward proxy that caps open connections per upstream host`,
    "",
    "Usage: dprl [options]",
    "",
    "Each option can also be set by its environment variable, and in the --config file under its",
    "long name: the option wins, then the variable, then the file. Limits are the exception: the",
    "file's rules win over --max-connections and --host-limit, and runtime changes win over both.",
  ];
  for (const [name, f] of Object.entries(FLAGS)) {
    if (f.section) out.push("", ...wrap(f.section, 0, WIDTH));
    const left = `  ${f.short ? `-${f.short}, ` : ""}--${name}${f.value ? ` <${f.value}>` : ""}`;
    const extra = [
      f.env ? `env ${f.env}${f.multiple ? " comma-separated" : ""}` : "",
      f.default !== undefined ? `default ${f.default}` : "",
    ].filter(Boolean).join(", ");
    const lines = wrap(`${f.help}${extra ? ` (${extra})` : ""}`, DESCRIPTION_COLUMN, WIDTH);
    if (left.length < DESCRIPTION_COLUMN) {
      out.push(left.padEnd(DESCRIPTION_COLUMN) + lines.shift());
    } else {
      out.push(left);
    }
    for (const line of lines) out.push(" ".repeat(DESCRIPTION_COLUMN) + line);
  }
  out.push("", "Examples:", ...EXAMPLES.map((e) => `  ${e}`));
  return out.join("\n");
}

/**
 * Joins a flag that takes a value with a negative number after it
 * (`--max-connections -1`), which `parseArgs` would take for an option, so
 * that both spellings meet the same range check.
 */
export function joinNegativeValues(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const name = /^--([a-z-]+)$/.exec(args[i])?.[1];
    if (name && FLAGS[name]?.value && /^-[0-9]/.test(args[i + 1] ?? "")) {
      out.push(`${args[i]}=${args[++i]}`);
    } else {
      out.push(args[i]);
    }
  }
  return out;
}
