/**
 * {@linkcode SlotBatches}: which hosts have something to tell Redis, grouped
 * by the slot their keys live in, and when to send them. Acquires go out at
 * the end of the event-loop turn that asked for them; slots given back wait
 * up to {@linkcode RELEASE_DELAY_MS} for an acquire of the same slot to ride
 * along with, unless someone may be waiting for them.
 *
 * @module
 */

/**
 * How long a slot given back may wait for the next acquire call of its slot
 * before it is sent on its own, in ms. While it waits it is still counted in
 * Redis, which errs on the side of the cap.
 */
export const RELEASE_DELAY_MS = 5;

/** Most hosts one acquire call carries. */
export const CALL_HOSTS = 256;

/** Options of {@linkcode SlotBatches}. */
export interface SlotBatchesOptions {
  /** The epoch key of the slot of `host`'s keys. */
  slotOf: (host: string) => string;
  /**
   * Sends one call for hosts of one slot (at most {@linkcode CALL_HOSTS});
   * returns whether it sent one, and then calls `answered` first thing when
   * it is answered (or fails).
   */
  send: (slot: string, hosts: string[], answered: () => void) => boolean;
  /** Called before the turn's calls are sent. */
  beforeFlush?: () => void;
}

/**
 * Calls one slot may have in flight at once. More than one saves the wait
 * for the call in flight under load (Redis runs each script whole, in the
 * order written); a few keep the batches large.
 */
export const CALLS_PER_SLOT = 4;

/** Hosts with work to send, by slot, and the timers that send them. */
export class SlotBatches {
  #o: SlotBatchesOptions;
  #slots = new Map<string, Set<string>>();
  /** Slots to send at the end of this turn. */
  #now = new Set<string>();
  #turnQueued = false;
  #timer: ReturnType<typeof setTimeout> | null = null;
  /** Calls in flight, by slot. */
  #calls = new Map<string, number>();
  /** Hosts in a call in flight: what comes for them meanwhile goes once it is answered. */
  #busy = new Set<string>();
  /** Who waits for a host's work to be written ({@linkcode flushHost}), by host. */
  #written = new Map<string, (() => void)[]>();

  /** Creates the batches. */
  constructor(options: SlotBatchesOptions) {
    this.#o = options;
  }

  /**
   * Notes that `host` has work to send: at the end of this turn when
   * `urgent`, else within {@linkcode RELEASE_DELAY_MS} or with the next
   * urgent call of its slot.
   */
  add(host: string, urgent: boolean): void {
    const slot = this.#o.slotOf(host);
    let hosts = this.#slots.get(slot);
    if (!hosts) this.#slots.set(slot, hosts = new Set());
    hosts.add(host);
    if (urgent) {
      this.#now.add(slot);
      this.turn();
    } else if (this.#timer === null) {
      this.#timer = setTimeout(() => this.#flushAll(), RELEASE_DELAY_MS);
    }
  }

  /** Runs the end-of-turn flush (and so `beforeFlush`) even when no host waits. */
  turn(): void {
    if (this.#turnQueued) return;
    this.#turnQueued = true;
    queueMicrotask(() => this.#flushTurn());
  }

  /**
   * Sends what waits for `host` as soon as it may go: at once, or when its
   * call in flight is answered (a host never has two calls in flight: the
   * limiter's accounting of it rests on one answer at a time), or when its
   * slot may have another call. Resolves once it is written, or at once
   * when nothing of it waits to be.
   */
  flushHost(host: string): Promise<void> {
    const slot = this.#o.slotOf(host);
    // A call in flight is written already: what follows on the connection comes after it.
    if (!this.#pending(host, slot)) return Promise.resolve();
    this.#flushSlot(slot);
    if (!this.#pending(host, slot)) return Promise.resolve();
    this.#now.add(slot);
    const written = Promise.withResolvers<void>();
    const waiting = this.#written.get(host) ?? [];
    this.#written.set(host, waiting);
    waiting.push(written.resolve);
    return written.promise;
  }

  /** Forgets everything that waits and stops the timer. */
  clear(): void {
    for (const waiting of this.#written.values()) for (const resolve of waiting) resolve();
    this.#written.clear();
    this.#slots.clear();
    this.#now.clear();
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** Whether `host` has work not written yet. */
  #pending(host: string, slot: string): boolean {
    return this.#slots.get(slot)?.has(host) ?? false;
  }

  #flushTurn(): void {
    this.#turnQueued = false;
    this.#o.beforeFlush?.();
    const slots = this.#now;
    this.#now = new Set();
    for (const slot of slots) this.#flushSlot(slot);
  }

  #flushAll(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#o.beforeFlush?.();
    for (const slot of [...this.#slots.keys()]) this.#flushSlot(slot);
  }

  /** Sends the hosts of `slot` with work and no call in flight, while the slot may have another call. */
  #flushSlot(slot: string): void {
    const hosts = this.#slots.get(slot);
    if (!hosts) return;
    const ready = [...hosts].filter((host) => !this.#busy.has(host));
    if (ready.length === 0 || (this.#calls.get(slot) ?? 0) >= CALLS_PER_SLOT) {
      // Sent when a call in flight is answered.
      this.#now.add(slot);
      return;
    }
    for (const host of ready) hosts.delete(host);
    if (hosts.size === 0) {
      this.#slots.delete(slot);
      this.#now.delete(slot);
    } else this.#now.add(slot); // the busy ones, once answered

    for (let i = 0; i < ready.length; i += CALL_HOSTS) {
      this.#call(slot, ready.slice(i, i + CALL_HOSTS));
    }
    if (this.#slots.size === 0 && this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
  }

  /** Sends one call for `hosts` of `slot`; they are busy until it is answered. */
  #call(slot: string, hosts: string[]): void {
    const answered = () => {
      for (const host of hosts) this.#busy.delete(host);
      const calls = (this.#calls.get(slot) ?? 1) - 1;
      if (calls > 0) this.#calls.set(slot, calls);
      else this.#calls.delete(slot);
      if (this.#now.has(slot)) this.#flushSlot(slot);
      this.#settle(hosts, slot);
    };
    if (!this.#o.send(slot, hosts, answered)) {
      this.#settle(hosts, slot);
      return;
    }
    for (const host of hosts) this.#busy.add(host);
    this.#calls.set(slot, (this.#calls.get(slot) ?? 0) + 1);
    this.#settle(hosts, slot);
  }

  /** Resolves who waits for `hosts` once nothing of them waits to be written. */
  #settle(hosts: string[], slot: string): void {
    for (const host of hosts) {
      const waiting = this.#written.get(host);
      if (!waiting || this.#pending(host, slot)) continue;
      this.#written.delete(host);
      for (const resolve of waiting) resolve();
    }
  }
}
