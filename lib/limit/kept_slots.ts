/**
 * {@linkcode KeptSlots}: slots given back by a request but still counted in
 * Redis, kept for this worker's next acquire of the same host for up to
 * {@linkcode KEEP_MS}: a worker that closes a connection and opens another to
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

/** Options of {@linkcode KeptSlots}. */
export interface KeptSlotsOptions extends LimiterContext {
  /** Whether a request of this worker waits in the fleet's queue of `host`. */
  queued: (host: string) => boolean;
  /** Slots of `host` were given back in the ledger: send them. */
  gaveBack: (host: string) => void;
}

/** The hosts with kept slots, and the timer that gives each back once kept {@linkcode KEEP_MS}. */
export class KeptSlots {
  #o: KeptSlotsOptions;
  #hosts = new Set<string>();
  #timer: ReturnType<typeof setTimeout> | null = null;

  /** Creates the kept slots. */
  constructor(options: KeptSlotsOptions) {
    this.#o = options;
  }

  /** Takes a kept slot of `host` for a new request, if one may be taken; returns whether one was. */
  take(host: string): boolean {
    return this.#mayKeep(host, 0) && this.#o.ledger.takeKept(host);
  }

  /** Gives back one slot of `host` held by a request, keeping it when it may be kept. */
  release(host: string): Released {
    const failFast = this.#o.conn.failFast();
    const keep = !failFast && this.#mayKeep(host, 1);
    const released = this.#o.ledger.release(host, { keep, failFast, now: performance.now() });
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

  /** Gives back the `n` oldest kept slots of `host` in Redis (or by the next sync while it is down). */
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
  }

  /** Gives back the slots kept {@linkcode KEEP_MS} or longer; runs while any are kept. */
  #sweep(): void {
    this.#timer = null;
    const due = performance.now() - KEEP_MS;
    let next = Infinity;
    for (const host of this.#hosts) {
      const kept = this.#o.ledger.get(host)?.kept ?? [];
      let n = 0;
      while (n < kept.length && kept[n] <= due) n++;
      if (n < kept.length) next = Math.min(next, kept[n]);
      else this.#hosts.delete(host);
      if (n > 0) this.#giveBack(host, n);
    }
    if (next < Infinity) this.#timer = setTimeout(() => this.#sweep(), next - due);
  }
}
