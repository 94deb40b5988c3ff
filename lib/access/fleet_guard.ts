/**
 * {@linkcode FleetGuard}: keeps the Redis servers a proxy meets and the
 * proxy and admin ports of its fleet's workers out of clients' reach.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import type { Fleet } from "../limit/fleet.ts";
import type { RedisConfig, RedisNode, RedisOptions } from "../limit/redis_config.ts";
import type { DestinationPolicy } from "./destination_policy.ts";

/** Guard ticks (of a second) between two reads of the fleet's addresses. */
const FLEET_TICKS = 5;

/** Options of {@linkcode FleetGuard}. */
export interface FleetGuardOptions {
  /** The policy whose protected addresses the guard adds to. */
  destinations: DestinationPolicy;
  /** The limiter's fleet, which names the Redis nodes it meets and the workers; `null` in memory mode. */
  fleet: Fleet | null;
  /** Where a failed read of the registry is logged (debug). */
  logger: Logger;
}

/**
 * Every second refuses as destinations the Redis nodes the limiter meets (a
 * Sentinel's master, Cluster nodes), and every fifth second the proxy and
 * admin addresses of every worker in the registry. Disposing stops it.
 */
export class FleetGuard implements Disposable {
  #o: FleetGuardOptions;
  #timer: ReturnType<typeof setInterval> | undefined;
  #ticks = 0;
  /** Whether the fleet's addresses are being read from the registry. */
  #reading = false;

  /** Creates the guard; {@linkcode start} runs it. */
  constructor(options: FleetGuardOptions) {
    this.#o = options;
  }

  /** Guards at once, then every second; a limiter without a fleet needs no guard. */
  start(): void {
    const fleet = this.#o.fleet;
    if (fleet === null) return;
    this.#tick(fleet);
    this.#timer = setInterval(() => this.#tick(fleet), 1000);
    Deno.unrefTimer(this.#timer);
  }

  #tick(fleet: Fleet): void {
    for (const node of fleet.nodes()) {
      this.#o.destinations.protect(node.host, node.port).catch(() => {});
    }
    if (this.#ticks++ % FLEET_TICKS === 0) this.#guardFleet(fleet);
  }

  /**
   * Refuses as destinations the proxy and admin addresses of every worker in
   * the registry, replacing the last list; keeps it while Redis is down.
   */
  async #guardFleet(fleet: Fleet): Promise<void> {
    if (this.#reading) return;
    this.#reading = true;
    try {
      const workers = await fleet.workers();
      const members = workers.flatMap((w) => [w.adminUrl, w.proxyUrl]).flatMap(urlAddress);
      await this.#o.destinations.protectFleet(members);
    } catch (error) {
      this.#o.logger.debug("Fleet addresses not refreshed: {error}", { error });
    } finally {
      this.#reading = false;
    }
  }

  /** Stops guarding. */
  [Symbol.dispose](): void {
    clearInterval(this.#timer);
  }
}

/**
 * The Redis nodes a configuration names, to keep them out of clients' reach
 * from the start.
 *
 * @example
 * ```ts
 * import { redisNodes } from "./fleet_guard.ts";
 * redisNodes("redis://10.0.0.5:6380"); // [{ host: "10.0.0.5", port: 6380 }]
 * ```
 */
export function redisNodes(config: RedisConfig | undefined): RedisNode[] {
  if (config === undefined) return [];
  if (typeof config === "string") {
    try {
      const url = new URL(config);
      return [{ host: url.hostname.replace(/^\[|\]$/g, ""), port: Number(url.port || 6379) }];
    } catch {
      return [];
    }
  }
  if ("cluster" in config && Array.isArray(config.cluster)) return config.cluster;
  if ("defineCommand" in config) return []; // a connected client: its address is its own
  const options = config as RedisOptions;
  return [
    ...(options.sentinels ?? []),
    { host: options.host ?? "127.0.0.1", port: options.port ?? 6379 },
  ];
}

/** The address of a URL from the worker registry, or none. */
function urlAddress(url: string): { hostname: string; port: number }[] {
  try {
    const u = new URL(url);
    const port = Number(u.port || (u.protocol === "https:" ? 443 : 80));
    return [{ hostname: u.hostname.replace(/^\[|\]$/g, ""), port }];
  } catch {
    return [];
  }
}
