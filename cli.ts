/**
 * The dprl command line: reads flags and environment variables, sets up
 * logging, runs the proxy until SIGINT or SIGTERM, and stops it gracefully.
 *
 * ```sh
 * deno run --allow-net --allow-sys=networkInterfaces,hostname --allow-read=/etc/dprl --allow-env='DPRL_*,REDIS_*,LOG_LEVEL' --ignore-env --v8-flags=--max-semi-space-size=4 jsr:@dprl/cli/cli --help
 * ```
 *
 * `jsr:@dprl/cli` (the main module) runs the same command line.
 *
 * @module
 */

import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { configure, getStreamSink, getTextFormatter, type LogLevel, reset } from "@logtape/logtape";
import { FLAGS, joinNegativeValues, usage } from "./lib/cli_flags.ts";
import { splitHostPort } from "./lib/limit/host_key.ts";
import type { FailureMode, RedisConfig } from "./lib/limit/redis_config.ts";
import { ProxyRateLimiter } from "./lib/proxy_rate_limiter.ts";
import type { ProxyRateLimiterOptions } from "./lib/proxy_options.ts";
import type { TlsSource } from "./lib/proxy/proxy_port.ts";
import { VERSION } from "./lib/version.ts";
import type { LimitRules } from "./lib/limit/rules/rules.ts";
import { rulesFromLimits } from "./lib/limit/rules/rule_limits.ts";
import { formatRate } from "./lib/limit/gcra.ts";
import {
  duration,
  hostValues,
  integer,
  type ParsedArgs,
  rate,
  readEnv,
  UsageError,
} from "./lib/cli_values.ts";
import { ConfigError, type ConfigFile, loadConfigFile } from "./lib/config/config_file.ts";
import { watchConfigFile } from "./lib/config/watch.ts";
import { exposedWithoutToken } from "./lib/admin/admin_server.ts";
import { isAdminToken } from "./lib/admin/admin_handler.ts";
import { loadRulesFile, RulesWorker } from "./lib/config/reload.ts";
import { jsonLinesFormatter } from "./lib/log_format.ts";
import { parseAccessFlags, parseSwitch, splitList } from "./lib/access/access_flags.ts";
import { parseParentUrl } from "./lib/proxy/parent_url.ts";

export { usage };
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
  /** The worker reloads of the config file run in. */
  rulesWorker?: RulesWorker;
}

/** The flags as the config file knows them. */
const FILE_FLAGS = Object.fromEntries(
  Object.entries(FLAGS).map(([name, f]) => [name, { boolean: !f.value, multiple: f.multiple }]),
);

/**
 * Throws a {@linkcode UsageError} naming the permission to add when this
 * process may not read `path`, the value of `--flag` (or, with `folder`, the
 * folder that `--watch-config` watches). Asks ahead: a denied read would
 * only say "permission denied".
 */
function requireRead(flag: string, path: string, folder = false): void {
  const target = folder ? dirname(path) : path;
  if (Deno.permissions.querySync({ name: "read", path: target }).state === "granted") return;
  throw new UsageError(
    folder
      ? `--${flag} watches the folder of ${path}: run deno with --allow-read=${target}`
      : `--${flag} ${path} cannot be read: run deno with --allow-read=${path}` +
        (flag === "config" ? ` (--allow-read=${dirname(path)} with --watch-config)` : ""),
  );
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
      args: joinNegativeValues(args),
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
  /** Which layer each setting came from: a bad value names its variable or its place. */
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
    if (configPath !== undefined) {
      requireRead("config", configPath);
      file = await loadConfigFile(configPath, { flags: FILE_FLAGS });
    }
    return parseValues(parsed, value, file, configPath);
  } catch (err) {
    const message = (err as Error).message;
    const name = /^--([a-z-]+)/.exec(message)?.[1];
    if (!(err instanceof UsageError || err instanceof RangeError) || !name) throw err;
    const env = FLAGS[name]?.env;
    if (parsed[name] === undefined && env && readEnv(env)) {
      throw new UsageError(message.replace(`--${name}`, env));
    }
    if (!fromFile.has(name) || !configPath) throw err;
    const place = file.places[name];
    throw new ConfigError(
      configPath,
      message.replace(/^--/, ""),
      place ?? {},
    );
  }
}

/** The options the flags, environment and file settings ask for. */
function parseValues(
  parsed: ParsedArgs,
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

  const flagRules = flagLimits(parsed, value);
  const options: ProxyRateLimiterOptions = {
    port: integer("port", value("port")!, 0, 65535),
    hostname: value("hostname"),
    rejectStatus: integer("reject-status", value("reject-status")!, 400, 599),
    queueTimeout: duration("queue-timeout", value("queue-timeout")!),
    queueMax: integer("queue-max", value("queue-max")!, 0, 1_000_000),
    retryAfterMax: duration("retry-after-max", value("retry-after-max")!),
    maxRate: value("max-rate") ? rate("max-rate", value("max-rate")!) : undefined,
    adaptive: parseSwitch("--adaptive", toggle(parsed, file, "adaptive")),
    adaptiveMin: integer("adaptive-min", value("adaptive-min")!, 1, 1_000_000),
    maxIdlePerHost: integer(
      "max-idle-per-host",
      value("max-idle-per-host")!,
      0,
      100_000,
    ),
    timeouts: timeoutOptions(value),
    ...accessOptions(parsed, value, file),
    upstreamProxy: parentUrls(listValue(parsed, file, "upstream-proxy")),
    maxClients: integer("max-clients", value("max-clients")!, 0, 1_000_000_000),
    maxClientsPerIp: integer("max-clients-per-ip", value("max-clients-per-ip")!, 0, 1_000_000_000),
    accessLog: parseSwitch("--access-log", toggle(parsed, file, "access-log")),
    collectWhenIdle: true,
    ...redisOptions(value),
    admin: adminOptions(value),
    tls: tlsSource(value),
  };
  const logFormat = value("log-format");
  if (logFormat !== "text" && logFormat !== "json") {
    throw new UsageError(`--log-format must be text or json, got "${logFormat}"`);
  }
  // Limits: the file's rules over the flags' (a flag must not pin a limit a reload cannot change).
  options.flagRules = flagRules;
  options.rules = file.rules;
  // One worker for every reload, stopped with the proxy.
  const rulesWorker = configPath === undefined ? undefined : new RulesWorker();
  if (configPath !== undefined) {
    options.loadRules = (context) =>
      loadRulesFile(
        { path: configPath, flags: FILE_FLAGS, below: flagRules, worker: rulesWorker },
        context,
      );
  }
  const watchConfig = parseSwitch("--watch-config", toggle(parsed, file, "watch-config"));
  if (watchConfig && configPath === undefined) {
    throw new UsageError("--watch-config needs --config");
  }
  if (watchConfig) requireRead("watch-config", configPath!, true);
  return {
    options,
    logLevel,
    logFormat,
    graceMs: duration("shutdown-grace", value("shutdown-grace")!),
    configPath,
    watchConfig,
    rulesWorker,
  };
}

/** The limit rules the flags stand for: `--max-connections`, `--host-limit`, `--host-rate`. */
function flagLimits(parsed: ParsedArgs, value: (name: string) => string | undefined): LimitRules {
  return rulesFromLimits({
    defaultLimit: integer("max-connections", value("max-connections")!, 0, Number.MAX_SAFE_INTEGER),
    hostLimits: hostValues(
      parsed,
      "host-limit",
      "-?[0-9]+",
      (n) => integer("host-limit", n, 0, Number.MAX_SAFE_INTEGER),
    ),
    hostRates: hostValues(parsed, "host-rate", "\\S+", (r) => formatRate(rate("host-rate", r))),
  });
}

/** The timeouts the flags ask for. */
function timeoutOptions(
  value: (name: string) => string | undefined,
): ProxyRateLimiterOptions["timeouts"] {
  const ms = (name: string) => duration(name, value(name)!);
  return {
    head: ms("head-timeout"),
    connect: ms("connect-timeout"),
    idle: ms("idle-timeout"),
    keepAlive: ms("keep-alive-timeout"),
    upstreamIdle: ms("upstream-idle-timeout"),
    fin: ms("fin-timeout"),
  };
}

/** A switch: the flag, else its variable (text, checked later), else the file's. */
function toggle(parsed: ParsedArgs, file: ConfigFile, name: string): boolean | string | undefined {
  if (parsed[name] === true) return true;
  const env = readEnv(FLAGS[name].env!);
  if (env !== undefined && env !== "") return env;
  const fromFile = file.settings[name];
  return typeof fromFile === "boolean" ? fromFile : undefined;
}

/** The `--upstream-proxy` URLs, each value split on commas, checked. */
function parentUrls(values: string[] | undefined): string[] | undefined {
  const urls = values?.flatMap(splitList);
  for (const url of urls ?? []) {
    try {
      parseParentUrl(url);
    } catch (err) {
      throw new UsageError(`--upstream-proxy ${(err as Error).message}`);
    }
  }
  return urls?.length ? urls : undefined;
}

/** A repeatable flag's values: the flags, else its variable split on commas, else the file's. */
function listValue(parsed: ParsedArgs, file: ConfigFile, name: string): string[] | undefined {
  const v = parsed[name] as string[] | undefined;
  if (v) return v;
  const env = readEnv(FLAGS[name].env!);
  const fromFile = file.settings[name];
  if ((env === undefined || env === "") && Array.isArray(fromFile)) return fromFile;
  return splitList(env);
}

/** Who may use the proxy and where it may go, reading the auth file. */
function accessOptions(
  parsed: ParsedArgs,
  value: (name: string) => string | undefined,
  file: ConfigFile,
): Pick<ProxyRateLimiterOptions, "allowClients" | "users" | "allow" | "deny" | "denyPrivate"> {
  const list = (name: string) => listValue(parsed, file, name);
  const authFile = value("auth-file");
  if (authFile) requireRead("auth-file", authFile);
  const access = parseAccessFlags({
    allowClients: value("allow-clients"),
    auth: readEnv("DPRL_AUTH"),
    authFile,
    allow: list("allow"),
    deny: list("deny"),
    denyPrivate: toggle(parsed, file, "deny-private"),
  });
  const users = access.clients.users!;
  return {
    allowClients: access.clients.allowClients,
    users: users.size > 0 ? Object.fromEntries(users) : undefined,
    allow: access.destinations.allow,
    deny: access.destinations.deny,
    denyPrivate: access.destinations.denyPrivate,
  };
}

/** The proxy port's TLS: its files, read at start and again on each reload. */
function tlsSource(value: (name: string) => string | undefined): TlsSource | undefined {
  const [cert, key, clientCa] = ["tls-cert", "tls-key", "tls-client-ca"].map(value);
  if (cert === undefined && key === undefined) {
    if (clientCa !== undefined) {
      throw new UsageError("--tls-client-ca needs --tls-cert and --tls-key");
    }
    return undefined;
  }
  if (cert === undefined || key === undefined) {
    throw new UsageError("--tls-cert and --tls-key go together");
  }
  requireRead("tls-cert", cert);
  requireRead("tls-key", key);
  if (clientCa !== undefined) requireRead("tls-client-ca", clientCa);
  return async () => ({
    cert: await Deno.readTextFile(cert),
    key: await Deno.readTextFile(key),
    clientCa: clientCa === undefined ? undefined : await Deno.readTextFile(clientCa),
  });
}

/** The distributed mode's options: Redis, its key prefix, the lease and the failure mode. */
function redisOptions(
  value: (name: string) => string | undefined,
): Pick<
  ProxyRateLimiterOptions,
  "redis" | "redisPrefix" | "lease" | "redisTimeout" | "failureMode"
> {
  const failureMode = value("redis-failure-mode");
  if (failureMode !== "closed" && failureMode !== "open" && failureMode !== "local") {
    throw new UsageError(
      `--redis-failure-mode must be closed, open or local, got "${failureMode}"`,
    );
  }
  const redisPrefix = value("redis-prefix")!;
  if (!/^[^\s{}]+$/.test(redisPrefix)) {
    throw new UsageError(`--redis-prefix must be non-empty without spaces or braces`);
  }
  const lease = duration("lease", value("lease")!);
  if (lease < 300) throw new UsageError(`--lease must be at least 300ms`);
  return {
    redis: redisConfig(value),
    redisPrefix,
    lease,
    redisTimeout: duration("redis-timeout", value("redis-timeout")!),
    failureMode: failureMode as FailureMode,
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
    requireRead(`redis-tls-${name}`, path);
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
  const hangup = (config.configPath !== undefined || config.options.tls !== undefined) &&
    Deno.build.os !== "windows";
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
    config.rulesWorker?.close();
    if (hangup) Deno.removeSignalListener("SIGHUP", reload);
    for (const name of names) Deno.removeSignalListener(name, onSignal);
    await reset();
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
