/**
 * Fleet tests' helpers: a proxy in its own process (to kill it with
 * SIGKILL), and what Redis says about the leases of the workers.
 *
 * @module
 */

import { waitFor } from "./raw.ts";
import type { RedisServer } from "./redis_server.ts";
import { Proc, ROOT } from "./spawn.ts";

/** What {@linkcode startProxyWorker} starts. */
export interface ProxyWorkerOptions {
  /** The Redis URL the fleet shares. */
  redis: string;
  /** The default limit per host. */
  limit: number;
  /** The lease, in milliseconds. */
  lease: number;
  /** The queue timeout, in milliseconds (0: no queue). */
  queueTimeout?: number;
}

/** A proxy process of the fleet; `await using` kills it. */
export interface ProxyWorker extends AsyncDisposable {
  /** The process. */
  readonly proc: Proc;
  /** Its proxy URL. */
  readonly url: URL;
  /** Its address, for `Deno.connect`. */
  readonly addr: { hostname: string; port: number };
}

/** Starts `tests/_helpers/proxy_worker.ts` in a process and waits until it listens. */
export async function startProxyWorker(options: ProxyWorkerOptions): Promise<ProxyWorker> {
  const worker = new URL("./proxy_worker.ts", import.meta.url).pathname;
  const proc = new Proc(Deno.execPath(), [
    "run",
    "-A",
    "-q",
    worker,
    options.redis,
    String(options.limit),
    String(options.lease),
    String(options.queueTimeout ?? 0),
  ], ROOT);
  try {
    const url = new URL((await proc.waitOutput(/listening (\S+)/))[1]);
    return {
      proc,
      url,
      addr: { hostname: url.hostname, port: Number(url.port) },
      [Symbol.asyncDispose]: () => proc[Symbol.asyncDispose](),
    };
  } catch (error) {
    await proc[Symbol.asyncDispose]();
    throw error;
  }
}

/** The members of a sorted set of leases with their deadlines (Redis time, ms). */
export async function leaseDeadlines(
  redis: RedisServer,
  key: string,
): Promise<Map<string, number>> {
  const words = (await redis.cli("ZRANGE", key, "0", "-1", "WITHSCORES")).trim().split("\n");
  const deadlines = new Map<string, number>();
  for (let i = 0; i + 1 < words.length; i += 2) deadlines.set(words[i], Number(words[i + 1]));
  return deadlines;
}

/**
 * Waits until every worker in the sorted set of leases `key` has renewed its
 * lease (a later deadline than now), that is until each ran a heartbeat.
 */
export async function waitLeasesRenewed(redis: RedisServer, key: string): Promise<void> {
  const before = await leaseDeadlines(redis, key);
  if (before.size === 0) throw new Error(`No lease in ${key}`);
  await waitFor(async () => {
    const now = await leaseDeadlines(redis, key);
    return [...before].every(([worker, deadline]) => (now.get(worker) ?? 0) > deadline);
  }, `every lease in ${key} renewed`);
}

/** Redis's clock, in milliseconds (lease deadlines are on it). */
export async function redisNow(redis: RedisServer): Promise<number> {
  const [seconds, micros] = (await redis.cli("TIME")).trim().split("\n").map(Number);
  return seconds * 1000 + Math.floor(micros / 1000);
}
