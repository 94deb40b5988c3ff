/**
 * The distributed limiter: every proxy of a fleet counts its open upstream
 * connections per host in Redis, and a slot is granted only while the sum over
 * the live workers is under the host's limit.
 *
 * @module
 */

import type { Cluster, Redis } from "ioredis";
import type { FailureMode, RedisConfig, RedisNode } from "./redis_config.ts";
export type { FailureMode } from "./redis_config.ts";
import { getLogger, type Logger } from "@logtape/logtape";
import {
  type AcquireOptions,
  type Limiter,
  LimiterUnavailableError,
  type RateLimit,
  type Slot,
  slotOf,
} from "./limiter.ts";
import { RedisConnectionLostError, RedisCountsLostError } from "./redis_errors.ts";
import { RedisKeyNames } from "./redis_key_names.ts";
import { clientNodes } from "./redis_client.ts";
import type { WorkerInfo, WorkerRegistry } from "./worker_registry.ts";
import type { Fleet } from "./fleet.ts";
import type { FleetQueue } from "./fleet_queue.ts";
import type { LossRecovery } from "./loss_recovery.ts";
import { HostLedger } from "./host_ledger.ts";
import { RedisConnection } from "./redis_connection.ts";
import type { Heartbeat } from "./heartbeat.ts";
import type { FleetChannels } from "./fleet_channels.ts";
import type { AcquireCalls } from "./acquire_calls.ts";
import type { FailureFallback } from "./failure_fallback.ts";
import type { KeptSlots } from "./kept_slots.ts";
import type { FleetCounts } from "./fleet_counts.ts";
import type { FleetAdaptive } from "./fleet_adaptive.ts";
import { assembleParts } from "./limiter_parts.ts";
export type { WorkerInfo } from "./worker_registry.ts";
export { KEEP_FAR_MS, KEEP_MS } from "./kept_slots.ts";

/** Options of {@linkcode RedisLimiter}. */
export interface RedisLimiterOptions {
  /** Where the counters live; see {@linkcode RedisConfig}. */
  redis: RedisConfig;
  /** Prefix of every key. Default `"dprl"`. */
  prefix?: string;
  /**
   * This worker's lease in milliseconds: a worker that stops renewing it
   * (a crashed process) stops counting after it. The heartbeat renews it
   * every third of it. Default 15000.
   */
  lease?: number;
  /** How long one Redis call may take before it counts as failed, in ms. Default 1000. */
  timeout?: number;
  /** What to do while Redis is unreachable. Default `"closed"`. */
  failureMode?: FailureMode;
  /** Where state changes are logged. Default: LogTape category `["dprl", "redis"]`. */
  logger?: Logger;
  /** This worker's id in Redis. Default: a random UUID, unique per instance. */
  workerId?: string;
}

/**
 * A {@linkcode Limiter} whose counters live in Redis, shared by every proxy
 * of a fleet.
 *
 * For host `H` it keeps `<prefix>:{H}:n` (hash: worker id -> this worker's
 * open connections), and per Cluster slot (on a single Redis: once) a lease
 * set (sorted set: worker id -> lease deadline), changed only by Lua scripts
 * that take their time from Redis. A heartbeat every third of a lease renews
 * this worker's lease once per slot, whatever the number of hosts it holds
 * there, and re-asserts the counts of the hosts that need it; at once after a
 * reconnect it re-asserts every count, so lost writes and a Redis restart
 * heal themselves. An epoch key per slot tells a worker when Redis lost keys
 * behind its back (`FLUSHALL`, eviction); the fleet is then told on
 * `<prefix>:lost` and new slots follow the failure mode until every worker
 * has re-asserted its counts. Each worker registers in `<prefix>:workers` and
 * `<prefix>:worker:<id>` (see {@linkcode RedisLimiter.workers}). The acquires
 * of one event-loop turn go to Redis as one script call per slot (on a single
 * Redis: one), and slots given back ride along with the next one.
 *
 * @example
 * ```ts ignore
 * import { RedisLimiter } from "./redis_limiter.ts";
 *
 * const limiter = new RedisLimiter({ redis: "redis://127.0.0.1:6379" });
 * {
 *   using slot = await limiter.acquire("api.example.com", 4);
 *   if (slot) {
 *     // ... use the upstream connection; the slot goes back at the block's end ...
 *   }
 * }
 * await limiter.close();
 * ```
 */
export class RedisLimiter implements Limiter, Fleet<Redis | Cluster> {
  #conn: RedisConnection;
  #keys: RedisKeyNames;
  #lease: number;
  #mode: FailureMode;
  #logger: Logger;
  #worker: string;
  #ledger = new HostLedger();
  #calls: AcquireCalls;
  #fallback: FailureFallback;
  #queue: FleetQueue;
  /** Hosts whose field in Redis this worker may hold: {@linkcode close} deletes them. */
  #touched = new Set<string>();
  #kept: KeptSlots;
  #heartbeat: Heartbeat;
  #channels: FleetChannels;
  #closed = false;
  #recovery: LossRecovery;
  #closing: Promise<void> | null = null;
  #registry: WorkerRegistry;
  #counts: FleetCounts;
  /** Fleet-wide open connections by host, as of the last answer or heartbeat. */
  #fleet = new Map<string, number>();
  /**
   * The fleet's adaptive limits: each host's state lives in Redis under its
   * hash tag, moved by every worker's answers in the acquire calls.
   */
  readonly adaptive: FleetAdaptive;

  /** Creates the limiter; the connection is opened on first use. */
  constructor(options: RedisLimiterOptions) {
    this.#lease = checkMs("Lease", options.lease ?? 15_000);
    this.#mode = options.failureMode ?? "closed";
    if (!["closed", "open", "local"].includes(this.#mode)) {
      throw new TypeError(`Failure mode must be "closed", "open" or "local", got "${this.#mode}"`);
    }
    this.#logger = options.logger ?? getLogger(["dprl", "redis"]);
    this.#worker = options.workerId ?? crypto.randomUUID();
    this.#conn = new RedisConnection({
      redis: options.redis,
      timeout: checkMs("Timeout", options.timeout ?? 1_000),
      mode: this.#mode,
      logger: this.#logger,
      onReady: (reconnect) => this.#heartbeat.ready(reconnect),
      onUp: () => this.#heartbeat.beat(),
    });
    this.#keys = new RedisKeyNames(options.prefix ?? "dprl", this.#conn.cluster);
    const p = assembleParts({
      conn: this.#conn,
      keys: this.#keys,
      worker: this.#worker,
      lease: this.#lease,
      mode: this.#mode,
      logger: this.#logger,
      ledger: this.#ledger,
      fleet: this.#fleet,
      touched: this.#touched,
      closed: () => this.#closed,
      onCall: (ms) => this.onCall?.(ms),
      onPressure: (host) => this.onPressure?.(host),
      onWake: (host) => this.onWake?.(host),
      onPause: (host, until) => this.onPause?.(host, until),
      collect: (host) => this.#collect(host),
    });
    this.#recovery = p.ctx.recovery;
    this.#counts = p.counts;
    this.#registry = p.registry;
    this.#fallback = p.fallback;
    this.#queue = p.queue;
    this.#calls = p.calls;
    this.#kept = p.kept;
    this.#channels = p.channels;
    this.#heartbeat = p.heartbeat;
    this.adaptive = p.adaptive;
  }

  /** Called with a host when a worker of the fleet was refused a slot of it. */
  onPressure?: (host: string) => void;

  /**
   * Called with a host and the end of its pause (ms since epoch) when Redis
   * says that the host asked the fleet, with `Retry-After`, for a pause.
   */
  onPause?: (host: string, until: number) => void;

  /**
   * Tells the fleet that `host` asked for a pause until `until` (ms since
   * epoch): it goes with this turn's call of the host's slot, and while it
   * runs Redis grants nothing of the host to any worker.
   */
  pause(host: string, until: number): void {
    if (!this.#closed) this.#calls.pause(host, until);
  }

  /** Called with the duration in ms of every Redis call this limiter makes, e.g. for a histogram. */
  onCall?: (ms: number) => void;

  /**
   * Called with a host when a slot of it was given back anywhere in the
   * fleet (or a ticket left its queue) while this worker waits for it.
   * Messages can be lost; owners also ask again on a timer.
   */
  onWake?: (host: string) => void;

  /** Whether Redis is reachable: `false` from a lost connection or a failed call until Redis answers again. */
  get up(): boolean {
    return this.#conn.up && !this.#closed;
  }

  /** The Redis client the limiter uses (for the fleet's limit table). */
  get client(): Redis | Cluster {
    return this.#conn.client;
  }

  /** This worker's id: the field and member it writes in Redis. */
  get workerId(): string {
    return this.#worker;
  }

  /** The Redis servers this limiter talks to now, as connected, so the proxy can keep them out of its clients' reach. */
  nodes(): RedisNode[] {
    return clientNodes(this.#conn.client);
  }

  /** The slots this process holds for `host`, counted or not. */
  localCount(host: string): number {
    return this.#ledger.held(host);
  }

  /**
   * Takes one slot for `host` unless the fleet already holds `limit` (when
   * above 0) or, for a member of `group`, the fleet holds `group.limit` (when
   * above 0) for all members together; both are checked and taken in one
   * script call. A member's keys carry the group's hash tag
   * (`<prefix>:{g:<group>}:h:<host>:n`), so on Redis Cluster the host and
   * its group live in one slot. With `options.adaptive`, the fleet holds
   * fewer than the host's adaptive limit (its state in Redis, `limit` its
   * ceiling); with `options.rate`, a turn under the rate is taken in the
   * same call (rejecting with `RateLimitedError` when none comes within
   * its longest wait). When Redis cannot decide, the failure mode
   * applies: `"closed"` rejects with {@linkcode LimiterUnavailableError},
   * `"open"` grants an uncounted slot, `"local"` grants while this process
   * holds fewer than `limit` (the adaptive limit last answered, for an
   * adaptive host; and fewer than `group.limit` for the group), under this
   * process's own rate.
   */
  async acquire(host: string, limit: number, options: AcquireOptions = {}): Promise<Slot | null> {
    const grant = await this.#take(host, limit, options);
    return grant === false ? null : slotOf(host, () => this.#release(host), grant);
  }

  /** Resolves `false` when refused, else the wait for the slot's turn under its rate. */
  async #take(host: string, limit: number, options: AcquireOptions): Promise<number | false> {
    const { group, ticket, rate, adaptive } = options;
    if (this.#closed) throw new LimiterUnavailableError("Redis limiter is closed");
    const groupLimit = this.#keys.join(host, group, !this.#ledger.has(host));
    if (adaptive) this.adaptive.bound(host, { min: adaptive.min, max: limit });
    // Without Redis, the adaptive limit last answered is the host's limit.
    const known = adaptive ? this.adaptive.view(host)?.limit : undefined;
    const ask = {
      limit: known === undefined || (limit > 0 && limit < known) ? limit : known,
      groupLimit,
      slot: true,
      rate,
      ticket: "",
      adaptive: adaptive !== undefined,
    };
    this.#start();
    if (this.#conn.failFast()) return this.#fallback.grant(host, ask, null);
    if (this.#recovery.recovering(host)) {
      return this.#fallback.grant(host, ask, new RedisCountsLostError());
    }
    this.#ledger.entry(host).limit = limit;
    // A kept slot needs no call; a turn under a rate and an adaptive limit do.
    if (ticket === undefined && !rate && !adaptive && this.#kept.take(host)) return 0;
    this.#kept.giveBackAll(host);
    this.#touched.add(host);
    this.#ledger.ask(host, limit);
    // A ticket that left the queue meanwhile asks as a newcomer.
    ask.ticket = ticket !== undefined && this.#queue.holds(host, ticket) ? ticket : "";
    return await new Promise<number | false>((resolve, reject) => {
      this.#calls.ask(host, { ...ask, resolve, reject });
    });
  }

  /**
   * Takes a turn under `rate` for a request to `host` on an open
   * connection, in the next acquire call of its slot (checked on Redis
   * time, shared by the fleet). Resolves the wait for it in ms; rejects
   * with `RateLimitedError` when none comes within `rate.maxWaitMs`, and
   * when Redis cannot answer, as the failure mode says.
   */
  async admit(host: string, rate: RateLimit): Promise<number> {
    if (this.#closed) throw new LimiterUnavailableError("Redis limiter is closed");
    const ask = { limit: 0, groupLimit: -1, slot: false, rate, ticket: "" };
    this.#start();
    if (this.#conn.failFast()) return this.#fallback.turn(rate, null);
    this.#touched.add(host);
    const grant = await new Promise<number | false>((resolve, reject) => {
      this.#calls.ask(host, { ...ask, resolve, reject });
    });
    return grant === false ? 0 : grant;
  }

  /** Gives back one slot of `host`; a host with no slot held is left alone. */
  #release(host: string): void {
    if (this.#closed) {
      const s = this.#ledger.get(host);
      if (s && s.counted - s.kept.length > 0) s.counted--;
      return;
    }
    if (this.#kept.release(host) === "queued") this.#calls.send(host);
    this.#collect(host);
  }

  /**
   * Puts a request waiting for a slot of `host` at the end of the fleet's
   * queue and returns its ticket; {@linkcode acquire} with the ticket is
   * granted only when no earlier ticket anywhere in the fleet still waits
   * for the slots left. The ticket lives with this worker's lease. Give it
   * back with {@linkcode dequeue} when the request stops waiting.
   */
  enqueue(host: string): string {
    const ticket = this.#queue.ticket();
    if (this.#closed) return ticket;
    this.#kept.giveBackAll(host);
    this.#queue.add(host, ticket);
    this.#start();
    return ticket;
  }

  /** Takes `ticket` out of the fleet's queue of `host` (no-op once granted or gone). */
  dequeue(host: string, ticket: string): void {
    if (!this.#closed) this.#queue.remove(host, ticket);
  }

  /** The requests waiting for `host` in the fleet's queue, as Redis last answered; 0 when none is known to wait. */
  waiting(host: string): number {
    return this.#queue.waiting(host);
  }

  /**
   * The slots held for `host` by every live worker. When Redis cannot answer,
   * failure mode `"closed"` rejects with {@linkcode LimiterUnavailableError};
   * the others answer with this process's own count.
   */
  async count(host: string): Promise<number> {
    if (this.#closed) throw new LimiterUnavailableError("Redis limiter is closed");
    try {
      if (this.#conn.failFast()) throw new RedisConnectionLostError("Redis is unreachable");
      this.#kept.giveBackAll(host);
      // What waits to be sent is written before the count.
      await this.#calls.flushHost(host);
      const [total] = await this.#counts.read([host]);
      this.#fleet.set(host, total);
      return total;
    } catch (error) {
      if (this.#mode === "closed") {
        throw new LimiterUnavailableError(
          "Redis is unavailable, so the connection count is unknown",
          { cause: error },
        );
      }
      return this.localCount(host);
    }
  }

  /**
   * Stops the heartbeat, deletes this worker's fields and members of every
   * host it touched, and closes the Redis connection if this limiter opened
   * it. Safe to call more than once.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    this.#heartbeat.stop();
    this.#kept.close();
    this.#calls.close();
    this.#channels.close();
    const client = this.#conn.client;
    const hosts = [...new Set([...this.#touched, ...this.#ledger.hosts()])];
    const queues = this.#queue.close();
    this.#touched.clear();
    this.#ledger.clear();
    this.#fleet.clear();
    if (client.status === "ready") {
      const bounded = <T>(call: Promise<T>) => this.#conn.bounded(call);
      await Promise.allSettled([
        ...this.#heartbeat.leave(hosts).map(bounded),
        ...queues.map((leave) => bounded(leave())),
        ...this.#registry.unregister().map(bounded),
      ]);
    }
    await this.#conn.close();
  }

  /**
   * Forgets a host that holds nothing and that Redis agrees on, with its
   * fleet count when nobody else is known to hold it: a worker's state grows
   * with the hosts it holds, not with every host it ever asked for.
   */
  #collect(host: string): void {
    if (!this.#ledger.collect(host)) return;
    this.#touched.delete(host);
    if (this.#fleet.get(host) === 0) this.#fleet.delete(host);
    this.#recovery.forgetHost(host);
  }

  /**
   * How many hosts this limiter keeps any state of: held, given back but not
   * yet synced, waiting in a queue, in a group, or known to be held elsewhere
   * in the fleet. Returns to 0 once nothing is held or waited for anywhere.
   */
  trackedHosts(): number {
    const hosts = new Set([
      ...this.#ledger.hosts(),
      ...this.#touched,
      ...this.#fleet.keys(),
      ...this.#queue.hosts(),
      ...this.#keys.groupOf.keys(),
      ...this.#recovery.hosts(),
      ...this.#channels.published(),
    ]);
    return hosts.size;
  }

  /**
   * Sets what this worker tells the fleet about itself (host name, pid,
   * version, admin URL) and registers it at once; the heartbeat renews the
   * entry and {@linkcode close} removes it.
   */
  setWorkerInfo(info: Partial<Omit<WorkerInfo, "id" | "connections">>): void {
    this.#registry.setInfo(info);
    if (this.#closed) return;
    if (!this.#heartbeat.started) this.#start();
    else this.#heartbeat.register();
  }

  /** Every live worker of the fleet (its lease not passed), with its open connections as of its last heartbeat; rejects when Redis cannot answer. */
  async workers(): Promise<WorkerInfo[]> {
    if (this.#closed) throw new LimiterUnavailableError("Redis limiter is closed");
    return await this.#registry.workers();
  }

  /** The open connections of the whole fleet for every host this worker knows of, as of the last answer or heartbeat; costs no Redis call. */
  fleetCounts(): ReadonlyMap<string, number> {
    return this.#fleet;
  }

  /** Starts the heartbeat and the subscriptions, once. */
  #start(): void {
    if (this.#closed) return;
    this.#heartbeat.start();
    this.#channels.subscribe(this.#queue.waited());
  }
}

function checkMs(what: string, ms: number): number {
  if (!Number.isFinite(ms) || ms <= 0) {
    throw new RangeError(`${what} must be a positive number of milliseconds, got ${ms}`);
  }
  return Math.ceil(ms);
}
