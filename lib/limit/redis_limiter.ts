/**
 * The distributed limiter: every proxy of a fleet counts its open upstream
 * connections per host in Redis, and a slot is granted only while the sum over
 * the live workers is under the host's limit.
 *
 * @module
 */

import { Cluster, Redis } from "ioredis";
import type { ClusterOptions, RedisOptions } from "ioredis";
import type { RedisConfig } from "./redis_config.ts";
import { getLogger, type Logger } from "@logtape/logtape";
import { type Limiter, LimiterUnavailableError } from "./limiter.ts";
import { ACQUIRE_LUA, COUNT_LUA, RELEASE_LUA, SYNC_LUA } from "./redis_scripts.ts";

/**
 * What to do when Redis cannot be reached or does not answer in time:
 * `"closed"` refuses new connections, `"open"` admits them without counting,
 * `"local"` enforces each host's limit in this process's memory.
 */
export type FailureMode = "closed" | "open" | "local";

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
  /** Acquires sent to Redis and not answered yet. */
  pending: number;
  /** Syncs sent so far (tells an acquire whether a sync counted it). */
  syncs: number;
  /** Redis may disagree with `counted`: keep the host and sync it. */
  dirty: boolean;
  /** Bumped whenever `dirty` is set, so a sync only clears what it saw. */
  dirtyGen: number;
}

/** An ioredis client with dprl's scripts defined on it. */
interface ScriptedClient {
  status: string;
  dprlAcquire(
    n: string,
    w: string,
    worker: string,
    limit: number,
    lease: number,
    floor: number,
    ttl: number,
  ): Promise<[number, number]>;
  dprlRelease(n: string, w: string, worker: string): Promise<number>;
  dprlSync(
    n: string,
    w: string,
    worker: string,
    count: number,
    lease: number,
    ttl: number,
  ): Promise<number>;
  dprlCount(n: string, w: string): Promise<number>;
}

/** How many leases an idle host's keys outlive their last write. */
const TTL_LEASES = 4;

/**
 * A {@linkcode Limiter} whose counters live in Redis, shared by every proxy
 * of a fleet.
 *
 * For host `H` it keeps `<prefix>:{H}:n` (hash: worker id -> this worker's
 * open connections) and `<prefix>:{H}:w` (sorted set: worker id -> lease
 * deadline), changed only by Lua scripts that take their time from Redis.
 * A heartbeat re-asserts this worker's counts every third of a lease, and at
 * once after a reconnect, so lost writes and a Redis restart heal themselves.
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
  #timeout: number;
  #mode: FailureMode;
  #logger: Logger;
  #worker: string;
  #hosts = new Map<string, HostState>();
  #touched = new Set<string>();
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
  #onReady = (): void => this.#handleReady();
  #onClose = (): void => {
    if (this.#closed) return;
    this.#awaitingReady = true;
    this.#epoch++;
    this.#down(new Error("Connection to Redis closed"));
  };
  #onError = (error: unknown): void => {
    this.#logger.debug("Redis client error: {error}", { error });
  };

  /** Creates the limiter; the connection is opened on first use. */
  constructor(options: RedisLimiterOptions) {
    this.#prefix = options.prefix ?? "dprl";
    this.#lease = checkMs("Lease", options.lease ?? 15_000);
    this.#timeout = checkMs("Timeout", options.timeout ?? 1_000);
    this.#ttl = this.#lease * TTL_LEASES;
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
    client.defineCommand("dprlAcquire", { numberOfKeys: 2, lua: ACQUIRE_LUA });
    client.defineCommand("dprlRelease", { numberOfKeys: 2, lua: RELEASE_LUA });
    client.defineCommand("dprlSync", { numberOfKeys: 2, lua: SYNC_LUA });
    client.defineCommand("dprlCount", { numberOfKeys: 2, lua: COUNT_LUA });
    this.#scripts = client as unknown as ScriptedClient;
    client.on("ready", this.#onReady);
    client.on("close", this.#onClose);
    if (own) client.on("error", this.#onError);
  }

  /**
   * Called with a host when a worker of the fleet was refused a slot of it.
   * Refusals are published on `<prefix>:pressure`; setting this subscribes.
   */
  onPressure?: (host: string) => void;

  /** This worker's id: the field and member it writes in Redis. */
  get workerId(): string {
    return this.#worker;
  }

  /** The slots this process holds for `host`, counted or not. */
  localCount(host: string): number {
    const s = this.#hosts.get(host);
    return s ? s.counted + s.uncounted : 0;
  }

  /**
   * Takes one slot for `host` unless the fleet already holds `limit` (when
   * above 0). When Redis cannot decide, the failure mode applies: `"closed"`
   * rejects with {@linkcode LimiterUnavailableError}, `"open"` grants an
   * uncounted slot, `"local"` grants while this process holds fewer than
   * `limit`.
   */
  async acquire(host: string, limit: number): Promise<boolean> {
    if (this.#closed) {
      throw new LimiterUnavailableError("Redis limiter is closed");
    }
    const s = this.#state(host);
    this.#startHeartbeat();
    this.#subscribe();
    if (this.#failFast()) return this.#fallback(host, s, limit, null);
    if (this.#recoverUntil > Date.now()) {
      return this.#fallback(
        host,
        s,
        limit,
        new Error("Redis restarted and the fleet is re-asserting its counts"),
      );
    }
    this.#touched.add(host);
    const floor = s.counted;
    const syncsAtSend = s.syncs;
    const epoch = this.#epoch;
    s.pending++;
    let reply: [number, number];
    try {
      reply = await this.#call(() =>
        this.#scripts.dprlAcquire(
          this.#key(host, "n"),
          this.#key(host, "w"),
          this.#worker,
          limit,
          this.#lease,
          floor,
          this.#ttl,
        )
      );
    } catch (error) {
      s.pending--;
      // Redis may have counted it anyway; the next sync sets the truth.
      this.#markDirty(host, s);
      return this.#fallback(host, s, limit, error);
    }
    s.pending--;
    const granted = Number(reply[0]) === 1;
    if (epoch !== this.#epoch) {
      // Sent before a lost connection and replayed after it, maybe to a
      // Redis that restarted empty: its answer may rest on partial sums.
      // Take back what it counted and decide as if Redis had not answered.
      if ((granted || s.syncs !== syncsAtSend) && !this.#closed) {
        this.#sendRelease(host, s);
      }
      return this.#fallback(
        host,
        s,
        limit,
        new Error("Connection to Redis was lost while acquiring"),
      );
    }
    if (granted) {
      s.counted++;
      this.#attach(host, s);
      return true;
    }
    if (s.syncs !== syncsAtSend && !this.#closed) {
      // A sync sent after this acquire counted it as held: take it back.
      this.#sendRelease(host, s);
    }
    this.#collect(host, s);
    this.#publishPressure(host);
    return false;
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

  #subscribe(): void {
    if (this.#subscriber || !this.onPressure || this.#closed) return;
    const sub = this.#client.duplicate();
    this.#subscriber = sub;
    sub.on("error", this.#onError);
    sub.on("message", (_channel: string, host: string) => this.onPressure?.(host));
    sub.subscribe(`${this.#prefix}:pressure`).catch(() => {});
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
    if (s.counted <= 0) return;
    s.counted--;
    if (this.#closed) return;
    if (this.#failFast()) this.#markDirty(host, s);
    else this.#sendRelease(host, s);
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
      return Number(
        await this.#call(() => this.#scripts.dprlCount(this.#key(host, "n"), this.#key(host, "w"))),
      );
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
    this.#subscriber?.disconnect();
    this.#subscriber = null;
    const client = this.#client;
    client.off("ready", this.#onReady);
    client.off("close", this.#onClose);
    const hosts = [...this.#touched];
    this.#touched.clear();
    this.#hosts.clear();
    if (hosts.length > 0 && client.status === "ready") {
      await Promise.allSettled(hosts.map((host) =>
        withTimeout(
          this.#scripts.dprlSync(
            this.#key(host, "n"),
            this.#key(host, "w"),
            this.#worker,
            0,
            this.#lease,
            this.#ttl,
          ),
          this.#timeout,
        )
      ));
    }
    if (!this.#own) return;
    if (client.status !== "wait" && client.status !== "end") {
      await withTimeout(client.quit(), this.#timeout).catch(() => {});
    }
    client.disconnect();
    client.off("error", this.#onError);
  }

  #key(host: string, kind: "n" | "w"): string {
    return `${this.#prefix}:{${host}}:${kind}`;
  }

  #state(host: string): HostState {
    let s = this.#hosts.get(host);
    if (!s) {
      s = {
        counted: 0,
        uncounted: 0,
        pending: 0,
        syncs: 0,
        dirty: false,
        dirtyGen: 0,
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

  /** Forgets a host that holds nothing and that Redis agrees on. */
  #collect(host: string, s: HostState): void {
    if (
      s.counted === 0 && s.uncounted === 0 && s.pending === 0 && !s.dirty &&
      this.#hosts.get(host) === s
    ) {
      this.#hosts.delete(host);
    }
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
  ): boolean {
    switch (this.#mode) {
      case "open":
        this.#attach(host, s).uncounted++;
        return true;
      case "local": {
        const t = this.#attach(host, s);
        if (limit > 0 && t.counted + t.uncounted + t.pending >= limit) {
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

  #sendRelease(host: string, s: HostState): void {
    this.#call(() =>
      this.#scripts.dprlRelease(
        this.#key(host, "n"),
        this.#key(host, "w"),
        this.#worker,
      )
    ).catch(() => this.#markDirty(host, s));
  }

  #sync(host: string, s: HostState): void {
    const count = s.counted + s.pending;
    const dirtyAt = s.dirtyGen;
    s.syncs++;
    this.#touched.add(host);
    this.#call(() =>
      this.#scripts.dprlSync(
        this.#key(host, "n"),
        this.#key(host, "w"),
        this.#worker,
        count,
        this.#lease,
        this.#ttl,
      )
    ).then(
      () => {
        if (s.dirtyGen === dirtyAt) s.dirty = false;
        this.#collect(host, s);
      },
      () => this.#markDirty(host, s),
    );
  }

  /** Syncs every host this worker holds or may disagree with Redis on. */
  #beat(): void {
    if (this.#closed || this.#failFast()) return;
    for (const [host, s] of this.#hosts) this.#sync(host, s);
  }

  #startHeartbeat(): void {
    if (this.#heartbeat !== null || this.#closed) return;
    const timer = setInterval(
      () => this.#beat(),
      Math.max(1, Math.floor(this.#lease / 3)),
    );
    Deno.unrefTimer(timer);
    this.#heartbeat = timer;
  }

  #handleReady(): void {
    if (this.#closed) return;
    const reconnect = this.#everReady;
    this.#everReady = true;
    this.#awaitingReady = false;
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
    this.#logger.warn(
      "Redis restarted or failed over; for {ms} ms new connections follow failure mode {mode} while the fleet re-asserts its counts",
      { ms: window, mode: this.#mode },
    );
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
    this.#logger.warn(
      "Redis is unreachable ({error}); failure mode {mode} applies until it is back",
      { error: describe(error), mode: this.#mode },
    );
  }

  /** Runs one Redis call within the timeout and tracks Redis's state. */
  async #call<T>(op: () => Promise<T>): Promise<T> {
    const epoch = this.#epoch;
    let result: T;
    try {
      result = await withTimeout(op(), this.#timeout);
    } catch (error) {
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
    !/^(NOSCRIPT|LOADING|BUSY|MASTERDOWN|READONLY|CLUSTERDOWN|TRYAGAIN)/
      .test(error.message);
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
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
  return { client: new Redis({ ...defaults, ...(config as RedisOptions) }), own: true };
}
