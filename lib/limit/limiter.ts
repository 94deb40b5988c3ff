/**
 * The contract every connection limiter keeps, in memory or through Redis.
 *
 * @module
 */

import type { AdaptiveSource } from "./adaptive_limits.ts";

/** A group of hosts that share one limit, as an acquire names it. */
export interface LimitGroup {
  /** The group's name. */
  readonly name: string;
  /** The open connections all members may hold together; 0 is unlimited. */
  readonly limit: number;
}

/** A request rate that an acquire or {@linkcode Limiter.admit} is held to. */
export interface RateLimit {
  /** Whose rate it is: a host key, or `g:<group>` for a group's shared rate. */
  readonly key: string;
  /** New upstream requests or tunnels per second. */
  readonly perSecond: number;
  /** The longest a request may wait for its turn, in ms; 0: refused when over the rate. */
  readonly maxWaitMs: number;
}

/** What else an acquire names besides the host's own limit. */
export interface AcquireOptions {
  /** The group the host belongs to, whose limit it shares. */
  group?: LimitGroup;
  /** The request's ticket in the fleet's queue ({@linkcode Limiter.enqueue}). */
  ticket?: string;
  /**
   * The rate the request is held to: the slot is granted only with a turn
   * under the rate, now or within `rate.maxWaitMs` (then
   * {@linkcode Slot.waitMs} says how long to wait before using it).
   */
  rate?: RateLimit;
  /**
   * The host's limit adapts ({@linkcode Limiter.adaptive}): the slot is
   * granted only under its adaptive limit, between `adaptive.min` and
   * `limit`, the ceiling.
   */
  adaptive?: { readonly min: number };
}

/**
 * One slot of a host taken by {@linkcode Limiter.acquire}, held until given
 * back with {@linkcode Slot.release} or by disposing of it
 * (`using slot = ...`). It is given back once, however many times either is
 * called.
 */
export interface Slot extends Disposable {
  /** The host key the slot counts under. */
  readonly host: string;
  /** How long to wait before using the slot (the request's turn under its rate), in ms; mostly 0. */
  readonly waitMs: number;
  /** Gives the slot back; a no-op once given back. */
  release(): void;
}

/**
 * A {@linkcode Slot} of `host` that calls `giveBack` the first time it is
 * released or disposed of, and never again.
 *
 * @example
 * ```ts
 * import { slotOf } from "./limiter.ts";
 * let held = 1;
 * const slot = slotOf("api.example.com", () => held--);
 * slot.release();
 * slot.release();
 * held; // 0
 * ```
 */
export function slotOf(host: string, giveBack: () => void, waitMs = 0): Slot {
  let held = true;
  const release = (): void => {
    if (!held) return;
    held = false;
    giveBack();
  };
  return { host, waitMs, release, [Symbol.dispose]: release };
}

/**
 * Counts open upstream connections per host key and grants new ones while a
 * host is under its limit (and, for a member of a group, while the group is
 * under the group's limit).
 */
export interface Limiter {
  /**
   * Takes one slot for `host` unless `limit` (when above 0) slots are already
   * taken, or `host` belongs to `group` and the group's members hold
   * `group.limit` (when above 0) slots together; both are checked and taken
   * at once. Resolves the {@linkcode Slot} when it is granted, `null` when
   * the host or its group is at its limit. Rejects with
   * {@linkcode LimiterUnavailableError} when the limiter cannot decide and its
   * failure mode says to refuse. With a `ticket` from
   * {@linkcode Limiter.enqueue}, the slot is granted only when no earlier
   * ticket still waits for the slots left, and the ticket leaves the queue.
   *
   * A host keeps the group it had when it held no slot until it holds none
   * again: a change of group applies to a host's next connections once its
   * open ones are closed.
   */
  acquire(host: string, limit: number, options?: AcquireOptions): Promise<Slot | null>;
  /**
   * Takes a turn under `rate` for a request to `host` that needs no new
   * slot (it reuses an open connection): resolves how long to wait for it,
   * in ms (0: now), or rejects with {@linkcode RateLimitedError} when no
   * turn comes within `rate.maxWaitMs`.
   */
  admit(host: string, rate: RateLimit): Promise<number>;
  /**
   * The adaptive limits of the hosts whose acquires name `adaptive`: the
   * owner of requests tells it how each went.
   */
  readonly adaptive: AdaptiveSource;
  /** The number of open connections to `host` (across the fleet). */
  count(host: string): Promise<number>;
  /** Stops the limiter and removes what it holds in shared storage. */
  close(): Promise<void>;
  /**
   * Set by the owner of idle connections: called with a host when another
   * process of the fleet was refused a slot of it, so that idle connections
   * held here give their slots up.
   */
  onPressure?: (host: string) => void;
  /**
   * A limiter shared by a fleet may keep one queue of waiting requests per
   * host across the fleet: puts a request at its end and returns its ticket.
   * Without it, each process's own queue is all there is.
   */
  enqueue?(host: string): string;
  /** Takes a ticket out of the queue (no-op once it was granted or is gone). */
  dequeue?(host: string, ticket: string): void;
  /** The requests waiting for `host` in the fleet's queue, as last seen. */
  waiting?(host: string): number;
  /**
   * Set by the owner of waiting requests: called with a host when a slot of
   * it may have come free elsewhere in the fleet.
   */
  onWake?: (host: string) => void;
  /**
   * A limiter shared by a fleet may tell it that a host asked for a pause
   * until `until` (ms since epoch, from its `Retry-After`).
   */
  pause?(host: string, until: number): void;
  /**
   * Set by the owner of new requests: called with a host and the end of its
   * pause when the fleet learnt that the host asked for one.
   */
  onPause?: (host: string, until: number) => void;
}

/** Thrown when a request has no turn under its rate within the wait it may make. */
export class RateLimitedError extends Error {
  /** Whose rate: a host key, or `g:<group>`. */
  readonly key: string;
  /** When the next turn comes, in ms from now (at least 1). */
  readonly retryAfterMs: number;
  /** Creates the error for the rate of `key`. */
  constructor(key: string, retryAfterMs: number) {
    super(`Request rate reached for ${key}; the next turn comes in ${retryAfterMs} ms`);
    this.name = "RateLimitedError";
    this.key = key;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Thrown when a limiter cannot reach its shared storage and must refuse. */
export class LimiterUnavailableError extends Error {
  /** Creates the error with a message saying what failed. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "LimiterUnavailableError";
  }
}
