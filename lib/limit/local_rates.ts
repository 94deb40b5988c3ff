/**
 * {@linkcode LocalRates}: request rates counted in this process's memory,
 * one GCRA state (a time) per rate key.
 *
 * @module
 */

import { gcraTurn } from "./gcra.ts";
import { type RateLimit, RateLimitedError } from "./limiter.ts";

/** States kept before the passed ones are swept out. */
const SWEEP_AT = 1024;

/** The request rates of one process. */
export class LocalRates {
  /** The theoretical arrival time of each rate key with recent requests (ms). */
  #tat = new Map<string, number>();
  #sweepAt = SWEEP_AT;

  /**
   * Takes a turn under `rate` at `now` (ms): resolves the wait for it in
   * ms, or throws {@linkcode RateLimitedError} when none comes within
   * `rate.maxWaitMs`.
   */
  take(rate: RateLimit, now: number): number {
    const turn = gcraTurn({
      tat: this.#tat.get(rate.key) ?? 0,
      now,
      periodMs: 1000 / rate.perSecond,
      maxWaitMs: rate.maxWaitMs,
    });
    if ("retryAfterMs" in turn) throw new RateLimitedError(rate.key, turn.retryAfterMs);
    this.#tat.set(rate.key, turn.tat);
    if (this.#tat.size >= this.#sweepAt) this.#sweep(now);
    return turn.waitMs;
  }

  /** Forgets the keys whose state has passed (they would pass at once). */
  #sweep(now: number): void {
    for (const [key, tat] of this.#tat) if (tat <= now) this.#tat.delete(key);
    this.#sweepAt = Math.max(SWEEP_AT, 2 * this.#tat.size);
  }

  /** The keys with a state kept, for tests of the sweep. */
  get size(): number {
    return this.#tat.size;
  }

  /** Forgets every state. */
  clear(): void {
    this.#tat.clear();
  }
}
