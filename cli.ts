/**
 * The dprl command line: reads flags and environment variables, sets up
 * logging, runs the proxy until SIGINT or SIGTERM, and stops it gracefully.
 *
 * ```sh
 * deno run --allow-net --allow-env jsr:@dprl/cli/cli --max-connections 25
 * ```
 *
 * Run with `--help` for every flag and its environment variable.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { configure, getStreamSink, getTextFormatter, type LogLevel, reset } from "@logtape/logtape";
import {
  type FailureMode,
  ProxyRateLimiter,
  type ProxyRateLimiterOptions,
  type RedisConfig,
  VERSION,
} from "./mod.ts";
import { parseDuration } from "./lib/duration.ts";
import { splitHostPort } from "./lib/limit/host_key.ts";

/** A flag: its name, environment variable, default and help text. */
interface Flag {
  env?: string;
  default?: string;
  multiple?: boolean;
  boolean?: boolean;
  help: string;
}

const FLAGS: Record<string, Flag> = {
  "port": {
    env: "DPRL_PORT",
    default: "8080",
    help: "port to listen on (0 picks one)",
  },
  "hostname": {
    env: "DPRL_HOSTNAME",
    default: "0.0.0.0",
    help: "address to listen on",
  },
  "max-connections": {
    env: "DPRL_MAX_CONNECTIONS",
    default: "0",
    help: "default limit of open connections per host (0 = unlimited)",
  },
  "host-limit": {
    env: "DPRL_HOST_LIMITS",
    multiple: true,
    help: "per-host limit as host=N, repeatable (env: comma-separated)",
  },
  "reject-status": {
    env: "DPRL_REJECT_STATUS",
    default: "500",
    help: "HTTP status sent when a host is at its limit",
  },
  "log-level": {
    env: "LOG_LEVEL",
    default: "info",
    help: "debug, info, warn or error",
  },
  "redis-addr": {
    env: "REDIS_ADDR",
    help: "Redis host:port; enables distributed mode",
  },
  "redis-password": { env: "REDIS_PASSWORD", help: "Redis password" },
  "redis-db": { env: "REDIS_DB", default: "0", help: "Redis database number" },
  "redis-url": {
    env: "REDIS_URL",
    help: "Redis URL (redis:// or rediss:// for TLS)",
  },
  "redis-cluster": {
    env: "REDIS_CLUSTER",
    help: "Redis Cluster seed nodes, host:port,host:port",
  },
  "redis-sentinels": {
    env: "REDIS_SENTINELS",
    help: "Redis Sentinel nodes, host:port,host:port",
  },
  "redis-master-name": {
    env: "REDIS_MASTER_NAME",
    default: "mymaster",
    help: "master name known to the Sentinels",
  },
  "redis-prefix": {
    env: "DPRL_REDIS_PREFIX",
    default: "dprl",
    help: "prefix of the Redis keys",
  },
  "redis-timeout": {
    env: "DPRL_REDIS_TIMEOUT",
    default: "1s",
    help: "how long a Redis call may take before it counts as failed",
  },
  "redis-failure-mode": {
    env: "DPRL_REDIS_FAILURE_MODE",
    default: "closed",
    help: "when Redis is unreachable: closed (refuse), open (admit) or local (limit in memory)",
  },
  "redis-tls-ca": {
    env: "DPRL_REDIS_TLS_CA",
    help: "PEM file of the CA that signed Redis's certificate (implies TLS)",
  },
  "redis-tls-cert": {
    env: "DPRL_REDIS_TLS_CERT",
    help: "PEM file of a client certificate for Redis (mutual TLS)",
  },
  "redis-tls-key": {
    env: "DPRL_REDIS_TLS_KEY",
    help: "PEM file of the key of --redis-tls-cert",
  },
  "lease": {
    env: "DPRL_LEASE",
    default: "15s",
    help: "worker lease in Redis; a dead worker's slots return after it",
  },
  "head-timeout": {
    env: "DPRL_HEAD_TIMEOUT",
    default: "10s",
    help: "time to receive a request head",
  },
  "connect-timeout": {
    env: "DPRL_CONNECT_TIMEOUT",
    default: "10s",
    help: "time to connect upstream",
  },
  "idle-timeout": {
    env: "DPRL_IDLE_TIMEOUT",
    default: "5m",
    help: "time an exchange or tunnel may pass without traffic",
  },
  "keep-alive-timeout": {
    env: "DPRL_KEEP_ALIVE_TIMEOUT",
    default: "60s",
    help: "time a client connection may idle between requests",
  },
  "upstream-idle-timeout": {
    env: "DPRL_UPSTREAM_IDLE_TIMEOUT",
    default: "30s",
    help: "time an idle upstream connection is kept for reuse",
  },
  "max-idle-per-host": {
    env: "DPRL_MAX_IDLE_PER_HOST",
    default: "64",
    help: "idle upstream connections kept per host (0 = none)",
  },
  "shutdown-grace": {
    env: "DPRL_SHUTDOWN_GRACE",
    default: "10s",
    help: "on SIGINT/SIGTERM, time open exchanges and tunnels get to finish",
  },
  "help": { boolean: true, help: "print this help and exit" },
  "version": { boolean: true, help: "print the version and exit" },
};

/** A bad flag or environment value. */
class UsageError extends Error {}

/** The help text printed by `--help`. */
export function usage(): string {
  const rows = Object.entries(FLAGS).map(([name, f]) => {
    const left = `  --${name}${f.boolean ? "" : " <value>"}`;
    const extra = [
      f.env ? `env ${f.env}` : "",
      f.default !== undefined ? `default ${f.default}` : "",
    ]
      .filter(Boolean).join(", ");
    return `${left.padEnd(34)}${f.help}${extra ? ` (${extra})` : ""}`;
  });
  return [
    `dprl ${VERSION}: a forward proxy with per-host connection limits`,
    "",
    "Usage: dprl [flags]",
    "",
    ...rows,
    "",
    "Flags win over environment variables.",
  ].join("\n");
}

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
  /** Grace period on SIGINT/SIGTERM, in milliseconds. */
  graceMs: number;
  /** `--help` or `--version` was given. */
  exit?: "help" | "version";
}

/**
 * Parses flags (and, where a flag is absent, its environment variable) into
 * proxy options. Throws an `Error` with a one-line message on a bad value.
 */
function parseCli(args: string[]): CliConfig {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: Object.fromEntries(
        Object.entries(FLAGS).map((
          [name, f],
        ) => [name, {
          type: f.boolean ? "boolean" : "string",
          multiple: f.multiple ?? false,
        }]),
      ) as Record<string, { type: "string" | "boolean"; multiple?: boolean }>,
    }).values as Record<string, string | string[] | boolean | undefined>;
  } catch (err) {
    throw new UsageError((err as Error).message.split("\n")[0]);
  }
  if (parsed.help) {
    return { options: {}, logLevel: "info", graceMs: 0, exit: "help" };
  }
  if (parsed.version) {
    return { options: {}, logLevel: "info", graceMs: 0, exit: "version" };
  }

  const value = (name: string): string | undefined => {
    const v = parsed[name];
    if (typeof v === "string") return v;
    const f = FLAGS[name];
    const fromEnv = f.env ? readEnv(f.env) : undefined;
    return fromEnv !== undefined && fromEnv !== "" ? fromEnv : f.default;
  };

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
    },
    redis: redisConfig(value),
    redisPrefix: prefix,
    lease: duration("lease", value("lease")!),
    redisTimeout: duration("redis-timeout", value("redis-timeout")!),
    failureMode: failureMode as FailureMode,
  };
  if (options.lease! < 300) {
    throw new UsageError(`--lease must be at least 300ms`);
  }
  return {
    options,
    logLevel,
    graceMs: duration("shutdown-grace", value("shutdown-grace")!),
  };
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
  const db = integer("redis-db", value("redis-db")!, 0, 1_000_000);
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
      return { ...node, password, db, tls };
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
        db,
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
    config = parseCli(args);
  } catch (err) {
    if (!(err instanceof UsageError || err instanceof RangeError)) throw err;
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
        formatter: getTextFormatter({ value: "bare" }),
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
  try {
    await proxy.listenAndServe();
    return 0;
  } catch (err) {
    console.error(`dprl: ${err instanceof Error ? err.message : err}`);
    return 1;
  } finally {
    for (const name of names) Deno.removeSignalListener(name, onSignal);
    await reset();
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
