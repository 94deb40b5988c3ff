/**
 * The distributed limiter: every proxy of a fleet counts its open upstream
 * connections per host in Redis, and a slot is granted only while the sum over
 * the live workers is under the host's limit.
 *
 * @module
 */

import { Cluster, Redis } from "ioredis";
import type { ClusterOptions, RedisOptions } from "ioredis";
import type { FailureMode, RedisConfig, RedisNode } from "./redis_config.ts";
export type { FailureMode } from "./redis_config.ts";
import { getLogger, type Logger } from "@logtape/logtape";
import { type AcquireOptions, type Limiter, LimiterUnavailableError } from "./limiter.ts";
import {
  ACQUIRE_LUA,
  COUNT_LUA,
  forCluster,
  LINE_LUA,
  REGISTER_LUA,
  RELEASE_LUA,
  SYNC_LUA,
} from "./redis_scripts.ts";

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

/** What a worker tells the fleet about itself in the worker registry. */
export interface WorkerInfo {
  /** The worker's id (its field in the host hashes). */
  id: string;
  /** Host name of its machine, or `""` when unknown. */
  hostname: string;
  /** Process id, or 0 when unknown. */
  pid: number;
  /** dprl version, or `""` when unknown. */
  version: string;
  /** URL of its admin server, or `""` when it has none. */
  adminUrl: string;
  /** URL of its proxy port, or `""` when unknown. */
  proxyUrl: string;
  /** When it started (ISO 8601). */
  started: string;
  /** Its open upstream connections, as of its last heartbeat. */
  connections: number;
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

/** An ioredis client with dprl's scripts defined on it. */
interface ScriptedClient {
  status: string;
  dprlAcquire(
    n: string,
    leases: string,
    e: string,
    members: string,
    q: string,
    qw: string,
    worker: string,
    lease: number,
    floor: number,
    ttl: number,
    known: string,
    fresh: string,
    trusted: number,
    releases: number,
    host: string,
    groupLimit: number,
    ...limits: (number | string)[]
  ): Promise<(number | string)[]>;
  dprlRelease(
    n: string,
    e: string,
    q: string,
    worker: string,
    count: number,
    host: string,
  ): Promise<(number | string)[]>;
  /** `numKeys`, the epoch key, the slot's lease set, then n of each host; then the arguments. */
  dprlSync(numKeys: number, ...keysAndArgs: (string | number)[]): Promise<(string | number)[]>;
  /** `numKeys`, n and the lease set of each host, then the lease. */
  dprlCount(numKeys: number, ...keysAndArgs: (string | number)[]): Promise<(number | string)[]>;
  dprlRegister(workers: string, worker: string, lease: number, op: string): Promise<string[]>;
  /** q and qw of one host, then worker, lease, ttl, op, host, adds, tickets. */
  dprlLine(q: string, qw: string, ...args: (string | number)[]): Promise<(number | string)[]>;
}

/** A pipeline of an ioredis client with dprl's heartbeat script defined on it. */
interface ScriptedPipeline {
  /** Queues a sync; see {@linkcode ScriptedClient.dprlSync}. */
  dprlSync(numKeys: number, ...keysAndArgs: (string | number)[]): void;
  zadd(key: string, score: number, member: string): void;
  pexpire(key: string, ms: number): void;
  exec(): Promise<[Error | null, unknown][] | null>;
}

/** What a heartbeat sends for one slot, ready to be queued on a pipeline. */
interface PreparedSync {
  /** It needs Redis's time on its node (see {@linkcode PreparedSync.queue}). */
  needsTime: boolean;
  /** Queues its commands, given Redis's time in ms; returns how many it queued. */
  queue: (pipeline: ScriptedPipeline, redisNow: number) => number;
  /** Takes in the answers of its commands, in order. */
  answered: (replies: unknown[]) => void;
  /** Redis did not answer: its hosts are synced again at the next heartbeat. */
  failed: () => void;
}

/** What the fleet's line of one host is to be told in this event-loop turn. */
interface LineOps {
  /** Tickets joining the line, in order. */
  adds: string[];
  /** Tickets leaving it. */
  removes: string[];
  /** This worker has no ticket of the host left: its waiting lease ends. */
  leave: boolean;
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

/** Most hosts one heartbeat script call syncs. */
const BATCH_HOSTS = 256;

/** Most hosts the script calls of one heartbeat pipeline (one round trip) sync. */
const PIPELINE_HOSTS = 2_048;

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
export class RedisLimiter implements Limiter {
  #client: Redis | Cluster;
  #scripts: ScriptedClient;
  #own: boolean;
  #prefix: string;
  #lease: number;
  #ttl: number;
  /** A held host is synced in full about this often (ms); see {@linkcode RENEW_LEASES}. */
  #renewEvery: number;
  #timeout: number;
  #mode: FailureMode;
  #logger: Logger;
  #worker: string;
  #hosts = new Map<string, HostState>();
  /** This worker's tickets in the fleet's lines, by host, in order. */
  #tickets = new Map<string, Set<string>>();
  /** This turn's changes of the fleet's lines, by host, until the flush sends them. */
  #lineOps = new Map<string, LineOps>();
  /** Tickets whose acquire is on its way to Redis. */
  #asking = new Set<string>();
  /** Tickets issued so far (their ids are this number, padded, so they sort). */
  #ticketSeq = 0;
  /** The group of each host that is a member of one, taken when the host held nothing. */
  #groupOf = new Map<string, string>();
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
  #runId: string | null = null;
  /** Until then (ms since epoch) new slots follow the failure mode. */
  #recoverUntil = 0;
  #heartbeat: ReturnType<typeof setInterval> | null = null;
  /** Receives the fleet's pressure messages (see {@linkcode onPressure}). */
  #subscriber: Redis | Cluster | null = null;
  /** When pressure on a host was last published, by host. */
  #published = new Map<string, number>();
  #closed = false;
  #closing: Promise<void> | null = null;
  #cluster: boolean;
  /** The epoch token this worker knows, by epoch key. */
  #known = new Map<string, string>();
  /** The token a script sets when it finds the epoch key missing. */
  #fresh = crypto.randomUUID();
  /** When lost keys last made this worker re-assert its counts (ms since epoch). */
  #lossBeatAt = 0;
  /** Until when (ms since epoch) a loss is not logged again. */
  #lossLoggedUntil = 0;
  /** Until when (ms since epoch) new slots of a host whose keys were lost follow the failure mode. */
  #hostRecoverUntil = new Map<string, number>();
  /** The last error the client reported, told when the connection closes. */
  #lastError: unknown = null;
  /** This worker's entry in the worker registry. */
  #info: Omit<WorkerInfo, "id" | "connections">;
  /** Fleet-wide open connections by host, as of the last answer or heartbeat. */
  #fleet = new Map<string, number>();
  /** Lengths of the fleet's lines, by host, as last answered (hosts with none left out). */
  #lines = new Map<string, number>();
  /** When (ms since epoch) the last answered sync renewing this worker's lease of a slot was sent, by epoch key. */
  #leasedAt = new Map<string, number>();
  #onReady = (): void => this.#handleReady();
  #onClose = (): void => {
    if (this.#closed) return;
    this.#awaitingReady = true;
    this.#epoch++;
    const cause = this.#lastError ?? new Error("Connection to Redis closed");
    this.#lastError = null;
    this.#down(cause);
  };
  #onError = (error: unknown): void => {
    this.#lastError = error;
    this.#logger.debug("Redis client error: {error}", { error });
  };

  /** Creates the limiter; the connection is opened on first use. */
  constructor(options: RedisLimiterOptions) {
    this.#prefix = options.prefix ?? "dprl";
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
    this.#info = {
      hostname: hostname(),
      pid: Deno.pid,
      version: "",
      adminUrl: "",
      proxyUrl: "",
      started: new Date().toISOString(),
    };
    const wakes = (lua: string): string => this.#cluster ? forCluster(lua) : lua;
    client.defineCommand("dprlAcquire", { numberOfKeys: 6, lua: wakes(ACQUIRE_LUA) });
    client.defineCommand("dprlRelease", { numberOfKeys: 3, lua: wakes(RELEASE_LUA) });
    client.defineCommand("dprlLine", { numberOfKeys: 2, lua: wakes(LINE_LUA) });
    client.defineCommand("dprlSync", { lua: SYNC_LUA });
    client.defineCommand("dprlCount", { lua: COUNT_LUA });
    client.defineCommand("dprlRegister", { numberOfKeys: 1, lua: REGISTER_LUA });
    this.#scripts = client as unknown as ScriptedClient;
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
    const client = this.#client;
    const list = client instanceof Cluster ? client.nodes("all") : [client];
    return list.flatMap((node) => {
      const stream = (node as { stream?: { remoteAddress?: string; remotePort?: number } }).stream;
      const host = stream?.remoteAddress ?? node.options.host;
      const port = stream?.remotePort ?? node.options.port;
      return host && port ? [{ host, port }] : [];
    });
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
      if (group) this.#groupOf.set(host, group.name);
      else this.#groupOf.delete(host);
    }
    const groupName = this.#groupOf.get(host);
    const groupLimit = groupName === undefined
      ? -1
      : group?.name === groupName
      ? Math.max(0, group.limit)
      : 0;
    const s = this.#state(host);
    this.#startHeartbeat();
    this.#subscribe();
    if (this.#failFast()) return this.#fallback(host, s, limit, null, groupLimit);
    if (this.#recovering(host)) {
      return this.#fallback(
        host,
        s,
        limit,
        new Error("Redis lost its counts and the fleet is re-asserting them"),
        groupLimit,
      );
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
      const waiting = ticket !== undefined && this.#tickets.get(host)?.has(ticket);
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
    const lines = this.#lineOps;
    this.#lineOps = new Map();
    for (const [host, ops] of lines) this.#sendLine(host, ops, ops.leave ? "leave" : "");
    const queued = this.#queued;
    this.#queued = new Map();
    for (const [host, batch] of queued) this.#flush(host, batch);
  }

  /**
   * Sends what `host` asked for in this turn as one script call: its
   * releases, then its acquires, granted in order.
   */
  async #flush(host: string, batch: Batch): Promise<void> {
    const { s, acquires, releases } = batch;
    const k = acquires.length;
    if (this.#closed) {
      s.pending -= k;
      const closed = new LimiterUnavailableError("Redis limiter is closed");
      for (const waiter of acquires) waiter.reject(closed);
      return;
    }
    if (k === 0) {
      if (releases > 0 && !this.#closed) this.#sendRelease(host, s, releases);
      const fleet = this.#fleet.get(host);
      if (fleet !== undefined) this.#fleet.set(host, Math.max(0, fleet - releases));
      this.#collect(host, s);
      return;
    }
    const floor = s.counted;
    const syncsAtSend = s.syncs;
    const epoch = this.#epoch;
    const epochKey = this.#epochKey(host);
    const decide = (waiter: Waiter, cause: unknown): void => {
      try {
        waiter.resolve(this.#fallback(host, s, waiter.limit, cause, waiter.groupLimit));
      } catch (error) {
        waiter.reject(error);
      }
    };
    let reply: (number | string)[];
    const asking = acquires.filter((a) => a.ticket).map((a) => a.ticket);
    for (const t of asking) this.#asking.add(t);
    try {
      reply = await this.#call(() =>
        this.#scripts.dprlAcquire(
          this.#key(host, "n"),
          this.#leaseKey(epochKey),
          epochKey,
          this.#membersKey(host),
          this.#key(host, "q"),
          this.#key(host, "qw"),
          this.#worker,
          this.#lease,
          floor,
          this.#ttl,
          this.#known.get(epochKey) ?? "",
          this.#fresh,
          s.dirty ? 0 : 1,
          releases,
          host,
          batch.groupLimit,
          ...acquires.map((a) => a.ticket ? `${a.limit} ${a.ticket}` : a.limit),
        )
      );
    } catch (error) {
      s.pending -= k;
      // Redis may have counted them anyway; the next sync sets the truth.
      this.#markDirty(host, s);
      for (const waiter of acquires) decide(waiter, error);
      return;
    } finally {
      for (const t of asking) this.#asking.delete(t);
    }
    s.pending -= k;
    const grants = acquires.map((_, i) => Number(reply[3 + i]) === 1);
    this.#noteLine(host, Number(reply[3 + k]));
    const granted = grants.filter(Boolean).length;
    // A sync sent after this call counted all of them as held (as pending).
    const syncedSince = s.syncs !== syncsAtSend;
    if (epoch !== this.#epoch) {
      // Sent before a lost connection and replayed after it, maybe to a
      // Redis that restarted empty: its answer may rest on partial sums.
      // Take back what it counted and decide as if Redis had not answered.
      const takeBack = syncedSince ? k : granted;
      if (takeBack > 0 && !this.#closed) this.#sendRelease(host, s, takeBack);
      const lostConnection = new Error("Connection to Redis was lost while acquiring");
      for (const waiter of acquires) decide(waiter, lostConnection);
      return;
    }
    const lost = Number(reply[1]);
    const healed = this.#healed(reply.slice(4 + k));
    this.#noteEpoch(epochKey, lost, String(reply[2]), host, healed);
    s.counted += granted;
    this.#attach(host, s);
    this.#fleet.set(host, Number(reply[0]));
    if (syncedSince && granted < k && !this.#closed) this.#sendRelease(host, s, k - granted);
    const lostCounts = new Error("Redis lost its counts and the fleet is re-asserting them");
    let refused = false;
    acquires.forEach((waiter, i) => {
      if (grants[i] && waiter.ticket) this.#forgetTicket(host, waiter.ticket);
      if (grants[i]) waiter.resolve(true);
      // The sum may be partial: decide as if Redis had not answered.
      else if (lost > 0) decide(waiter, lostCounts);
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
    this.#client.publish(`${this.#prefix}:pressure`, host).catch(() => {});
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
    const pressure = `${this.#prefix}:pressure`;
    const lost = `${this.#prefix}:lost`;
    sub.on("message", (channel: string, message: string) => {
      if (channel === pressure) {
        if (this.#keeping.has(message)) this.#giveBackKept(message);
        this.onPressure?.(message);
      } else if (channel === lost) this.#lossNotice(message);
      else if (this.#tickets.has(message)) this.onWake?.(message);
    });
    sub.on("smessage", (_channel: string, message: string) => {
      if (this.#tickets.has(message)) this.onWake?.(message);
    });
    sub.subscribe(pressure, lost).catch(() => {});
    for (const host of this.#tickets.keys()) this.#watchLine(host, true);
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
    const ticket = `${this.#worker}|${(this.#ticketSeq++).toString(36).padStart(11, "0")}`;
    if (this.#closed) return ticket;
    if (this.#keeping.has(host)) this.#giveBackKept(host);
    let tickets = this.#tickets.get(host);
    if (!tickets) {
      this.#tickets.set(host, tickets = new Set());
      this.#watchLine(host, true);
    }
    tickets.add(ticket);
    this.#startHeartbeat();
    this.#subscribe();
    const ops = this.#lineOp(host);
    ops.adds.push(ticket);
    ops.leave = false;
    return ticket;
  }

  /** Takes `ticket` out of the fleet's line of `host` (no-op once granted or gone). */
  dequeue(host: string, ticket: string): void {
    if (!this.#tickets.get(host)?.has(ticket) || this.#closed) return;
    this.#forgetTicket(host, ticket);
    const ops = this.#lineOp(host);
    const i = ops.adds.indexOf(ticket);
    if (i >= 0) ops.adds.splice(i, 1);
    else ops.removes.push(ticket);
  }

  /** Forgets a ticket that is no longer in line; the last one ends the wait. */
  #forgetTicket(host: string, ticket: string): void {
    const tickets = this.#tickets.get(host);
    if (!tickets?.delete(ticket) || tickets.size > 0) return;
    this.#tickets.delete(host);
    this.#watchLine(host, false);
    this.#lineOp(host).leave = true;
  }

  #lineOp(host: string): LineOps {
    let ops = this.#lineOps.get(host);
    if (!ops) {
      ops = { adds: [], removes: [], leave: false };
      if (this.#lineOps.size === 0 && this.#queued.size === 0) {
        queueMicrotask(() => this.#flushAll());
      }
      this.#lineOps.set(host, ops);
    }
    return ops;
  }

  /** Sends changes of the line of `host`; a failure is healed by the heartbeat. */
  #sendLine(host: string, ops: LineOps, op: "" | "renew" | "leave"): void {
    if (this.#closed || this.#failFast()) return;
    if (ops.adds.length === 0 && ops.removes.length === 0 && op === "") return;
    this.#call(() =>
      this.#scripts.dprlLine(
        this.#key(host, "q"),
        this.#key(host, "qw"),
        this.#worker,
        this.#lease,
        this.#ttl,
        op,
        host,
        ops.adds.length,
        ...ops.adds,
        ...ops.removes,
      )
    ).then((reply) => {
      this.#noteLine(host, Number(reply[0]));
      this.#healed(reply.slice(1));
    }, () => {});
  }

  /** Takes in the length of the fleet's line of `host` as a script answered it. */
  #noteLine(host: string, length: number): void {
    if (length > 0) this.#lines.set(host, length);
    else this.#lines.delete(host);
  }

  /**
   * The requests waiting for `host` in the fleet's line, as Redis last
   * answered (an acquire, a change of the line or a heartbeat); 0 when none
   * is known to wait.
   */
  waiting(host: string): number {
    return this.#lines.get(host) ?? 0;
  }

  /** Listens for (or stops listening for) the wake-ups of the line of `host`. */
  #watchLine(host: string, on: boolean): void {
    const sub = this.#subscriber;
    if (!sub) return;
    const channel = this.#key(host, "q");
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
    if (this.#groupOf.has(host) || this.#tickets.has(host)) return false;
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
      if (this.#failFast()) throw new Error("Redis is unreachable");
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
    const lines = [...this.#tickets];
    this.#tickets.clear();
    this.#touched.clear();
    this.#hosts.clear();
    this.#fleet.clear();
    this.#lines.clear();
    if (client.status === "ready") {
      await Promise.allSettled([
        ...this.#batches(hosts).map(([e, batch]) =>
          withTimeout(
            this.#scripts.dprlSync(
              2 + batch.length,
              e,
              this.#leaseKey(e),
              ...batch.map((host) => this.#key(host, "n")),
              this.#worker,
              this.#lease,
              this.#ttl,
              this.#known.get(e) ?? "",
              this.#fresh,
              "leave",
              ...batch.flatMap((host) => [0, 0, 0, host]),
            ),
            this.#timeout,
          )
        ),
        ...lines.map(([host, tickets]) =>
          withTimeout(
            this.#scripts.dprlLine(
              this.#key(host, "q"),
              this.#key(host, "qw"),
              this.#worker,
              this.#lease,
              this.#ttl,
              "leave",
              host,
              0,
              ...tickets,
            ),
            this.#timeout,
          )
        ),
        withTimeout(
          this.#scripts.dprlRegister(this.#workersKey, this.#worker, this.#lease, "del"),
          this.#timeout,
        ),
        withTimeout(this.#client.del(this.#workerKey(this.#worker)), this.#timeout),
      ]);
    }
    if (!this.#own) return;
    if (client.status !== "wait" && client.status !== "end") {
      await withTimeout(client.quit(), this.#timeout).catch(() => {});
    }
    client.disconnect();
    client.off("error", this.#onError);
  }

  #key(host: string, kind: "n" | "q" | "qw"): string {
    const group = this.#groupOf.get(host);
    if (group !== undefined) return `${this.#prefix}:{g:${group}}:h:${host}:${kind}`;
    return `${this.#prefix}:{${host}}:${kind}`;
  }

  /** The member set of `host`'s group, or (no group) its count key, unused then. */
  #membersKey(host: string): string {
    const group = this.#groupOf.get(host);
    if (group !== undefined) return `${this.#prefix}:{g:${group}}:members`;
    return this.#key(host, "n");
  }

  /**
   * The epoch key of `host`'s slot: `<prefix>:epoch` on a single Redis; on
   * Cluster one per hash slot, `<prefix>:{<tag>}:epoch` with a tag that
   * hashes to the slot of the host's keys.
   */
  #epochKey(host: string): string {
    if (!this.#cluster) return `${this.#prefix}:epoch`;
    return `${this.#prefix}:{${slotTag(keySlot(this.#key(host, "n")))}}:epoch`;
  }

  /** The lease set of the slot whose epoch key is `epochKey`: `<prefix>:leases` on a single Redis. */
  #leaseKey(epochKey: string): string {
    return `${epochKey.slice(0, -"epoch".length)}leases`;
  }

  get #workersKey(): string {
    return `${this.#prefix}:workers`;
  }

  #workerKey(id: string): string {
    return `${this.#prefix}:worker:${id}`;
  }

  /**
   * Takes in the epoch token a script answered with; when it shows that Redis
   * lost keys since this worker last looked (`lost` 2: this host's keys;
   * another token than the one known: the slot's keys), starts recovery.
   */
  #noteEpoch(
    key: string,
    lost: number,
    token: string,
    host: string,
    healed: Set<string> = new Set(),
  ): void {
    if (token === this.#fresh) this.#fresh = crypto.randomUUID();
    const known = this.#known.get(key);
    this.#known.set(key, token);
    if (known !== undefined && known !== token) {
      this.#recover(healed.has(key) ? null : "its keys were flushed or evicted", true, null);
    } else if (lost === 2) this.#hostLost(host, healed);
  }

  /** The keys of `host` were lost; a count key the reply `healed` is named there already. */
  #hostLost(host: string, healed: Set<string>): void {
    const what = healed.has(this.#key(host, "n"))
      ? null
      : `the keys of ${host} were deleted or evicted`;
    this.#recover(what, true, host);
  }

  /**
   * Logs the keys a script found holding another type than the one dprl
   * keeps there, and deleted (`[key, type, kind]...`), one WARN each: the
   * counts they held are re-asserted like lost ones. Returns those keys.
   */
  #healed(entries: unknown[]): Set<string> {
    const keys = new Set<string>();
    for (let i = 0; i + 2 < entries.length; i += 3) {
      const [key, type, kind] = entries.slice(i, i + 3).map(String);
      keys.add(key);
      this.#logger.warn(
        "Redis key {key} held a {type} where dprl keeps a {kind}; dprl deleted it and the fleet re-asserts its counts",
        { key, type, kind },
      );
    }
    return keys;
  }

  /** Whether new slots of `host` follow the failure mode while counts are re-asserted. */
  #recovering(host: string): boolean {
    const now = Date.now();
    if (this.#recoverUntil > now) return true;
    const until = this.#hostRecoverUntil.get(host);
    if (until === undefined) return false;
    if (until > now) return true;
    this.#hostRecoverUntil.delete(host);
    return false;
  }

  /**
   * Redis lost counts (of one host, or of `null`: all): for the recovery
   * window new slots of them follow the failure mode, every host is
   * re-asserted at once and, when this worker saw it first, the fleet is told
   * on `<prefix>:lost` so that every worker does so. Logged at most once a
   * window; not at all with `what` null (the cause was logged already).
   */
  #recover(what: string | null, tellFleet: boolean, host: string | null): void {
    if (this.#closed) return;
    const now = Date.now();
    const window = Math.min(this.#lease / 3, 1_000) + 1_000;
    // A restart or loss of every count, already told, covers a host too.
    const announced = this.#recoverUntil > now;
    const recovering = announced ||
      (host !== null && (this.#hostRecoverUntil.get(host) ?? 0) > now);
    if (host === null) this.#recoverUntil = Math.max(this.#recoverUntil, now + window);
    else {
      this.#hostRecoverUntil.set(
        host,
        Math.max(this.#hostRecoverUntil.get(host) ?? 0, now + window),
      );
    }
    if (!announced && now >= this.#lossLoggedUntil && what !== null) {
      this.#lossLoggedUntil = now + window;
      this.#logger.warn(
        "Redis lost dprl's counts ({what}); for {ms} ms new connections {scope} follow failure mode {mode} while the fleet re-asserts its counts",
        { what, ms: window, scope: host === null ? "to any host" : `to ${host}`, mode: this.#mode },
      );
    }
    if (!recovering && tellFleet) {
      const notice = JSON.stringify({ from: this.#worker, known: [...this.#known], host });
      this.#client.publish(`${this.#prefix}:lost`, notice).catch(() => {});
    }
    if (recovering && now - this.#lossBeatAt < 100) return;
    this.#lossBeatAt = now;
    for (const [h, s] of this.#hosts) this.#markDirty(h, s);
    this.#beat();
  }

  /** Another worker saw Redis lose keys: adopt its tokens and re-assert. */
  #lossNotice(message: string): void {
    let notice: { from?: unknown; known?: unknown; host?: unknown };
    try {
      notice = JSON.parse(message);
    } catch {
      return;
    }
    if (notice.from === this.#worker || !Array.isArray(notice.known)) return;
    for (const entry of notice.known) {
      if (
        Array.isArray(entry) && typeof entry[0] === "string" && typeof entry[1] === "string" &&
        this.#known.has(entry[0])
      ) {
        this.#known.set(entry[0], entry[1]);
      }
    }
    const host = typeof notice.host === "string" ? notice.host : null;
    this.#recover(`seen by worker ${String(notice.from)}`, false, host);
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
      if ((this.#hostRecoverUntil.get(host) ?? 0) <= Date.now()) {
        this.#hostRecoverUntil.delete(host);
      }
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
      ...this.#tickets.keys(),
      ...this.#lines.keys(),
      ...this.#groupOf.keys(),
      ...this.#hostRecoverUntil.keys(),
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
          (groupLimit > 0 && this.#localGroupCount(this.#groupOf.get(host)) >= groupLimit)
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
      if (this.#groupOf.get(host) === group) n += s.counted + s.uncounted + s.pending;
    }
    return n;
  }

  /** Gives back `count` slots of this worker in Redis. */
  #sendRelease(host: string, s: HostState, count = 1): void {
    this.#call(() =>
      this.#scripts.dprlRelease(
        this.#key(host, "n"),
        this.#epochKey(host),
        this.#key(host, "q"),
        this.#worker,
        count,
        host,
      )
    ).then((reply) => this.#healed(reply.slice(1)), () => this.#markDirty(host, s));
  }

  /**
   * Groups hosts into batches of at most {@linkcode BATCH_HOSTS} whose keys
   * share one slot (on a single Redis: any hosts), each with its epoch key.
   */
  #batches(hosts: Iterable<string>): [string, string[]][] {
    const groups = new Map<string, string[]>();
    for (const host of hosts) {
      const e = this.#epochKey(host);
      let group = groups.get(e);
      if (!group) groups.set(e, group = []);
      group.push(host);
    }
    return this.#split(groups);
  }

  /**
   * What a heartbeat sends: for every slot in which this worker holds a host,
   * its lease there, with the hosts that need a sync (changed behind Redis's
   * back, holding nothing, not synced for `TTL_LEASES - 2` leases, or in a
   * slot whose lease may have passed) and the others synced longest ago, as
   * many as it takes to sync each about every {@linkcode RENEW_LEASES}
   * leases and at least {@linkcode CHECK_HOSTS}. Batches of at most
   * {@linkcode BATCH_HOSTS} hosts.
   */
  #dueBatches(): [string, string[]][] {
    const now = Date.now();
    const overdue = now - this.#lease * (TTL_LEASES - 2);
    const slots = new Map<string, string[]>();
    let rest: [string, HostState, string][] = [];
    for (const [host, s] of this.#hosts) {
      const e = this.#epochKey(host);
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
    return this.#split(slots);
  }

  /**
   * Splits the hosts of each slot (by epoch key) into batches of at most
   * {@linkcode BATCH_HOSTS}; a slot without hosts is one empty batch.
   */
  #split(slots: Map<string, string[]>): [string, string[]][] {
    const out: [string, string[]][] = [];
    for (const [e, hosts] of slots) {
      for (let i = 0; i === 0 || i < hosts.length; i += BATCH_HOSTS) {
        out.push([e, hosts.slice(i, i + BATCH_HOSTS)]);
      }
    }
    return out;
  }

  /**
   * Syncs batches of hosts (each: keys in one slot, with its epoch key), one
   * script call per batch, sent in pipelines of up to
   * {@linkcode PIPELINE_HOSTS} hosts to one node: a single Redis, or one
   * master of a Cluster. Each pipeline is one round trip.
   */
  #syncAll(batches: [string, string[]][]): void {
    const byNode = new Map<string, [string, string[]][]>();
    for (const batch of batches) {
      const node = this.#cluster
        ? (this.#client as Cluster).slots[keySlot(batch[0])]?.[0] ?? ""
        : "";
      let list = byNode.get(node);
      if (!list) byNode.set(node, list = []);
      list.push(batch);
    }
    for (const [node, list] of byNode) {
      let chunk: PreparedSync[] = [];
      let size = 0;
      for (const [e, hosts] of list) {
        chunk.push(
          hosts.length === 0
            ? this.#prepareLease(e)
            : this.#prepareSync(e, hosts.map((host) => [host, this.#hosts.get(host)!])),
        );
        size += Math.max(1, hosts.length);
        if (size >= PIPELINE_HOSTS) {
          this.#sendSyncs(node, chunk);
          chunk = [];
          size = 0;
        }
      }
      if (chunk.length > 0) this.#sendSyncs(node, chunk);
    }
  }

  /**
   * Sends what a heartbeat prepared for one node (`""`: the single Redis) as
   * one pipeline, after asking the node's time when a lease needs it.
   */
  #sendSyncs(node: string, syncs: PreparedSync[]): void {
    const counts: number[] = [];
    const time = syncs.some((sync) => sync.needsTime)
      ? this.#call(() => this.#redisTime(node))
      : Promise.resolve(0);
    time.then((redisNow) =>
      this.#call(async () => {
        const pipeline = this.#client.pipeline() as unknown as ScriptedPipeline;
        for (const sync of syncs) counts.push(sync.queue(pipeline, redisNow));
        const results = await pipeline.exec();
        // A pipeline answers every error in its results: Redis did not answer these.
        const unanswered = results?.find(([error]) => error && !isReplyError(error));
        if (unanswered) throw unanswered[0];
        return results ?? [];
      })
    ).then(
      (results) => {
        let at = 0;
        syncs.forEach((sync, i) => {
          const own = results.slice(at, at += counts[i]);
          if (own.length < counts[i] || own.some(([error]) => error)) sync.failed();
          else sync.answered(own.map(([, reply]) => reply));
        });
      },
      () => {
        for (const sync of syncs) sync.failed();
      },
    );
  }

  /** Redis's time (ms since epoch) on `node` (`""`: the single Redis). */
  async #redisTime(node: string): Promise<number> {
    const client = this.#cluster
      ? (this.#client as Cluster).nodes("master").find((n) =>
        `${n.options.host}:${n.options.port}` === node
      )
      : this.#client as Redis;
    if (!client) throw new Error(`No connection to Redis node ${node}`);
    const [sec, usec] = await client.time();
    return Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
  }

  /**
   * Renews this worker's lease of the slot of epoch key `e`, where no host
   * needs a sync: a `ZADD` with a deadline from Redis's time and a
   * `PEXPIRE`, no script. A lease found missing while it cannot have passed
   * means the lease set was lost.
   */
  #prepareLease(e: string): PreparedSync {
    const key = this.#leaseKey(e);
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
        if (Number(added) === 1 && held) this.#leaseLost(false);
      },
      failed: () => {},
    };
  }

  /**
   * The script call that renews this worker's lease of the slot of epoch key
   * `e` and syncs `hosts` (keys in that slot), and what to do with its answer.
   */
  #prepareSync(e: string, hosts: [string, HostState][]): PreparedSync {
    const args: (string | number)[] = [];
    const dirtyAt: number[] = [];
    const now = Date.now();
    for (const [host, s] of hosts) {
      const queued = this.#queued.get(host);
      args.push(
        this.#syncCount(host, s),
        s.counted + (queued?.releases ?? 0),
        s.dirty ? 0 : 1,
        host,
      );
      dirtyAt.push(s.dirtyGen);
      s.syncs++;
      this.#touched.add(host);
    }
    const keysAndArgs: [number, ...(string | number)[]] = [
      2 + hosts.length,
      e,
      this.#leaseKey(e),
      ...hosts.map(([host]) => this.#key(host, "n")),
      this.#worker,
      this.#lease,
      this.#ttl,
      this.#known.get(e) ?? "",
      this.#fresh,
      this.#leaseHeld(e, now) ? 1 : 0,
      ...args,
    ];
    return {
      needsTime: false,
      queue: (pipeline) => {
        pipeline.dprlSync(...keysAndArgs);
        return 1;
      },
      answered: ([answer]) => {
        const reply = answer as (string | number)[];
        this.#leasedAt.set(e, now);
        const lost = Number(reply[1]);
        const healed = this.#healed(reply.slice(2 + 2 * hosts.length));
        this.#noteEpoch(e, lost, String(reply[0]), "", healed);
        if (lost === 1) this.#leaseLost(healed.has(this.#leaseKey(e)));
        hosts.forEach(([host, s], i) => {
          if (s.dirtyGen === dirtyAt[i]) s.dirty = false;
          s.renewedAt = now;
          this.#fleet.set(host, Number(reply[2 + 2 * i]));
          if (Number(reply[3 + 2 * i]) === 2) this.#hostLost(host, healed);
          this.#collect(host, s);
        });
      },
      failed: () => {
        for (const [host, s] of hosts) this.#markDirty(host, s);
      },
    };
  }

  /**
   * A lease of this worker that cannot have passed was missing: its slot's
   * lease set was lost (or, `healed`, deleted for its type and logged so).
   */
  #leaseLost(healed: boolean): void {
    this.#recover(healed ? null : "the lease set of a slot was deleted or evicted", true, null);
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
    const batches = this.#batches(hosts);
    const totals = new Map<string, number>();
    await Promise.all(batches.map(async ([, batch]) => {
      const reply = await this.#call(() =>
        this.#scripts.dprlCount(
          2 * batch.length,
          ...batch.flatMap((host) => [this.#key(host, "n"), this.#leaseKey(this.#epochKey(host))]),
          this.#lease,
        )
      );
      batch.forEach((host, i) => totals.set(host, Number(reply[i])));
      this.#healed(reply.slice(batch.length));
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
    this.#syncAll(this.#dueBatches());
    for (const [host, tickets] of this.#tickets) {
      // A ticket being granted right now must not come back as a ghost.
      const adds = [...tickets].filter((t) => !this.#asking.has(t));
      this.#sendLine(host, { adds, removes: [], leave: false }, "renew");
    }
    for (const host of this.#groupOf.keys()) {
      if (
        !this.#hosts.has(host) && !this.#fleet.has(host) && !this.#queued.has(host) &&
        !this.#tickets.has(host)
      ) {
        this.#groupOf.delete(host);
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

  /** Renews this worker's entry in `<prefix>:workers` and `<prefix>:worker:<id>`. */
  #register(): void {
    if (this.#closed || this.#failFast()) return;
    let connections = 0;
    for (const s of this.#hosts.values()) connections += s.counted - s.kept.length + s.uncounted;
    const key = this.#workerKey(this.#worker);
    this.#call(() => this.#scripts.dprlRegister(this.#workersKey, this.#worker, this.#lease, "add"))
      .catch(() => {});
    this.#call(async () => {
      await this.#client.hset(key, {
        id: this.#worker,
        ...this.#info,
        pid: String(this.#info.pid),
        connections: String(connections),
      });
      await this.#client.pexpire(key, this.#ttl);
    }).catch(() => {});
  }

  /**
   * Sets what this worker tells the fleet about itself (host name, pid,
   * version, admin URL) and registers it at once; the heartbeat renews the
   * entry and {@linkcode close} removes it.
   */
  setWorkerInfo(info: Partial<Omit<WorkerInfo, "id" | "connections">>): void {
    this.#info = { ...this.#info, ...info };
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
    const ids = await this.#call(() =>
      this.#scripts.dprlRegister(this.#workersKey, "", this.#lease, "list")
    );
    const hashes = await Promise.all(
      ids.map((id) => this.#call(() => this.#client.hgetall(this.#workerKey(id)))),
    );
    return ids.map((id, i) => {
      const h = hashes[i];
      return {
        id,
        hostname: h.hostname ?? "",
        pid: Number(h.pid ?? 0) || 0,
        version: h.version ?? "",
        adminUrl: h.adminUrl ?? "",
        proxyUrl: h.proxyUrl ?? "",
        started: h.started ?? "",
        connections: Number(h.connections ?? 0) || 0,
      };
    });
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
    if (!reconnect) this.#checkConfig();
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
    const known = this.#runId;
    const window = Math.min(this.#lease / 3, 1_000) + 1_000;
    if (known !== null) this.#recoverUntil = Infinity;
    let runId: string | null = null;
    try {
      const info = String(
        await withTimeout((this.#client as Redis).info("server"), this.#timeout),
      );
      runId = /run_id:(\w+)/.exec(info)?.[1] ?? null;
    } catch {
      // Unknown: after a reconnect, assume the worst.
    }
    if (this.#closed) return;
    if (runId !== null) this.#runId = runId;
    if (known === null) return;
    if (runId === known) {
      this.#recoverUntil = 0;
      return;
    }
    this.#recoverUntil = Date.now() + window;
    // This window covers the restart: epoch tokens and leases known from
    // before it would report the same loss again at this worker's next call.
    this.#known.clear();
    this.#leasedAt.clear();
    this.#logger.warn(
      "Redis restarted or failed over; for {ms} ms new connections follow failure mode {mode} while the fleet re-asserts its counts",
      { ms: window, mode: this.#mode },
    );
  }

  /**
   * Warns once when Redis may evict dprl's keys: a `maxmemory` with a policy
   * other than `noeviction`. Says nothing (but at debug level) when `CONFIG`
   * is refused.
   */
  async #checkConfig(): Promise<void> {
    const nodes = this.#cluster
      ? (this.#client as Cluster).nodes("master")
      : [this.#client as Redis];
    for (const node of nodes) {
      let reply: string[];
      try {
        reply = (await withTimeout(node.config("GET", "maxmemory*"), this.#timeout)) as string[];
      } catch (error) {
        this.#logger.debug("Cannot read the Redis configuration: {error}", {
          error: describe(error),
        });
        return;
      }
      const config = new Map<string, string>();
      for (let i = 0; i + 1 < reply.length; i += 2) config.set(reply[i], reply[i + 1]);
      const maxmemory = config.get("maxmemory") ?? "0";
      const policy = config.get("maxmemory-policy") ?? "noeviction";
      if (maxmemory !== "0" && policy !== "noeviction") {
        this.#logger.warn(
          "Redis may evict dprl's counts (maxmemory {maxmemory}, maxmemory-policy {policy}); set maxmemory-policy noeviction or no maxmemory",
          { maxmemory, policy },
        );
        return;
      }
    }
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

  /** Runs one Redis call within the timeout and tracks Redis's state. */
  async #call<T>(op: () => Promise<T>): Promise<T> {
    const epoch = this.#epoch;
    const started = performance.now();
    let result: T;
    try {
      result = await withTimeout(op(), this.#timeout);
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

/** A script error that Redis answered (the server is up). */
class RedisReplyError extends Error {}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`Redis did not answer within ${ms} ms`)),
      ms,
    );
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error) => {
        clearTimeout(timer);
        reject(
          isReplyError(error) ? new RedisReplyError(describe(error), { cause: error }) : error,
        );
      },
    );
  });
}

function isReplyError(error: unknown): boolean {
  return error instanceof Error && error.name === "ReplyError" &&
    !/^(NOSCRIPT|LOADING|BUSY|MASTERDOWN|READONLY|CLUSTERDOWN|TRYAGAIN|NOAUTH|WRONGPASS)/
      .test(error.message);
}

/** Whether Redis refused the client's credentials (or wants some). */
function isAuthError(error: unknown): boolean {
  return error instanceof Error &&
    /^(NOAUTH|WRONGPASS)|invalid password|ERR AUTH/i.test(error.message);
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = (error as { code?: unknown }).code;
  return typeof code === "string" && !error.message.includes(code)
    ? `${error.message} (${code})`
    : error.message;
}

/**
 * ioredis listens for one error of each socket; a second one (an EPIPE after
 * a TLS alert, say) would be thrown as uncaught. Every socket of `client`
 * gets a listener that ignores what ioredis has already been told.
 */
function guardStreams(client: Redis | Cluster): void {
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

/** This machine's host name, or `""` when it may not be read (never prompts). */
function hostname(): string {
  try {
    if (Deno.permissions.querySync({ name: "sys", kind: "hostname" }).state !== "granted") {
      return "";
    }
    return Deno.hostname();
  } catch {
    return "";
  }
}

const CRC16 = (() => {
  const table = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let j = 0; j < 8; j++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    table[i] = c;
  }
  return table;
})();

function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const b of bytes) crc = ((crc << 8) & 0xffff) ^ CRC16[((crc >> 8) ^ b) & 0xff];
  return crc;
}

/** The Redis Cluster hash slot of `key` (its hash tag, when it has one). */
function keySlot(key: string): number {
  const open = key.indexOf("{");
  if (open >= 0) {
    const close = key.indexOf("}", open + 1);
    if (close > open + 1) key = key.slice(open + 1, close);
  }
  return crc16(new TextEncoder().encode(key)) & 16383;
}

/** Hash tags found so far, by slot, and the next candidate to try. */
const slotTags = new Array<string | undefined>(16384);
let nextTag = 0;

/**
 * A short hash tag (`e<n>`) whose keys land in `slot`: the first such tag,
 * found by scanning on from where the last lookup stopped (all 16384 slots
 * take about 150,000 candidates in all).
 */
function slotTag(slot: number): string {
  const enc = new TextEncoder();
  while (slotTags[slot] === undefined) {
    const tag = `e${nextTag++}`;
    const s = crc16(enc.encode(tag)) & 16383;
    slotTags[s] ??= tag;
  }
  return slotTags[slot]!;
}

function checkMs(what: string, ms: number): number {
  if (!Number.isFinite(ms) || ms <= 0) {
    throw new RangeError(
      `${what} must be a positive number of milliseconds, got ${ms}`,
    );
  }
  return Math.ceil(ms);
}

function isClient(config: RedisConfig): boolean {
  return typeof config === "object" && config !== null &&
    typeof (config as { defineCommand?: unknown }).defineCommand ===
      "function" &&
    typeof (config as { status?: unknown }).status === "string";
}

function createClient(
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
