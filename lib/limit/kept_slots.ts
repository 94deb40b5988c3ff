/**
 * {@linkcode KeptSlots}: slots given back by a request but still counted in
 * Redis, kept for this worker's next acquire of the same host for up to
 * {@linkcode KEEP_MS}: a worker that closes a connection and opens another to
 * the host within it makes no Redis call for either.
 *
 * @module
 */

import type { HostLedger } from "./host_ledger.ts";

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
export interface KeptSlotsOptions {
  /** The ledger whose entries hold the kept slots. */
  ledger: HostLedger;
  /** Gives back the `n` oldest kept slots of `host`. */
  giveBack: (host: string, n: number) => void;
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

  /** Takes a kept slot of `host` for a new request when `allowed`; returns whether one was taken. */
  take(host: string, allowed: boolean): boolean {
    return allowed && this.#o.ledger.takeKept(host);
  }

  /** A slot of `host` was just kept: it goes back after {@linkcode KEEP_MS}. */
  watch(host: string): void {
    this.#hosts.add(host);
    this.#timer ??= setTimeout(() => this.#sweep(), KEEP_MS);
  }

  /** Gives back every kept slot of `host` at once. */
  giveBackAll(host: string): void {
    if (!this.#hosts.delete(host)) return;
    this.#o.giveBack(host, Infinity);
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
      if (n > 0) this.#o.giveBack(host, n);
    }
    if (next < Infinity) this.#timer = setTimeout(() => this.#sweep(), next - due);
  }
}
