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

/** Hosts with work to send, by slot, and the timers that send them. */
export class SlotBatches {
  #o: SlotBatchesOptions;
  #slots = new Map<string, Set<string>>();
  /** Slots to send at the end of this turn. */
  #now = new Set<string>();
  #turnQueued = false;
  #timer: ReturnType<typeof setTimeout> | null = null;
  /** Slots with a call in flight: what comes meanwhile goes with the next one, once it is answered. */
  #inFlight = new Set<string>();
  /** Who waits for a slot's next call to be written ({@linkcode flushHost}), by slot. */
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
   * Sends what waits for the slot of `host` as soon as it may go: at once,
   * or when the slot's call in flight is answered (a host never has two
   * calls in flight: Redis may apply them out of order). Resolves once it is
   * written.
   */
  flushHost(host: string): Promise<void> {
    const slot = this.#o.slotOf(host);
    if (!this.#inFlight.has(slot)) {
      this.#flushSlot(slot);
      return Promise.resolve();
    }
    this.#now.add(slot);
    const written = Promise.withResolvers<void>();
    const waiting = this.#written.get(slot) ?? [];
    this.#written.set(slot, waiting);
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

  #flushSlot(slot: string): void {
    if (this.#inFlight.has(slot)) {
      // Sent when the call in flight is answered.
      if (this.#slots.has(slot)) this.#now.add(slot);
      return;
    }
    for (const resolve of this.#written.get(slot) ?? []) resolve();
    this.#written.delete(slot);
    const hosts = this.#slots.get(slot);
    if (!hosts) return;
    this.#slots.delete(slot);
    this.#now.delete(slot);
    const list = [...hosts];
    let calls = 0;
    const answered = () => {
      if (--calls > 0) return;
      this.#inFlight.delete(slot);
      if (this.#now.has(slot) || this.#written.has(slot)) this.#flushSlot(slot);
    };
    for (let i = 0; i < list.length; i += CALL_HOSTS) {
      calls++;
      if (!this.#o.send(slot, list.slice(i, i + CALL_HOSTS), answered)) calls--;
    }
    if (calls > 0) this.#inFlight.add(slot);
    if (this.#slots.size === 0 && this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
  }
}
