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
import { type AcquireOptions, type Limiter, LimiterUnavailableError } from "./limiter.ts";
import {
  ACQUIRE,
  type AcquireInput,
  type AcquireReply,
  COUNT,
  defineScripts,
  queueScript,
  RELEASE,
  runScript,
  SYNC,
  type SyncHost,
  type SyncInput,
} from "./redis_script_codec.ts";
import {
  describe,
  isAuthError,
  RedisConnectionLostError,
  RedisCountsLostError,
  RedisReplyError,
  RedisTimeoutError,
  toRedisError,
} from "./redis_errors.ts";
import { withTimeout } from "../with_timeout.ts";
import { RedisKeyNames } from "./redis_key_names.ts";
import { clientNodes, createClient, guardStreams, warnIfEvicting } from "./redis_client.ts";
import { type WorkerContext, type WorkerInfo, WorkerRegistry } from "./worker_registry.ts";
import type { Fleet } from "./fleet.ts";
import { FleetLine } from "./fleet_line.ts";
import { LossRecovery } from "./loss_recovery.ts";
import { groupBySlot, type PreparedSync, splitBatches, SyncSender } from "./sync_pipeline.ts";
export type { WorkerInfo } from "./worker_registry.ts";

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

/** What this worker knows about one host. */
interface HostState {
  /** Slots held that Redis counts, or will count after the next sync. */
  counted: number;
  /** Slots admitted in failure mode `"open"`, never counted in Redis. */
  uncounted: number;
  /**
   * Of `counted`, slots given back here but still counted in Redis, kept for
   * this worker's next acquire of the host (see {@linkcode KEEP_MS}): when
   * each was given back (`performance.now()`), oldest first.
   */
  kept: number[];
  /** The limit the last acquire named (0: none). */
  limit: number;
  /** Acquires sent to Redis and not answered yet. */
  pending: number;
  /** Syncs sent so far (tells an acquire whether a sync counted it). */
  syncs: number;
  /** Redis may disagree with `counted`: keep the host and sync it. */
  dirty: boolean;
  /** Bumped whenever `dirty` is set, so a sync only clears what it saw. */
  dirtyGen: number;
  /**
   * When (ms since epoch) this worker last renewed the expiry of the host's
   * keys, or a time before it: spread at random over the renewal interval
   * when first seen, so that renewals of many hosts spread over heartbeats.
   */
  renewedAt: number;
}

/** An acquire waiting in a {@linkcode Batch}. */
interface Waiter {
  limit: number;
  /** The waiting request's ticket in the fleet's line, or `""`. */
  ticket: string;
  /** The group's limit; -1: no group. */
  groupLimit: number;
  resolve: (granted: boolean) => void;
  reject: (error: unknown) => void;
}

/** What one host asked of Redis in this event-loop turn, sent as one script call. */
interface Batch {
  s: HostState;
  acquires: Waiter[];
  /** Slots to give back in Redis (already given back here). */
  releases: number;
  /** The limit of the host's group as the last acquire named it; -1: no group. */
  groupLimit: number;
}

/** What was true when a batch's acquires were sent. */
interface Sent {
  /** The host's syncs sent so far. */
  syncs: number;
  /** The connection's epoch (bumped by a lost connection). */
  epoch: number;
  /** The epoch key of the host's slot. */
  epochKey: string;
}

/** How many leases an idle host's keys outlive their last write. */
const TTL_LEASES = 12;

/**
 * Every held host is synced in full (its count checked, its keys' expiry
 * renewed) about once in this many leases: each heartbeat syncs the hosts
 * synced longest ago, as many as that takes, and at least
 * {@linkcode CHECK_HOSTS}. A host not synced for `TTL_LEASES - 2` leases
 * (after a burst of new hosts) is synced at the next heartbeat whatever the
 * count.
 */
const RENEW_LEASES = 6;

/**
 * The fewest held hosts a heartbeat syncs in full: with up to this many,
 * every heartbeat checks every count.
 */
const CHECK_HOSTS = 256;

/**
 * How long a slot given back stays counted in Redis for this worker's next
 * acquire of the same host, in ms: a worker that closes a connection and
 * opens another to the host within it makes no Redis call for either. A slot
 * is kept only while the fleet holds fewer than the host's limit with it (so
 * nobody else is refused for it), the host is in no group and no request of
 * this worker waits in its line; a refusal anywhere in the fleet
 * (`<prefix>:pressure`) gives the host's kept slots back at once.
 */
export const KEEP_MS = 100;

/**
 * A {@linkcode Limiter} whose counters live in Redis, shared by every proxy
 * of a fleet.
 *
 * For host `H` it keeps `<prefix>:{H}:n` (hash: worker id -> this worker's
 * open connections), and per Cluster slot (on a single Redis: once) a lease
 * set (sorted set: worker id -> lease deadline), changed only by Lua scripts
 * that take their time from Redis. A heartbeat every third of a lease renews
 * this worker's lease once per slot, whatever the number of hosts it holds
 * there, and re-asserts the counts of the hosts that need it (changed, due to
 * renew their keys' expiry, and a bounded number checked in turn); at once
 * after a reconnect it re-asserts every count, so lost writes and a Redis
 * restart heal themselves.
 * An epoch key per slot tells a worker when Redis lost keys behind its back
 * (`FLUSHALL`, eviction); the fleet is then told on `<prefix>:lost` and new
 * slots follow the failure mode until every worker has re-asserted its counts.
 * Each worker registers in `<prefix>:workers` and `<prefix>:worker:<id>`
 * (see {@linkcode RedisLimiter.workers}). Acquires and releases of one host in
 * one event-loop turn go to Redis as one script call.
 *
 * @example
 * ```ts ignore
 * import { RedisLimiter } from "./redis_limiter.ts";
 *
 * const limiter = new RedisLimiter({ redis: "redis://127.0.0.1:6379" });
 * if (await limiter.acquire("api.example.com", 4)) {
 *   try {
 *     // ... use the upstream connection ...
 *   } finally {
 *     limiter.release("api.example.com");
 *   }
 * }
 * await limiter.close();
 * ```
 */
export class RedisLimiter implements Limiter, Fleet<Redis | Cluster> {
  #client: Redis | Cluster;
  #own: boolean;
  #keys: RedisKeyNames;
  #lease: number;
  #ttl: number;
  /** A held host is synced in full about this often (ms); see {@linkcode RENEW_LEASES}. */
  #renewEvery: number;
  #timeout: number;
  #mode: FailureMode;
  #logger: Logger;
  #worker: string;
  #hosts = new Map<string, HostState>();
  /** This worker's tickets in the fleet's lines. */
  #line: FleetLine;
  /** This turn's acquires and releases, by host, until the flush sends them. */
  #queued = new Map<string, Batch>();
  /** Hosts whose field in Redis this worker may hold: {@linkcode close} deletes them. */
  #touched = new Set<string>();
  /** Hosts with kept slots: each is given back once kept {@linkcode KEEP_MS}. */
  #keeping = new Set<string>();
  /** The next sweep of kept slots, while any are kept. */
  #keepTimer: ReturnType<typeof setTimeout> | null = null;
  #available = true;
  #everReady = false;
  /** The connection closed and no 'ready' has been handled since. */
  #awaitingReady = false;
  /** Bumped at every lost connection: a reply from another epoch is distrusted. */
  #epoch = 0;
  #heartbeat: ReturnType<typeof setInterval> | null = null;
  /** Receives the fleet's pressure messages (see {@linkcode onPressure}). */
  #subscriber: Redis | Cluster | null = null;
  /** When pressure on a host was last published, by host. */
  #published = new Map<string, number>();
  #closed = false;
  /** Sends the heartbeat's syncs. */
  #syncs: SyncSender;
  /** What Redis lost and the recovery windows. */
  #recovery: LossRecovery;
  #closing: Promise<void> | null = null;
  #cluster: boolean;
  /** The last error the client reported, told when the connection closes. */
  #lastError: unknown = null;
  /** This worker's entry in the worker registry. */
  #registry: WorkerRegistry;
  /** Fleet-wide open connections by host, as of the last answer or heartbeat. */
  #fleet = new Map<string, number>();
  /** When (ms since epoch) the last answered sync renewing this worker's lease of a slot was sent, by epoch key. */
  #leasedAt = new Map<string, number>();
  #onReady = (): void => this.#handleReady();
  #onClose = (): void => {
    if (this.#closed) return;
    this.#awaitingReady = true;
    this.#epoch++;
    const cause = this.#lastError ?? new RedisConnectionLostError("Connection to Redis closed");
    this.#lastError = null;
    this.#down(cause);
  };
  #onError = (error: unknown): void => {
    this.#lastError = error;
    this.#logger.debug("Redis client error: {error}", { error });
  };

  /** Creates the limiter; the connection is opened on first use. */
  constructor(options: RedisLimiterOptions) {
    this.#lease = checkMs("Lease", options.lease ?? 15_000);
    this.#timeout = checkMs("Timeout", options.timeout ?? 1_000);
    this.#ttl = this.#lease * TTL_LEASES;
    this.#renewEvery = this.#lease * RENEW_LEASES;
    this.#mode = options.failureMode ?? "closed";
    if (!["closed", "open", "local"].includes(this.#mode)) {
      throw new TypeError(
        `Failure mode must be "closed", "open" or "local", got "${this.#mode}"`,
      );
    }
    this.#logger = options.logger ?? getLogger(["dprl", "redis"]);
    this.#worker = options.workerId ?? crypto.randomUUID();
    const { client, own } = createClient(options.redis);
    this.#client = client;
    this.#own = own;
    this.#cluster = (client as { isCluster?: boolean }).isCluster === true;
    this.#keys = new RedisKeyNames(options.prefix ?? "dprl", this.#cluster);
    this.#syncs = new SyncSender({ client, cluster: this.#cluster, call: (op) => this.#call(op) });
    this.#recovery = new LossRecovery({
      keys: this.#keys,
      worker: this.#worker,
      lease: this.#lease,
      mode: this.#mode,
      logger: this.#logger,
      closed: () => this.#closed,
      publish: (channel, message) => {
        this.#client.publish(channel, message).catch(() => {});
      },
      reassert: () => {
        for (const [h, s] of this.#hosts) this.#markDirty(h, s);
        this.#beat();
      },
    });
    const context: WorkerContext = {
      client,
      keys: this.#keys,
      worker: this.#worker,
      lease: this.#lease,
      ttl: this.#ttl,
      call: (op) => this.#call(op),
    };
    this.#line = new FleetLine({
      ...context,
      canSend: () => !this.#closed && !this.#failFast(),
      schedule: () => {
        if (this.#queued.size === 0) queueMicrotask(() => this.#flushAll());
      },
      watch: (host, on) => this.#watchLine(host, on),
      healed: (keys) => this.#recovery.healed(keys),
    });
    this.#registry = new WorkerRegistry(context);
    defineScripts(client, this.#cluster);
    client.on("ready", this.#onReady);
    client.on("close", this.#onClose);
    if (own) {
      client.on("error", this.#onError);
      guardStreams(client);
    }
  }

  /**
   * Called with a host when a worker of the fleet was refused a slot of it.
   * Refusals are published on `<prefix>:pressure`, to which the limiter
   * subscribes at its first acquire.
   */
  onPressure?: (host: string) => void;

  /**
   * Called with the duration in milliseconds of every Redis call this
   * limiter makes (answered, failed or timed out), e.g. for a histogram.
   */
  onCall?: (ms: number) => void;

  /**
   * Whether Redis is reachable: `false` from a lost connection or a failed
   * call until Redis answers again.
   */
  get up(): boolean {
    return this.#available && !this.#awaitingReady && !this.#closed;
  }

  /** The Redis client the limiter uses (for the fleet's limit table). */
  get client(): Redis | Cluster {
    return this.#client;
  }

  /** This worker's id: the field and member it writes in Redis. */
  get workerId(): string {
    return this.#worker;
  }

  /**
   * The Redis servers this limiter talks to now, as connected (a Sentinel's
   * master, every Cluster node it knows), so the proxy can keep them out of
   * its clients' reach.
   */
  nodes(): RedisNode[] {
    return clientNodes(this.#client);
  }

  /** The slots this process holds for `host`, counted or not. */
  localCount(host: string): number {
    const s = this.#hosts.get(host);
    return s ? s.counted - s.kept.length + s.uncounted : 0;
  }

  /**
   * Takes one slot for `host` unless the fleet already holds `limit` (when
   * above 0) or, for a member of `group`, the fleet holds `group.limit` (when
   * above 0) for all members together; both are checked and taken in one
   * script call. A member's keys carry the group's hash tag
   * (`<prefix>:{g:<group>}:h:<host>:n`), so on Redis Cluster the host and
   * its group live in one slot. When Redis cannot decide, the failure mode
   * applies: `"closed"` rejects with {@linkcode LimiterUnavailableError},
   * `"open"` grants an uncounted slot, `"local"` grants while this process
   * holds fewer than `limit` (and fewer than `group.limit` for the group).
   */
  async acquire(host: string, limit: number, options: AcquireOptions = {}): Promise<boolean> {
    const { group, ticket } = options;
    if (this.#closed) {
      throw new LimiterUnavailableError("Redis limiter is closed");
    }
    if (!this.#hosts.has(host) && !this.#queued.has(host)) {
      // The group (and so the keys) change only while the host holds nothing.
      if (group) this.#keys.groupOf.set(host, group.name);
      else this.#keys.groupOf.delete(host);
    }
    const groupName = this.#keys.groupOf.get(host);
    const groupLimit = groupName === undefined
      ? -1
      : group?.name === groupName
      ? Math.max(0, group.limit)
      : 0;
    const s = this.#state(host);
    this.#startHeartbeat();
    this.#subscribe();
    if (this.#failFast()) return this.#fallback(host, s, limit, null, groupLimit);
    if (this.#recovery.recovering(host)) {
      return this.#fallback(host, s, limit, new RedisCountsLostError(), groupLimit);
    }
    s.limit = limit;
    if (s.kept.length > 0) {
      if (ticket === undefined && this.#mayKeep(host, s, 0)) {
        s.kept.pop(); // the newest: the older ones go back first
        return true;
      }
      this.#giveBackKept(host);
    }
    this.#touched.add(host);
    s.pending++;
    const batch = this.#batch(host, s);
    batch.groupLimit = groupLimit;
    return await new Promise<boolean>((resolve, reject) => {
      // A ticket that left the line meanwhile asks as a newcomer.
      const waiting = ticket !== undefined && this.#line.holds(host, ticket);
      batch.acquires.push({ limit, groupLimit, ticket: waiting ? ticket : "", resolve, reject });
    });
  }

  /** The batch of `host` for this turn; the first one schedules the flush. */
  #batch(host: string, s: HostState): Batch {
    let batch = this.#queued.get(host);
    if (!batch) {
      batch = { s, acquires: [], releases: 0, groupLimit: -1 };
      this.#queued.set(host, batch);
      if (this.#queued.size === 1) queueMicrotask(() => this.#flushAll());
    }
    return batch;
  }

  #flushAll(): void {
    // The line first: a ticket joins it before it asks for a slot.
    this.#line.flush();
    const queued = this.#queued;
    this.#queued = new Map();
    for (const [host, batch] of queued) this.#flush(host, batch);
  }

  /**
   * Sends what `host` asked for in this turn as one script call: its
   * releases, then its acquires, granted in order.
   */
  async #flush(host: string, batch: Batch): Promise<void> {
    const { s, acquires } = batch;
    const k = acquires.length;
    if (this.#closed) {
      s.pending -= k;
      const closed = new LimiterUnavailableError("Redis limiter is closed");
      for (const waiter of acquires) waiter.reject(closed);
      return;
    }
    if (k === 0) return this.#flushReleases(host, batch);
    const sent: Sent = { syncs: s.syncs, epoch: this.#epoch, epochKey: this.#keys.epoch(host) };
    const input = this.#acquireInput(host, batch, sent.epochKey);
    let reply: AcquireReply;
    const asking = acquires.filter((a) => a.ticket).map((a) => a.ticket);
    try {
      reply = await this.#line.asking(
        asking,
        this.#call(() => runScript(this.#client, ACQUIRE, input)),
      );
    } catch (error) {
      s.pending -= k;
      // Redis may have counted them anyway; the next sync sets the truth.
      this.#markDirty(host, s);
      for (const waiter of acquires) this.#decide(host, s, waiter, error);
      return;
    }
    s.pending -= k;
    this.#answered(host, batch, reply, sent);
  }

  /** Sends a turn's releases of `host` without acquires. */
  #flushReleases(host: string, { s, releases }: Batch): void {
    if (releases > 0 && !this.#closed) this.#sendRelease(host, s, releases);
    const fleet = this.#fleet.get(host);
    if (fleet !== undefined) this.#fleet.set(host, Math.max(0, fleet - releases));
    this.#collect(host, s);
  }

  /** What {@linkcode ACQUIRE} is sent for a turn's batch of `host`. */
  #acquireInput(host: string, batch: Batch, epochKey: string): AcquireInput {
    const { s } = batch;
    return {
      n: this.#keys.key(host, "n"),
      leases: this.#keys.leases(epochKey),
      epoch: epochKey,
      members: this.#keys.members(host),
      q: this.#keys.key(host, "q"),
      qw: this.#keys.key(host, "qw"),
      worker: this.#worker,
      lease: this.#lease,
      floor: s.counted,
      ttl: this.#ttl,
      known: this.#recovery.known(epochKey),
      fresh: this.#recovery.fresh,
      trusted: !s.dirty,
      releases: batch.releases,
      host,
      groupLimit: batch.groupLimit,
      asks: batch.acquires,
    };
  }

  /** Decides `waiter` by the failure mode, Redis having failed with `cause`. */
  #decide(host: string, s: HostState, waiter: Waiter, cause: unknown): void {
    try {
      waiter.resolve(this.#fallback(host, s, waiter.limit, cause, waiter.groupLimit));
    } catch (error) {
      waiter.reject(error);
    }
  }

  /** Takes in Redis's answer to a batch's acquires, `sent` as recorded. */
  #answered(host: string, batch: Batch, reply: AcquireReply, sent: Sent): void {
    const { s, acquires } = batch;
    const k = acquires.length;
    const grants = reply.granted;
    this.#line.note(host, reply.waiting);
    const granted = grants.filter(Boolean).length;
    // A sync sent after this call counted all of them as held (as pending).
    const syncedSince = s.syncs !== sent.syncs;
    if (sent.epoch !== this.#epoch) {
      // Sent before a lost connection and replayed after it, maybe to a
      // Redis that restarted empty: its answer may rest on partial sums.
      // Take back what it counted and decide as if Redis had not answered.
      const takeBack = syncedSince ? k : granted;
      if (takeBack > 0 && !this.#closed) this.#sendRelease(host, s, takeBack);
      const lostConnection = new RedisConnectionLostError(
        "Connection to Redis was lost while acquiring",
      );
      for (const waiter of acquires) this.#decide(host, s, waiter, lostConnection);
      return;
    }
    const lost = reply.lost;
    const healed = this.#recovery.healed(reply.healed);
    this.#recovery.noteEpoch(sent.epochKey, lost, reply.epoch, host, healed);
    s.counted += granted;
    this.#attach(host, s);
    this.#fleet.set(host, reply.total);
    if (syncedSince && granted < k && !this.#closed) this.#sendRelease(host, s, k - granted);
    const lostCounts = new RedisCountsLostError();
    let refused = false;
    acquires.forEach((waiter, i) => {
      if (grants[i] && waiter.ticket) this.#line.forget(host, waiter.ticket);
      if (grants[i]) waiter.resolve(true);
      // The sum may be partial: decide as if Redis had not answered.
      else if (lost > 0) this.#decide(host, s, waiter, lostCounts);
      else {
        refused = true;
        waiter.resolve(false);
      }
    });
    this.#collect(host, s);
    if (refused) this.#publishPressure(host);
  }

  /**
   * Tells the fleet that `host` is at its limit, so that idle connections
   * elsewhere give their slots up; at most once per host every 100 ms.
   */
  #publishPressure(host: string): void {
    const now = Date.now();
    if (now - (this.#published.get(host) ?? 0) < 100 || this.#closed) return;
    this.#published.set(host, now);
    if (this.#published.size > 10_000) this.#published.clear();
    this.#client.publish(this.#keys.pressure, host).catch(() => {});
  }

  /**
   * Subscribes to the fleet's channels: `<prefix>:pressure` (see
   * {@linkcode onPressure}) and `<prefix>:lost` (a worker saw Redis lose
   * keys: every worker re-asserts its counts at once).
   */
  #subscribe(): void {
    if (this.#subscriber || this.#closed) return;
    // On Cluster, wake-ups come on sharded channels, each from its slot's node.
    const sub = this.#cluster
      ? (this.#client as Cluster).duplicate(undefined, { shardedSubscribers: true })
      : this.#client.duplicate();
    this.#subscriber = sub;
    sub.on("error", () => {});
    guardStreams(sub);
    const pressure = this.#keys.pressure;
    const lost = this.#keys.lost;
    sub.on("message", (channel: string, message: string) => {
      if (channel === pressure) {
        if (this.#keeping.has(message)) this.#giveBackKept(message);
        this.onPressure?.(message);
      } else if (channel === lost) this.#recovery.notice(message);
      else if (this.#line.waitsFor(message)) this.onWake?.(message);
    });
    sub.on("smessage", (_channel: string, message: string) => {
      if (this.#line.waitsFor(message)) this.onWake?.(message);
    });
    sub.subscribe(pressure, lost).catch(() => {});
    for (const host of this.#line.waited()) this.#watchLine(host, true);
  }

  /**
   * Called with a host when a slot of it was given back anywhere in the
   * fleet (or a ticket left its line) while this worker waits for it: the
   * first in line may now be granted. Messages can be lost; owners also ask
   * again on a timer.
   */
  onWake?: (host: string) => void;

  /**
   * Puts a request waiting for a slot of `host` at the end of the fleet's
   * line and returns its ticket; {@linkcode acquire} with the ticket is
   * granted only when no earlier ticket anywhere in the fleet still waits
   * for the slots left. The ticket lives with this worker's lease: a crashed
   * worker's tickets vanish within one lease. Give it back with
   * {@linkcode dequeue} when the request stops waiting.
   */
  enqueue(host: string): string {
    const ticket = this.#line.ticket();
    if (this.#closed) return ticket;
    if (this.#keeping.has(host)) this.#giveBackKept(host);
    this.#line.add(host, ticket);
    this.#startHeartbeat();
    this.#subscribe();
    return ticket;
  }

  /** Takes `ticket` out of the fleet's line of `host` (no-op once granted or gone). */
  dequeue(host: string, ticket: string): void {
    if (!this.#closed) this.#line.remove(host, ticket);
  }

  /**
   * The requests waiting for `host` in the fleet's line, as Redis last
   * answered (an acquire, a change of the line or a heartbeat); 0 when none
   * is known to wait.
   */
  waiting(host: string): number {
    return this.#line.waiting(host);
  }

  /** Listens for (or stops listening for) the wake-ups of the line of `host`. */
  #watchLine(host: string, on: boolean): void {
    const sub = this.#subscriber;
    if (!sub) return;
    const channel = this.#keys.key(host, "q");
    const cluster = sub as unknown as {
      ssubscribe(c: string): Promise<unknown>;
      sunsubscribe(c: string): Promise<unknown>;
    };
    const call = this.#cluster
      ? (on ? cluster.ssubscribe(channel) : cluster.sunsubscribe(channel))
      : (on ? sub.subscribe(channel) : sub.unsubscribe(channel));
    call.catch(() => {});
  }

  /** Gives back one slot of `host`; a host with no slot held is left alone. */
  release(host: string): void {
    const s = this.#hosts.get(host);
    if (!s) return;
    if (s.uncounted > 0) {
      s.uncounted--;
      this.#collect(host, s);
      return;
    }
    if (s.counted - s.kept.length <= 0) return;
    if (this.#closed) {
      s.counted--;
      return;
    }
    if (!this.#failFast() && this.#mayKeep(host, s, 1)) {
      s.kept.push(performance.now());
      this.#keeping.add(host);
      this.#keepTimer ??= setTimeout(() => this.#sweepKept(), KEEP_MS);
      return;
    }
    s.counted--;
    if (this.#failFast()) this.#markDirty(host, s);
    else this.#batch(host, s).releases++;
    this.#collect(host, s);
  }

  /**
   * Whether a slot of `host` may stay with this worker: no group, no request
   * of this worker in its line, and the fleet (as last answered, kept slots
   * included) holds at most its limit less `room`.
   */
  #mayKeep(host: string, s: HostState, room: number): boolean {
    if (this.#keys.groupOf.has(host) || this.#line.waitsFor(host)) return false;
    return s.limit <= 0 || (this.#fleet.get(host) ?? Infinity) <= s.limit - room;
  }

  /** Gives back the slots kept {@linkcode KEEP_MS} or longer; runs while any are kept. */
  #sweepKept(): void {
    this.#keepTimer = null;
    const due = performance.now() - KEEP_MS;
    let next = Infinity;
    for (const host of this.#keeping) {
      const kept = this.#hosts.get(host)?.kept ?? [];
      let n = 0;
      while (n < kept.length && kept[n] <= due) n++;
      if (n < kept.length) next = Math.min(next, kept[n]);
      this.#giveBackKept(host, n);
    }
    if (next < Infinity) this.#keepTimer = setTimeout(() => this.#sweepKept(), next - due);
  }

  /** Gives back the `n` oldest (default: all) kept slots of `host`. */
  #giveBackKept(host: string, n = Infinity): void {
    const s = this.#hosts.get(host);
    const back = s?.kept.splice(0, n).length ?? 0;
    if (!s || s.kept.length === 0) this.#keeping.delete(host);
    if (!s || back === 0) return;
    s.counted -= back;
    if (this.#closed) return;
    if (this.#failFast()) this.#markDirty(host, s);
    else this.#batch(host, s).releases += back;
    this.#collect(host, s);
  }

  /**
   * The slots held for `host` by every live worker. When Redis cannot answer,
   * failure mode `"closed"` rejects with {@linkcode LimiterUnavailableError};
   * the others answer with this process's own count.
   */
  async count(host: string): Promise<number> {
    if (this.#closed) {
      throw new LimiterUnavailableError("Redis limiter is closed");
    }
    try {
      if (this.#failFast()) throw new RedisConnectionLostError("Redis is unreachable");
      if (this.#keeping.has(host)) this.#giveBackKept(host);
      // This turn's releases are sent before the count.
      if (this.#queued.has(host)) await Promise.resolve();
      const [total] = (await this.#count([host])).map(Number);
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
    if (this.#heartbeat !== null) clearInterval(this.#heartbeat);
    this.#heartbeat = null;
    if (this.#keepTimer !== null) clearTimeout(this.#keepTimer);
    this.#keepTimer = null;
    this.#keeping.clear();
    this.#subscriber?.disconnect();
    this.#subscriber = null;
    const client = this.#client;
    client.off("ready", this.#onReady);
    client.off("close", this.#onClose);
    const hosts = [...new Set([...this.#touched, ...this.#hosts.keys()])];
    const lines = this.#line.close();
    this.#touched.clear();
    this.#hosts.clear();
    this.#fleet.clear();
    if (client.status === "ready") {
      const leave = (host: string): SyncHost => ({
        host,
        n: this.#keys.key(host, "n"),
        count: 0,
        floor: 0,
        trusted: false,
      });
      await Promise.allSettled([
        ...groupBySlot(hosts, (host) => this.#keys.epoch(host)).map(([e, batch]) =>
          this.#bounded(runScript(client, SYNC, this.#syncInput(e, "leave", batch.map(leave))))
        ),
        ...lines.map((leave) => this.#bounded(leave())),
        ...this.#registry.unregister().map((call) => this.#bounded(call)),
      ]);
    }
    if (!this.#own) return;
    if (client.status !== "wait" && client.status !== "end") {
      await this.#bounded(client.quit()).catch(() => {});
    }
    client.disconnect();
    client.off("error", this.#onError);
  }

  /** What {@linkcode SYNC} is sent for `hosts` in the slot of epoch key `e`. */
  #syncInput(e: string, held: SyncInput["held"], hosts: SyncHost[]): SyncInput {
    return {
      epoch: e,
      leases: this.#keys.leases(e),
      worker: this.#worker,
      lease: this.#lease,
      ttl: this.#ttl,
      known: this.#recovery.known(e),
      fresh: this.#recovery.fresh,
      held,
      hosts,
    };
  }

  #state(host: string): HostState {
    let s = this.#hosts.get(host);
    if (!s) {
      s = {
        counted: 0,
        uncounted: 0,
        kept: [],
        limit: 0,
        pending: 0,
        syncs: 0,
        dirty: false,
        dirtyGen: 0,
        renewedAt: Date.now(),
      };
      this.#hosts.set(host, s);
    }
    return s;
  }

  /** Puts `s` back in the table if it was collected meanwhile. */
  #attach(host: string, s: HostState): HostState {
    const current = this.#hosts.get(host);
    if (current) return current;
    if (!this.#closed) this.#hosts.set(host, s);
    return s;
  }

  /**
   * Forgets a host that holds nothing and that Redis agrees on, with its
   * fleet count when nobody else is known to hold it: a worker's state grows
   * with the hosts it holds, not with every host it ever asked for.
   */
  #collect(host: string, s: HostState): void {
    if (
      s.counted === 0 && s.uncounted === 0 && s.pending === 0 && !s.dirty &&
      this.#hosts.get(host) === s && !this.#queued.has(host)
    ) {
      this.#hosts.delete(host);
      this.#touched.delete(host);
      if (this.#fleet.get(host) === 0) this.#fleet.delete(host);
      this.#recovery.forgetHost(host);
    }
  }

  /**
   * How many hosts this limiter keeps any state of: held, given back but not
   * yet synced, waiting in a line, in a group, or known to be held elsewhere
   * in the fleet. Returns to 0 once nothing is held or waited for anywhere.
   */
  trackedHosts(): number {
    const hosts = new Set([
      ...this.#hosts.keys(),
      ...this.#touched,
      ...this.#fleet.keys(),
      ...this.#line.hosts(),
      ...this.#keys.groupOf.keys(),
      ...this.#recovery.hosts(),
      ...this.#published.keys(),
    ]);
    return hosts.size;
  }

  #markDirty(host: string, s: HostState): void {
    const target = this.#attach(host, s);
    target.dirty = true;
    target.dirtyGen++;
  }

  /**
   * Redis is known to be down and the client is not connected, or it has
   * just reconnected and this worker has not re-asserted its counts yet.
   */
  #failFast(): boolean {
    return this.#awaitingReady ||
      (!this.#available && this.#client.status !== "ready");
  }

  #fallback(
    host: string,
    s: HostState,
    limit: number,
    cause: unknown,
    groupLimit = -1,
  ): boolean {
    switch (this.#mode) {
      case "open":
        this.#attach(host, s).uncounted++;
        return true;
      case "local": {
        const t = this.#attach(host, s);
        if (
          (limit > 0 && t.counted + t.uncounted + t.pending >= limit) ||
          (groupLimit > 0 && this.#localGroupCount(this.#keys.groupOf.get(host)) >= groupLimit)
        ) {
          this.#collect(host, t);
          return false;
        }
        t.counted++;
        this.#markDirty(host, t);
        return true;
      }
      default:
        this.#collect(host, s);
        throw new LimiterUnavailableError(
          "Redis is unavailable, so the connection limit cannot be checked",
          cause === null ? undefined : { cause },
        );
    }
  }

  /** The slots this process holds for the members of `group`. */
  #localGroupCount(group: string | undefined): number {
    let n = 0;
    for (const [host, s] of this.#hosts) {
      if (this.#keys.groupOf.get(host) === group) n += s.counted + s.uncounted + s.pending;
    }
    return n;
  }

  /** Gives back `count` slots of this worker in Redis. */
  #sendRelease(host: string, s: HostState, count = 1): void {
    this.#call(() =>
      runScript(this.#client, RELEASE, {
        n: this.#keys.key(host, "n"),
        epoch: this.#keys.epoch(host),
        q: this.#keys.key(host, "q"),
        worker: this.#worker,
        count,
        host,
      })
    ).then((reply) => this.#recovery.healed(reply.healed), () => this.#markDirty(host, s));
  }

  /**
   * What a heartbeat sends: for every slot in which this worker holds a host,
   * its lease there, with the hosts that need a sync (changed behind Redis's
   * back, holding nothing, not synced for `TTL_LEASES - 2` leases, or in a
   * slot whose lease may have passed) and the others synced longest ago, as
   * many as it takes to sync each about every {@linkcode RENEW_LEASES}
   * leases and at least {@linkcode CHECK_HOSTS}. Batches of at most
   * `BATCH_HOSTS` (sync_pipeline.ts) hosts.
   */
  #dueBatches(): [string, string[]][] {
    const now = Date.now();
    const overdue = now - this.#lease * (TTL_LEASES - 2);
    const slots = new Map<string, string[]>();
    let rest: [string, HostState, string][] = [];
    for (const [host, s] of this.#hosts) {
      const e = this.#keys.epoch(host);
      let due = slots.get(e);
      if (!due) slots.set(e, due = []);
      if (
        s.dirty || this.#syncCount(host, s) <= 0 || s.renewedAt <= overdue ||
        !this.#leaseHeld(e, now)
      ) due.push(host);
      else rest.push([host, s, e]);
    }
    const share = Math.max(
      CHECK_HOSTS,
      Math.ceil((this.#hosts.size * this.#lease) / 3 / this.#renewEvery),
    );
    if (rest.length > share) {
      rest = rest.sort((a, b) => a[1].renewedAt - b[1].renewedAt).slice(0, share);
    }
    for (const [host, , e] of rest) slots.get(e)!.push(host);
    return splitBatches(slots);
  }

  /**
   * Renews this worker's lease of the slot of epoch key `e`, where no host
   * needs a sync: a `ZADD` with a deadline from Redis's time and a
   * `PEXPIRE`, no script. A lease found missing while it cannot have passed
   * means the lease set was lost.
   */
  #prepareLease(e: string): PreparedSync {
    const key = this.#keys.leases(e);
    const now = Date.now();
    const held = this.#leaseHeld(e, now);
    return {
      needsTime: true,
      queue: (pipeline, redisNow) => {
        pipeline.zadd(key, redisNow + this.#lease, this.#worker);
        pipeline.pexpire(key, this.#ttl);
        return 2;
      },
      answered: ([added]) => {
        this.#leasedAt.set(e, now);
        if (Number(added) === 1 && held) this.#recovery.leaseLost(false);
      },
      failed: () => {},
    };
  }

  /**
   * The script call that renews this worker's lease of the slot of epoch key
   * `e` and syncs `hosts` (keys in that slot), and what to do with its answer.
   */
  #prepareSync(e: string, hosts: [string, HostState][]): PreparedSync {
    const synced: SyncHost[] = [];
    const dirtyAt: number[] = [];
    const now = Date.now();
    for (const [host, s] of hosts) {
      const queued = this.#queued.get(host);
      synced.push({
        host,
        n: this.#keys.key(host, "n"),
        count: this.#syncCount(host, s),
        floor: s.counted + (queued?.releases ?? 0),
        trusted: !s.dirty,
      });
      dirtyAt.push(s.dirtyGen);
      s.syncs++;
      this.#touched.add(host);
    }
    const input = this.#syncInput(e, this.#leaseHeld(e, now), synced);
    return {
      needsTime: false,
      queue: (pipeline) => {
        queueScript(pipeline, SYNC, input);
        return 1;
      },
      answered: ([answer]) => {
        const reply = SYNC.decode(answer, input);
        this.#leasedAt.set(e, now);
        const healed = this.#recovery.healed(reply.healed);
        this.#recovery.noteEpoch(e, reply.lost, reply.epoch, "", healed);
        if (reply.lost === 1) this.#recovery.leaseLost(healed.has(this.#keys.leases(e)));
        hosts.forEach(([host, s], i) => {
          if (s.dirtyGen === dirtyAt[i]) s.dirty = false;
          s.renewedAt = now;
          this.#fleet.set(host, reply.hosts[i].total);
          if (reply.hosts[i].lost) this.#recovery.hostLost(host, healed);
          this.#collect(host, s);
        });
      },
      failed: () => {
        for (const [host, s] of hosts) this.#markDirty(host, s);
      },
    };
  }

  /** The count of `host` a sync sends: what is queued reaches Redis after it. */
  #syncCount(host: string, s: HostState): number {
    const queued = this.#queued.get(host);
    return s.counted + s.pending - (queued?.acquires.length ?? 0) + (queued?.releases ?? 0);
  }

  /** Whether this worker's lease of the slot of epoch key `e` cannot have passed. */
  #leaseHeld(e: string, now: number): boolean {
    return now - (this.#leasedAt.get(e) ?? -Infinity) < this.#lease / 2;
  }

  /** The fleet's open connections to each of `hosts`, in batches of one slot each. */
  async #count(hosts: string[]): Promise<number[]> {
    const batches = groupBySlot(hosts, (host) => this.#keys.epoch(host));
    const totals = new Map<string, number>();
    await Promise.all(batches.map(async ([, batch]) => {
      const reply = await this.#call(() =>
        runScript(this.#client, COUNT, {
          lease: this.#lease,
          hosts: batch.map((host) => ({
            n: this.#keys.key(host, "n"),
            leases: this.#keys.leases(this.#keys.epoch(host)),
          })),
        })
      );
      batch.forEach((host, i) => totals.set(host, reply.totals[i]));
      this.#recovery.healed(reply.healed);
    }));
    return hosts.map((host) => totals.get(host) ?? 0);
  }

  /**
   * Syncs every host this worker holds or may disagree with Redis on,
   * refreshes the fleet counts of the other hosts it knows of (forgetting
   * those at 0) and renews this worker's entry in the registry: one script
   * call per batch of hosts, not one per host.
   */
  #beat(): void {
    if (this.#closed || this.#failFast()) return;
    const stale = Date.now() - 100;
    for (const [host, at] of this.#published) if (at < stale) this.#published.delete(host);
    this.#syncs.send(
      this.#dueBatches(),
      (e, hosts) =>
        hosts.length === 0
          ? this.#prepareLease(e)
          : this.#prepareSync(e, hosts.map((host) => [host, this.#hosts.get(host)!])),
    );
    this.#line.renew();
    for (const host of this.#keys.groupOf.keys()) {
      if (
        !this.#hosts.has(host) && !this.#fleet.has(host) && !this.#queued.has(host) &&
        !this.#line.waitsFor(host)
      ) {
        this.#keys.groupOf.delete(host);
      }
    }
    const others = [...this.#fleet.keys()].filter((host) => !this.#hosts.has(host));
    if (others.length > 0) {
      this.#count(others).then((totals) => {
        others.forEach((host, i) => {
          if (totals[i] > 0 || this.#hosts.has(host)) this.#fleet.set(host, totals[i]);
          else this.#fleet.delete(host);
        });
      }, () => {});
    }
    this.#register();
  }

  /** Renews this worker's entry in the worker registry, with its open connections. */
  #register(): void {
    if (this.#closed || this.#failFast()) return;
    let connections = 0;
    for (const s of this.#hosts.values()) connections += s.counted - s.kept.length + s.uncounted;
    this.#registry.register(connections);
  }

  /**
   * Sets what this worker tells the fleet about itself (host name, pid,
   * version, admin URL) and registers it at once; the heartbeat renews the
   * entry and {@linkcode close} removes it.
   */
  setWorkerInfo(info: Partial<Omit<WorkerInfo, "id" | "connections">>): void {
    this.#registry.setInfo(info);
    if (this.#closed) return;
    this.#subscribe();
    if (this.#heartbeat === null) this.#startHeartbeat();
    else this.#register();
  }

  /**
   * Every live worker of the fleet (its lease not passed), read from the
   * worker registry, with its open connections as of its last heartbeat.
   * Rejects when Redis cannot answer.
   */
  async workers(): Promise<WorkerInfo[]> {
    if (this.#closed) throw new LimiterUnavailableError("Redis limiter is closed");
    return await this.#registry.workers();
  }

  /**
   * The open connections of the whole fleet (the sum over live workers) for
   * every host this worker knows of, as of the last answer or heartbeat.
   * Costs no Redis call: the heartbeat refreshes it.
   */
  fleetCounts(): ReadonlyMap<string, number> {
    return this.#fleet;
  }

  #startHeartbeat(): void {
    if (this.#heartbeat !== null || this.#closed) return;
    const timer = setInterval(
      () => this.#beat(),
      Math.max(1, Math.floor(this.#lease / 3)),
    );
    Deno.unrefTimer(timer);
    this.#heartbeat = timer;
    this.#register();
  }

  #handleReady(): void {
    if (this.#closed) return;
    const reconnect = this.#everReady;
    this.#everReady = true;
    this.#awaitingReady = false;
    this.#lastError = null;
    if (!reconnect) {
      const masters = this.#cluster ? (this.#client as Cluster).nodes("master") : [this.#client];
      warnIfEvicting(masters, (call) => this.#bounded(call), this.#logger);
    }
    if (!(this.#client as { isCluster?: boolean }).isCluster) {
      this.#checkRestart();
    }
    // #up() syncs when it ends an outage; a quiet reconnect syncs here.
    if (!this.#up() && reconnect) this.#beat();
  }

  /**
   * After a reconnect, finds out whether Redis restarted (or failed over):
   * its run id changed. A Redis that restarted empty knows nothing of the
   * slots the fleet holds until every worker has synced, so for a recovery
   * window (a heartbeat, at most 1 s, plus 1 s for the others to reconnect)
   * new slots follow the failure mode instead of being granted against
   * partial sums. New slots wait for the answer (one round trip).
   */
  async #checkRestart(): Promise<void> {
    const before = this.#recovery.checking();
    let runId: string | null = null;
    try {
      const info = String(await this.#bounded((this.#client as Redis).info("server")));
      runId = /run_id:(\w+)/.exec(info)?.[1] ?? null;
    } catch {
      // Unknown: after a reconnect, assume the worst.
    }
    if (this.#closed) return;
    // Leases known from before a restart would report the same loss again.
    if (this.#recovery.restarted(before, runId)) this.#leasedAt.clear();
  }

  /** Records that Redis answered; returns whether that ended an outage. */
  #up(): boolean {
    if (this.#available) return false;
    this.#available = true;
    this.#logger.info(
      "Redis is reachable again; re-asserting this worker's counts",
    );
    this.#beat();
    return true;
  }

  #down(error: unknown): void {
    if (!this.#available || this.#closed) return;
    this.#available = false;
    if (isAuthError(error)) {
      this.#logger.warn(
        "Redis refused the credentials ({error}); check the Redis user name and password. Failure mode {mode} applies until Redis accepts them",
        { error: describe(error), mode: this.#mode },
      );
      return;
    }
    this.#logger.warn(
      "Redis is unreachable ({error}); failure mode {mode} applies until it is back",
      { error: describe(error), mode: this.#mode },
    );
  }

  /**
   * Settles as `call` does within the timeout, else rejects with
   * {@linkcode RedisTimeoutError}; an error Redis answered becomes a
   * {@linkcode RedisReplyError}.
   */
  #bounded<T>(call: Promise<T>): Promise<T> {
    const ms = this.#timeout;
    const marked = call.catch((error) => Promise.reject(toRedisError(error)));
    return withTimeout(marked, ms, () => new RedisTimeoutError(ms));
  }

  /** Runs one Redis call within the timeout and tracks Redis's state. */
  async #call<T>(op: () => Promise<T>): Promise<T> {
    const epoch = this.#epoch;
    const started = performance.now();
    let result: T;
    try {
      result = await this.#bounded(op());
      this.onCall?.(performance.now() - started);
    } catch (error) {
      this.onCall?.(performance.now() - started);
      // A call cut off by a lost connection tells nothing new.
      if (!(error instanceof RedisReplyError) && epoch === this.#epoch) {
        this.#down(error);
      }
      throw error;
    }
    this.#up();
    return result;
  }
}

function checkMs(what: string, ms: number): number {
  if (!Number.isFinite(ms) || ms <= 0) {
    throw new RangeError(
      `${what} must be a positive number of milliseconds, got ${ms}`,
    );
  }
  return Math.ceil(ms);
}
