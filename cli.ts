/**
 * The dprl command line: reads flags and environment variables, sets up
 * logging, runs the proxy until SIGINT or SIGTERM, and stops it gracefully.
 *
 * ```sh
 * deno run --allow-net --allow-env='DPRL_*,REDIS_*,LOG_LEVEL' --ignore-env jsr:@dprl/cli/cli --help
 * ```
 *
 * `jsr:@dprl/cli` (the main module) runs the same command line.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { configure, getStreamSink, getTextFormatter, type LogLevel, reset } from "@logtape/logtape";
import { DEFAULTS } from "./lib/defaults.ts";
import { formatDuration, parseDuration } from "./lib/duration.ts";
import { splitHostPort } from "./lib/limit/host_key.ts";
import type { FailureMode, RedisConfig } from "./lib/limit/redis_config.ts";
import { ProxyRateLimiter } from "./lib/proxy_rate_limiter.ts";
import type { ProxyRateLimiterOptions } from "./lib/proxy_options.ts";
import { VERSION } from "./lib/version.ts";
import { parseHostPattern, rulesFromLimits } from "./lib/limit/rules/rules.ts";
import { ConfigError, type ConfigFile, loadConfigFile } from "./lib/config/config_file.ts";
import { watchConfigFile } from "./lib/config/watch.ts";
import { exposedWithoutToken } from "./lib/admin/admin_server.ts";
import { isAdminToken } from "./lib/admin/admin_handler.ts";
import { jsonLinesFormatter } from "./lib/log_format.ts";
import { parseAccessFlags, parseSwitch, splitList } from "./lib/access/access_flags.ts";

/** A flag: its value's name, environment variable, default and help text. */
interface Flag {
  /** Name of the value in `--help` (`--port <port>`); absent for a switch. */
  value?: string;
  env?: string;
  default?: string;
  multiple?: boolean;
  short?: string;
  help: string;
  /** Heading printed above this flag in `--help`. */
  section?: string;
}

const FLAGS: Record<string, Flag> = {
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
  "dprl --auth-file users.htpasswd --allow-clients 10.0.0.0/8 --deny-private",
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

/** A bad flag or environment value. */
class UsageError extends Error {}

function readEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // not granted: treated as unset
  }
}

function integer(name: string, text: string, min: number, max: number): number {
  if (!/^-?[0-9]+$/.test(text.trim())) {
    throw new UsageError(`--${name} must be an integer, got "${text}"`);
  }
  const n = Number(text);
  if (n < min || n > max) {
    throw new UsageError(
      `--${name} must be between ${min} and ${max}, got ${n}`,
    );
  }
  return n;
}

function duration(name: string, text: string): number {
  try {
    return parseDuration(text);
  } catch {
    throw new UsageError(
      `--${name} must be a duration such as 500ms, 10s or 2m, got "${text}"`,
    );
  }
}

function nodes(name: string, text: string): { host: string; port: number }[] {
  return text.split(",").map((s) => s.trim()).filter(Boolean).map((node) => {
    const { hostname, port } = splitHostPort(node);
    if (!hostname) {
      throw new UsageError(`--${name} needs host:port entries, got "${node}"`);
    }
    return {
      host: hostname,
      port: port === "" ? 6379 : integer(name, port, 1, 65535),
    };
  });
}

const LEVELS: Record<string, LogLevel> = {
  debug: "debug",
  info: "info",
  warn: "warning",
  warning: "warning",
  error: "error",
};

/** What the command line asks for. */
interface CliConfig {
  /** Options for {@linkcode ProxyRateLimiter}. */
  options: ProxyRateLimiterOptions;
  /** The log level. */
  logLevel: LogLevel;
  /** The log line format. */
  logFormat?: "text" | "json";
  /** Grace period on SIGINT/SIGTERM, in milliseconds. */
  graceMs: number;
  /** `--help` or `--version` was given. */
  exit?: "help" | "version";
  /** The config file, if any. */
  configPath?: string;
  /** Reload the config file when it changes. */
  watchConfig?: boolean;
}

/** The flags as the config file knows them. */
const FILE_FLAGS = Object.fromEntries(
  Object.entries(FLAGS).map(([name, f]) => [name, { boolean: !f.value, multiple: f.multiple }]),
);

/** Reads the config file: its limit rules, for a reload. */
async function readRules(path: string) {
  return (await loadConfigFile(path, { flags: FILE_FLAGS })).rules;
}

/** A one-line message for an error of `parseArgs`. */
function parseError(err: Error & { code?: string }): string {
  const arg = /'([^']*)'/.exec(err.message)?.[1] ?? "";
  switch (err.code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `Unknown option ${arg}: dprl --help lists the options`;
    case "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL":
      return `Unexpected argument "${arg}": dprl takes options only, see dprl --help`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE": {
      const name = /--([a-z-]+)/.exec(err.message)?.[1] ?? "";
      const flag = FLAGS[name];
      return flag?.value
        ? `--${name} needs a value: --${name} <${flag.value}>`
        : `--${name} takes no value`;
    }
  }
  return `${err.message.split("\n")[0]}: see dprl --help`;
}

/**
 * Parses flags (and, where a flag is absent, its environment variable, then
 * the config file's setting) into proxy options. Throws an `Error` with a
 * one-line message on a bad value.
 */
async function parseCli(args: string[]): Promise<CliConfig> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: Object.fromEntries(
        Object.entries(FLAGS).map(([name, f]) => [name, {
          type: f.value ? "string" : "boolean",
          multiple: f.multiple ?? false,
          ...(f.short ? { short: f.short } : {}),
        }]),
      ) as Record<string, { type: "string" | "boolean"; multiple?: boolean; short?: string }>,
    }).values as Record<string, string | string[] | boolean | undefined>;
  } catch (err) {
    throw new UsageError(parseError(err as Error & { code?: string }));
  }
  if (parsed.help) {
    return { options: {}, logLevel: "info", graceMs: 0, exit: "help" };
  }
  if (parsed.version) {
    return { options: {}, logLevel: "info", graceMs: 0, exit: "version" };
  }

  const fromEnv = (name: string): string | undefined => {
    const f = FLAGS[name];
    const text = f.env ? readEnv(f.env) : undefined;
    return text !== undefined && text !== "" ? text : undefined;
  };
  const configPath = typeof parsed.config === "string" ? parsed.config : fromEnv("config");
  let file: ConfigFile = { settings: {}, rules: {}, places: {} };
  if (configPath !== undefined) file = await loadConfigFile(configPath, { flags: FILE_FLAGS });
  /** Which layer each setting came from: a bad value in the file names its place. */
  const fromFile = new Set<string>();
  const value = (name: string): string | undefined => {
    const v = parsed[name];
    if (typeof v === "string") return v;
    const env = fromEnv(name);
    if (env !== undefined) return env;
    const setting = file.settings[name];
    if (typeof setting === "string") {
      fromFile.add(name);
      return setting;
    }
    return FLAGS[name].default;
  };
  try {
    return parseValues(parsed, value, file, configPath);
  } catch (err) {
    const name = /^--([a-z-]+)/.exec((err as Error).message)?.[1];
    if (!(err instanceof UsageError) || !name || !fromFile.has(name) || !configPath) throw err;
    const place = file.places[name];
    throw new ConfigError(
      configPath,
      (err as Error).message.replace(/^--/, ""),
      place ?? {},
    );
  }
}

/** The options the flags, environment and file settings ask for. */
function parseValues(
  parsed: Record<string, string | string[] | boolean | undefined>,
  value: (name: string) => string | undefined,
  file: ConfigFile,
  configPath: string | undefined,
): CliConfig {
  const logLevel = LEVELS[value("log-level")!.toLowerCase()];
  if (!logLevel) {
    throw new UsageError(
      `--log-level must be debug, info, warn or error, got "${value("log-level")}"`,
    );
  }

  const hostLimits: Record<string, number> = {};
  const limitArgs = parsed["host-limit"] as string[] | undefined ??
    (readEnv("DPRL_HOST_LIMITS") ?? "").split(",").map((s) => s.trim()).filter(
      Boolean,
    );
  for (const entry of limitArgs) {
    const m = /^([^=\s]+)=(-?[0-9]+)$/.exec(entry.trim());
    if (!m) throw new UsageError(`--host-limit must be host=N, got "${entry}"`);
    try {
      parseHostPattern(m[1]);
    } catch (err) {
      throw new UsageError(`--host-limit host "${m[1]}" ${(err as Error).message}`);
    }
    hostLimits[m[1]] = integer("host-limit", m[2], -1, Number.MAX_SAFE_INTEGER);
  }

  const failureMode = value("redis-failure-mode");
  if (
    failureMode !== "closed" && failureMode !== "open" &&
    failureMode !== "local"
  ) {
    throw new UsageError(
      `--redis-failure-mode must be closed, open or local, got "${failureMode}"`,
    );
  }
  const prefix = value("redis-prefix")!;
  if (!/^[^\s{}]+$/.test(prefix)) {
    throw new UsageError(
      `--redis-prefix must be non-empty without spaces or braces`,
    );
  }

  const list = (name: string): string[] | undefined => {
    const v = parsed[name] as string[] | undefined;
    if (v) return v;
    const env = readEnv(FLAGS[name].env!);
    const fromFile = file.settings[name];
    if ((env === undefined || env === "") && Array.isArray(fromFile)) return fromFile;
    return splitList(env);
  };
  /** A switch: the flag, else its variable (text, checked later), else the file's. */
  const toggle = (name: string): boolean | string | undefined => {
    if (parsed[name] === true) return true;
    const env = readEnv(FLAGS[name].env!);
    if (env !== undefined && env !== "") return env;
    const fromFile = file.settings[name];
    return typeof fromFile === "boolean" ? fromFile : undefined;
  };
  const access = parseAccessFlags({
    allowClients: value("allow-clients"),
    auth: readEnv("DPRL_AUTH"),
    authFile: value("auth-file"),
    allow: list("allow"),
    deny: list("deny"),
    denyPrivate: toggle("deny-private"),
  });
  const users = access.clients.users!;

  const options: ProxyRateLimiterOptions = {
    port: integer("port", value("port")!, 0, 65535),
    hostname: value("hostname"),
    defaultMaxConnectionsPerHost: integer(
      "max-connections",
      value("max-connections")!,
      -1,
      Number.MAX_SAFE_INTEGER,
    ),
    hostLimits,
    rejectStatus: integer("reject-status", value("reject-status")!, 400, 599),
    queueTimeout: duration("queue-timeout", value("queue-timeout")!),
    queueMax: integer("queue-max", value("queue-max")!, 0, 1_000_000),
    maxIdlePerHost: integer(
      "max-idle-per-host",
      value("max-idle-per-host")!,
      0,
      100_000,
    ),
    timeouts: {
      head: duration("head-timeout", value("head-timeout")!),
      connect: duration("connect-timeout", value("connect-timeout")!),
      idle: duration("idle-timeout", value("idle-timeout")!),
      keepAlive: duration("keep-alive-timeout", value("keep-alive-timeout")!),
      upstreamIdle: duration(
        "upstream-idle-timeout",
        value("upstream-idle-timeout")!,
      ),
      fin: duration("fin-timeout", value("fin-timeout")!),
    },
    allowClients: access.clients.allowClients,
    users: users.size > 0 ? Object.fromEntries(users) : undefined,
    allow: access.destinations.allow,
    deny: access.destinations.deny,
    denyPrivate: access.destinations.denyPrivate,
    maxClients: integer("max-clients", value("max-clients")!, 0, 1_000_000_000),
    maxClientsPerIp: integer("max-clients-per-ip", value("max-clients-per-ip")!, 0, 1_000_000_000),
    accessLog: parseSwitch("--access-log", toggle("access-log")),
    redis: redisConfig(value),
    redisPrefix: prefix,
    lease: duration("lease", value("lease")!),
    redisTimeout: duration("redis-timeout", value("redis-timeout")!),
    failureMode: failureMode as FailureMode,
  };
  if (options.lease! < 300) {
    throw new UsageError(`--lease must be at least 300ms`);
  }
  options.admin = adminOptions(value);
  const logFormat = value("log-format");
  if (logFormat !== "text" && logFormat !== "json") {
    throw new UsageError(`--log-format must be text or json, got "${logFormat}"`);
  }
  // Limits: the file's rules over the flags' (a flag must not pin a limit a reload cannot change).
  const flagRules = rulesFromLimits({
    defaultLimit: options.defaultMaxConnectionsPerHost,
    hostLimits: options.hostLimits,
  });
  delete options.defaultMaxConnectionsPerHost;
  delete options.hostLimits;
  options.flagRules = flagRules;
  options.rules = file.rules;
  if (configPath !== undefined) options.loadRules = () => readRules(configPath);
  const watchConfig = parseSwitch("--watch-config", toggle("watch-config"));
  if (watchConfig && configPath === undefined) {
    throw new UsageError("--watch-config needs --config");
  }
  return {
    options,
    logLevel,
    logFormat,
    graceMs: duration("shutdown-grace", value("shutdown-grace")!),
    configPath,
    watchConfig,
  };
}

/** The admin server's options, or `undefined` without `--admin-port`. */
function adminOptions(
  value: (name: string) => string | undefined,
): ProxyRateLimiterOptions["admin"] {
  const port = value("admin-port");
  const metricsMaxHosts = integer("metrics-max-hosts", value("metrics-max-hosts")!, 0, 1_000_000);
  if (port === undefined) return undefined;
  const hostname = value("admin-hostname")!;
  const token = value("admin-token") || undefined;
  if (token !== undefined && !isAdminToken(token)) {
    throw new UsageError("--admin-token must be printable ASCII without spaces");
  }
  if (exposedWithoutToken(hostname, token)) {
    throw new UsageError(
      `--admin-hostname ${hostname} is not a loopback address: set --admin-token to expose it`,
    );
  }
  return { port: integer("admin-port", port, 0, 65535), hostname, token, metricsMaxHosts };
}

function redisConfig(
  value: (name: string) => string | undefined,
): RedisConfig | undefined {
  const given = ["redis-url", "redis-addr", "redis-cluster", "redis-sentinels"]
    .filter((n) => value(n));
  if (given.length > 1) {
    throw new UsageError(
      `Give only one of ${given.map((n) => `--${n}`).join(", ")}`,
    );
  }
  const password = value("redis-password") || undefined;
  const dbText = value("redis-db");
  // Without --redis-db the client's own default (database 0) applies.
  const db = dbText === undefined ? {} : { db: integer("redis-db", dbText, 0, 1_000_000) };
  const tls = redisTls(value);
  switch (given[0]) {
    case "redis-url": {
      const url = value("redis-url")!;
      if (!/^rediss?:\/\/[^\s]+$/.test(url)) {
        throw new UsageError(
          `--redis-url must be a redis:// or rediss:// URL, got "${url}"`,
        );
      }
      if (tls && !/^rediss:/i.test(url)) {
        throw new UsageError(`--redis-tls-* need a rediss:// URL, got "${url}"`);
      }
      return tls ? { url, tls } : url;
    }
    case "redis-addr": {
      const [node] = nodes("redis-addr", value("redis-addr")!);
      return { ...node, password, ...db, tls };
    }
    case "redis-cluster":
      return {
        cluster: nodes("redis-cluster", value("redis-cluster")!),
        options: { redisOptions: { password, tls } },
      };
    case "redis-sentinels":
      return {
        sentinels: nodes("redis-sentinels", value("redis-sentinels")!),
        name: value("redis-master-name"),
        password,
        ...db,
        ...(tls ? { tls, sentinelTLS: tls, enableTLSForSentinelMode: true } : {}),
      };
  }
  return undefined;
}

/** Reads the `--redis-tls-*` files into ioredis TLS options, or `undefined` without them. */
function redisTls(
  value: (name: string) => string | undefined,
): { ca?: string; cert?: string; key?: string } | undefined {
  const tls: { ca?: string; cert?: string; key?: string } = {};
  for (const [name, field] of [["ca", "ca"], ["cert", "cert"], ["key", "key"]] as const) {
    const path = value(`redis-tls-${name}`);
    if (!path) continue;
    try {
      tls[field] = Deno.readTextFileSync(path);
    } catch (err) {
      throw new UsageError(
        `--redis-tls-${name}: cannot read "${path}": ${(err as Error).message.split("\n")[0]}`,
      );
    }
  }
  if (!tls.cert !== !tls.key) {
    throw new UsageError("--redis-tls-cert and --redis-tls-key must be given together");
  }
  return Object.keys(tls).length > 0 ? tls : undefined;
}

/**
 * Runs the command line with `args`; resolves with the exit code (0 after a
 * graceful stop, 1 when the proxy fails, 2 on a bad flag or value).
 */
export async function main(args: string[]): Promise<number> {
  let config: CliConfig;
  try {
    config = await parseCli(args);
  } catch (err) {
    if (!(err instanceof UsageError || err instanceof RangeError || err instanceof ConfigError)) {
      throw err;
    }
    console.error(`dprl: ${err.message}`);
    return 2;
  }
  if (config.exit === "help") {
    console.log(usage());
    return 0;
  }
  if (config.exit === "version") {
    console.log(`dprl ${VERSION}`);
    return 0;
  }

  await configure({
    reset: true,
    sinks: {
      stderr: getStreamSink(Deno.stderr.writable, {
        formatter: config.logFormat === "json"
          ? jsonLinesFormatter
          : getTextFormatter({ value: "bare" }),
      }),
    },
    loggers: [
      { category: ["dprl"], lowestLevel: config.logLevel, sinks: ["stderr"] },
      {
        category: ["logtape", "meta"],
        lowestLevel: "warning",
        sinks: ["stderr"],
      },
    ],
  });

  const proxy = new ProxyRateLimiter(config.options);
  let signals = 0;
  const onSignal = () => {
    if (++signals > 1) Deno.exit(1);
    proxy.stop({ graceMs: config.graceMs });
  };
  const names: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const name of names) Deno.addSignalListener(name, onSignal);
  const reload = () => void proxy.reload();
  const hangup = config.configPath !== undefined && Deno.build.os !== "windows";
  if (hangup) Deno.addSignalListener("SIGHUP", reload);
  let watcher: { close(): Promise<void> } | undefined;
  try {
    if (config.watchConfig) {
      watcher = watchConfigFile({ path: config.configPath!, onChange: reload });
    }
    await proxy.listenAndServe();
    return 0;
  } catch (err) {
    console.error(`dprl: ${err instanceof Error ? err.message : err}`);
    return 1;
  } finally {
    await watcher?.close();
    if (hangup) Deno.removeSignalListener("SIGHUP", reload);
    for (const name of names) Deno.removeSignalListener(name, onSignal);
    await reset();
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
