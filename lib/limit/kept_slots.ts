/**
 * {@linkcode KeptSlots}: slots given back by a request but still counted in
 * Redis, kept for this worker's next acquire of the same host for up to
 * {@linkcode KEEP_MS}, or {@linkcode KEEP_FAR_MS} while the host is far
 * below its limit: a worker that closes a connection and opens another to
 * the host within it makes no Redis call for either.
 *
 * @module
 */

import type { Released } from "./host_ledger.ts";
import type { LimiterContext } from "./limiter_context.ts";

/**
 * How long a slot given back stays counted in Redis for this worker's next
 * acquire of the same host, in ms. A slot is kept only while the fleet holds
 * fewer than the host's limit with it (so nobody else is refused for it), the
 * host is in no group and no request of this worker waits in its queue; a
 * refusal anywhere in the fleet (`<prefix>:pressure`) gives the host's kept
 * slots back at once.
 */
export const KEEP_MS = 100;

/**
 * How long a slot given back stays kept when this worker comes back to the
 * host (it asked for the host again within this time after a slot of it went
 * back) and the fleet (as last answered, the slot included) holds at most
 * half the host's limit, or the host has none, in ms. A worker that spreads
 * its traffic over many hosts comes back to each within it; a kept slot
 * there can refuse nobody unless the fleet's load doubles first (and the
 * first refusal gives it back).
 */
export const KEEP_FAR_MS = 5_000;

/** How often at most the kept slots are swept, in ms: one look over the kept hosts each time. */
const SWEEP_MS = 25;

/** Options of {@linkcode KeptSlots}. */
export interface KeptSlotsOptions extends LimiterContext {
  /** Whether a request of this worker waits in the fleet's queue of `host`. */
  queued: (host: string) => boolean;
  /** Slots of `host` were given back in the ledger: send them. */
  gaveBack: (host: string) => void;
}

/** The hosts with kept slots, and the timer that gives each back once kept long enough. */
export class KeptSlots {
  #o: KeptSlotsOptions;
  #hosts = new Set<string>();
  /** Hosts whose kept slots went back unused, and when; oldest first. */
  #wentBack = new Map<string, number>();
  /** Hosts this worker came back to, and when it last did; oldest first. */
  #returning = new Map<string, number>();
  #timer: ReturnType<typeof setTimeout> | null = null;

  /** Creates the kept slots. */
  constructor(options: KeptSlotsOptions) {
    this.#o = options;
  }

  /** Takes a kept slot of `host` for a new request, if one may be taken; returns whether one was. */
  take(host: string): boolean {
    const now = performance.now();
    if (this.#mayKeep(host, 0) && this.#o.ledger.takeKept(host)) {
      if (this.#returning.has(host)) touch(this.#returning, host, now);
      return true;
    }
    const wentBack = this.#wentBack.get(host);
    if (wentBack !== undefined && now - wentBack <= KEEP_FAR_MS) touch(this.#returning, host, now);
    this.#wentBack.delete(host);
    return false;
  }

  /** Gives back one slot of `host` held by a request, keeping it when it may be kept. */
  release(host: string): Released {
    const failFast = this.#o.conn.failFast();
    const keep = !failFast && this.#mayKeep(host, 1);
    const far = this.#returning.has(host) && this.#far(host);
    const until = performance.now() + (far ? KEEP_FAR_MS : KEEP_MS);
    const released = this.#o.ledger.release(host, { keep, failFast, until });
    if (released === "kept") {
      this.#hosts.add(host);
      this.#timer ??= setTimeout(() => this.#sweep(), KEEP_MS);
    }
    return released;
  }

  /** Gives back every kept slot of `host` at once. */
  giveBackAll(host: string): void {
    if (this.#hosts.delete(host)) this.#giveBack(host, Infinity);
  }

  /**
   * Whether a slot of `host` may stay with this worker: no group, no request
   * of this worker in its queue, and the fleet (as last answered, kept slots
   * included) holds at most its limit less `room`.
   */
  #mayKeep(host: string, room: number): boolean {
    const { keys, ledger, fleet } = this.#o;
    if (keys.groupOf.has(host) || this.#o.queued(host)) return false;
    const limit = ledger.get(host)?.limit ?? 0;
    return limit <= 0 || (fleet.get(host) ?? Infinity) <= limit - room;
  }

  /** Whether the fleet (as last answered) holds at most half the limit of `host`, or it has none. */
  #far(host: string): boolean {
    const limit = this.#o.ledger.get(host)?.limit ?? 0;
    return limit <= 0 || (this.#o.fleet.get(host) ?? Infinity) * 2 <= limit;
  }

  /** Gives back the `n` kept slots of `host` due soonest in Redis (or by the next sync while it is down). */
  #giveBack(host: string, n: number): void {
    if (this.#o.closed()) return;
    this.#o.ledger.giveBackKept(host, n, this.#o.conn.failFast());
    this.#o.gaveBack(host);
  }

  /** Stops the timer and forgets the kept slots (closing). */
  close(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#hosts.clear();
    this.#wentBack.clear();
    this.#returning.clear();
  }

  /** Gives back the slots kept as long as they may be; runs while any are kept. */
  #sweep(): void {
    this.#timer = null;
    const now = performance.now();
    let next = Infinity;
    for (const host of this.#hosts) {
      const kept = this.#o.ledger.get(host)?.kept ?? [];
      let n = 0;
      while (n < kept.length && kept[n] <= now) n++;
      if (n < kept.length) next = Math.min(next, kept[n]);
      else this.#hosts.delete(host);
      if (n > 0) {
        this.#giveBack(host, n);
        // Not come back to in time: kept briefly again until it is.
        if (!this.#returning.delete(host)) touch(this.#wentBack, host, now);
      }
    }
    forgetBefore(this.#wentBack, now - KEEP_FAR_MS);
    forgetBefore(this.#returning, now - KEEP_FAR_MS);
    if (next < Infinity) {
      this.#timer = setTimeout(() => this.#sweep(), Math.max(SWEEP_MS, next - now));
    }
  }
}

/** Sets `host` to `at` in `map`, moving it last (the maps are kept oldest first). */
function touch(map: Map<string, number>, host: string, at: number): void {
  map.delete(host);
  map.set(host, at);
}

/** Deletes the entries of `map` (oldest first) set before `t`. */
function forgetBefore(map: Map<string, number>, t: number): void {
  for (const [host, at] of map) {
    if (at >= t) return;
    map.delete(host);
  }
}
