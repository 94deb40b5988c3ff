/**
 * The Redis limiter's client: made from a URL, options (TLS, Sentinel) or a
 * Cluster's nodes, or adopted as given, and the servers it is connected to.
 *
 * @module
 */

import { Cluster, Redis } from "ioredis";
import type { ClusterOptions, RedisOptions } from "ioredis";
import type { Logger } from "@logtape/logtape";
import type { RedisConfig, RedisNode } from "./redis_config.ts";
import { describe } from "./redis_errors.ts";

/** Whether `config` is a connected ioredis client rather than its options. */
function isClient(config: RedisConfig): boolean {
  return typeof config === "object" && config !== null &&
    typeof (config as { defineCommand?: unknown }).defineCommand ===
      "function" &&
    typeof (config as { status?: unknown }).status === "string";
}

/**
 * The client `config` names: the client itself when it is one (not owned:
 * the caller closes it), else a new one (owned) that connects on first use
 * and never replays a command cut off by a lost connection; a plain client's
 * sockets are guarded against a second error ({@linkcode guardStreams}).
 * Throws a `TypeError` for a URL that is not `redis://` or `rediss://`.
 */
export function createClient(
  config: RedisConfig,
): { client: Redis | Cluster; own: boolean } {
  if (isClient(config)) return { client: config as Redis | Cluster, own: false };
  const defaults: RedisOptions = {
    lazyConnect: true,
    // A command cut off by a lost connection must not be replayed to a Redis
    // that may have restarted empty: it fails, and the heartbeat heals.
    autoResendUnfulfilledCommands: false,
    retryStrategy: (times: number) => Math.min(times * 50, 1000),
  };
  if (typeof config === "string") {
    if (!/^rediss?:\/\//i.test(config)) {
      throw new TypeError(
        `Redis URL must start with redis:// or rediss://, got "${config}"`,
      );
    }
    return { client: new Redis(config, defaults), own: true };
  }
  if ("cluster" in config && Array.isArray(config.cluster)) {
    const options = config.options as ClusterOptions | undefined;
    return {
      client: new Cluster(config.cluster, {
        lazyConnect: true,
        ...options,
        redisOptions: {
          autoResendUnfulfilledCommands: false,
          ...options?.redisOptions,
        },
      }),
      own: true,
    };
  }
  const { url, ...options } = config as RedisOptions & { url?: unknown };
  if (url !== undefined) {
    if (typeof url !== "string" || !/^rediss?:\/\//i.test(url)) {
      throw new TypeError(`Redis URL must start with redis:// or rediss://, got "${url}"`);
    }
    return { client: new Redis(url, { ...defaults, ...options }), own: true };
  }
  return { client: new Redis({ ...defaults, ...options }), own: true };
}

/**
 * ioredis listens for one error of each socket; a second one (an EPIPE after
 * a TLS alert, say) would be thrown as uncaught. Every socket of `client`
 * gets a listener that ignores what ioredis has already been told.
 */
export function guardStreams(client: Redis | Cluster): void {
  if ((client as { isCluster?: boolean }).isCluster) return;
  const guarded = new WeakSet<object>();
  const guard = (): void => {
    const stream = (client as unknown as { stream?: { on(e: string, f: () => void): void } })
      .stream;
    if (stream && !guarded.has(stream)) {
      guarded.add(stream);
      stream.on("error", () => {});
    }
  };
  client.on("connect", guard);
  client.on("error", guard);
}

/**
 * A connection for the subscriptions of `client`: a duplicate, with sharded
 * subscribers on Cluster, whose errors are left to the calls. Once a single
 * Redis (or a Sentinel's master) is connected again, it subscribes anew to
 * what `channels` lists, a failure ignored. ioredis's own re-subscription is
 * off: its call has no handler, so a close before Redis answered it left a
 * rejection nobody heard, which ends a Deno process.
 */
export function subscriber(client: Redis | Cluster, channels: () => string[]): Redis | Cluster {
  if ((client as { isCluster?: boolean }).isCluster) {
    const sub = (client as Cluster).duplicate(undefined, { shardedSubscribers: true });
    sub.on("error", () => {});
    return sub;
  }
  const sub = (client as Redis).duplicate({ autoResubscribe: false });
  sub.on("error", () => {});
  guardStreams(sub);
  let connected = false;
  sub.on("ready", () => {
    const list = connected ? channels() : [];
    connected = true;
    if (list.length > 0) sub.subscribe(...list).catch(() => {});
  });
  return sub;
}

/**
 * The Redis servers `client` talks to now, as connected (a Sentinel's
 * master, every Cluster node it knows).
 */
export function clientNodes(client: Redis | Cluster): RedisNode[] {
  const list = client instanceof Cluster ? client.nodes("all") : [client];
  return list.flatMap((node) => {
    const stream = (node as { stream?: { remoteAddress?: string; remotePort?: number } }).stream;
    const host = stream?.remoteAddress ?? node.options.host;
    const port = stream?.remotePort ?? node.options.port;
    return host && port ? [{ host, port }] : [];
  });
}

/**
 * Warns once when Redis may evict dprl's keys: a `maxmemory` with a policy
 * other than `noeviction` on one of `masters`. Says nothing (but at debug
 * level) when `CONFIG` is refused. `bounded` bounds each call in time.
 */
export async function warnIfEvicting(
  masters: (Redis | Cluster)[],
  bounded: <T>(call: Promise<T>) => Promise<T>,
  logger: Logger,
): Promise<void> {
  for (const node of masters) {
    let reply: string[];
    try {
      reply = (await bounded(node.config("GET", "maxmemory*"))) as string[];
    } catch (error) {
      logger.debug("Cannot read the Redis configuration: {error}", { error: describe(error) });
      return;
    }
    const config = new Map<string, string>();
    for (let i = 0; i + 1 < reply.length; i += 2) config.set(reply[i], reply[i + 1]);
    const maxmemory = config.get("maxmemory") ?? "0";
    const policy = config.get("maxmemory-policy") ?? "noeviction";
    if (maxmemory !== "0" && policy !== "noeviction") {
      logger.warn(
        "Redis may evict dprl's counts (maxmemory {maxmemory}, maxmemory-policy {policy}); set maxmemory-policy noeviction or no maxmemory",
        { maxmemory, policy },
      );
      return;
    }
  }
}
