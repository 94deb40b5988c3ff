/**
 * Request rates: the Generic Cell Rate Algorithm (GCRA, ITU-T I.371's
 * virtual scheduling form) over one number of state, the theoretical arrival
 * time, and the parsing of rates written as `10/s`, `600/m` or `3600/h`.
 * Pure: the time is always given, so the same arithmetic can run in a Redis
 * script on Redis time.
 *
 * @module
 */

/** Options of {@linkcode gcraCheck}. */
export interface GcraOptions {
  /**
   * The theoretical arrival time (TAT) kept for the host, in milliseconds;
   * 0 (or any time not after `now`) for a host with no recent requests.
   */
  tat: number;
  /** The current time, in milliseconds. */
  now: number;
  /** The emission interval, `1000 / rate` milliseconds. */
  periodMs: number;
  /**
   * Requests that may pass at once after a quiet spell, a whole number; 1
   * (the default) spaces every request `periodMs` apart. A fraction is
   * rounded down, and values under 1 count as 1.
   */
  burst?: number;
}

/** The answer of {@linkcode gcraCheck}. */
export interface GcraResult {
  /** Whether the request may pass now. */
  allowed: boolean;
  /** The TAT to keep: moved on by one period when allowed, unchanged when not. */
  tat: number;
  /**
   * 0 when allowed; otherwise the whole milliseconds after which the same
   * request would be allowed (at `now + retryAfterMs` it is, one millisecond
   * earlier it is not, for whole-millisecond times).
   */
  retryAfterMs: number;
}

/**
 * The grid of GCRA's times, 2^-10 ms (about a microsecond). Doubles hold
 * every multiple of it below 2^43 ms (the year 2248) exactly, so that sums
 * of times and periods on it never round, and the bound below holds over
 * any length of saturation instead of drifting.
 */
const GRID_MS = 2 ** -10;

/** `ms` on the grid, rounded with `round`. */
function onGrid(ms: number, round: (x: number) => number): number {
  return round(ms / GRID_MS) * GRID_MS;
}

/**
 * Checks one request against a rate. Over any span of time `T`
 * milliseconds, ends included, at most `T / periodMs + burst` requests are
 * allowed. The period is rounded up to the microsecond grid of the times
 * (so 1000/s runs at most 0.1% slow, 10/s at most 0.001%) and `now` down.
 * Throws a `RangeError` unless `periodMs` is more than 0.
 *
 * @example
 * ```ts
 * import { gcraCheck, parseRate } from "./gcra.ts";
 * const periodMs = 1000 / parseRate("10/s"); // 100
 * let r = gcraCheck({ tat: 0, now: 5_000, periodMs, burst: 2 }); // allowed
 * r = gcraCheck({ tat: r.tat, now: 5_000, periodMs, burst: 2 }); // allowed
 * r = gcraCheck({ tat: r.tat, now: 5_000, periodMs, burst: 2 });
 * // { allowed: false, tat: 5200, retryAfterMs: 100 }
 * ```
 */
export function gcraCheck({ tat, now, periodMs, burst = 1 }: GcraOptions): GcraResult {
  if (!(periodMs > 0 && periodMs < Infinity)) {
    throw new RangeError(`The period must be more than 0 ms, not ${periodMs}`);
  }
  const period = onGrid(periodMs, Math.ceil);
  const t = onGrid(now, Math.floor);
  const last = onGrid(tat, Math.ceil);
  // The earliest time at which one more request conforms.
  const allowedAt = last - (Math.max(1, Math.floor(burst)) - 1) * period;
  if (t >= allowedAt) {
    return { allowed: true, tat: Math.max(last, t) + period, retryAfterMs: 0 };
  }
  // Both on the grid, so the difference is exact.
  return { allowed: false, tat, retryAfterMs: Math.ceil(allowedAt - t) };
}

/** The answer of {@linkcode gcraTurn}. */
export type GcraTurn =
  | {
    /** A turn is taken: now (0) or after this many ms. */
    waitMs: number;
    /** The TAT to keep. */
    tat: number;
  }
  | {
    /** No turn within the wait allowed: the next comes after this many ms. */
    retryAfterMs: number;
  };

/**
 * Takes the next turn under a rate of one request per `periodMs` (a burst
 * of 1), waiting for it up to `maxWaitMs`: a request that may pass now
 * takes it at once; one whose turn comes within `maxWaitMs` takes that
 * turn (the TAT moves on, so later requests line up behind it); else none
 * is taken. The same arithmetic as `ACQUIRE_LUA`'s, on Redis time.
 *
 * @example
 * ```ts
 * import { gcraTurn } from "./gcra.ts";
 * const first = gcraTurn({ tat: 0, now: 1000, periodMs: 100, maxWaitMs: 150 });
 * // { waitMs: 0, tat: 1100 }
 * const second = gcraTurn({ tat: 1100, now: 1000, periodMs: 100, maxWaitMs: 150 });
 * // { waitMs: 100, tat: 1200 }
 * gcraTurn({ tat: 1200, now: 1000, periodMs: 100, maxWaitMs: 150 });
 * // { retryAfterMs: 200 }
 * ```
 */
export function gcraTurn(
  { tat, now, periodMs, maxWaitMs }: Omit<GcraOptions, "burst"> & { maxWaitMs: number },
): GcraTurn {
  const first = gcraCheck({ tat, now, periodMs });
  if (first.allowed) return { waitMs: 0, tat: first.tat };
  if (first.retryAfterMs > maxWaitMs) return { retryAfterMs: first.retryAfterMs };
  const later = gcraCheck({ tat, now: now + first.retryAfterMs, periodMs });
  return { waitMs: first.retryAfterMs, tat: later.tat };
}

/** A rate that cannot be read; the message says what is expected. */
export class RateError extends Error {
  /** The text as it was given. */
  readonly input: string;
  /** Creates the error for `input`. */
  constructor(input: string, problem: string) {
    super(`Invalid rate "${input}": ${problem}`);
    this.name = "RateError";
    this.input = input;
  }
}

const SECONDS_PER_UNIT: Record<string, number> = { s: 1, m: 60, h: 3600 };

/**
 * Reads a rate written as a count per unit, `10/s`, `600/m` or `3600/h`
 * (decimals allowed, as `0.5/s`), and returns it in requests per second.
 * Throws a {@linkcode RateError} for anything else, and for a rate of 0.
 *
 * @example
 * ```ts
 * import { parseRate } from "./gcra.ts";
 * parseRate("10/s"); // 10
 * parseRate("600/m"); // 10
 * parseRate("90/h"); // 0.025
 * ```
 */
export function parseRate(text: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*\/\s*(s|m|h)$/.exec(text.trim());
  if (!m) throw new RateError(text, "expected a count per unit, as 10/s, 600/m or 3600/h");
  const perSecond = Number(m[1]) / SECONDS_PER_UNIT[m[2]];
  if (!(perSecond > 0)) throw new RateError(text, "a rate must be more than 0");
  if (!Number.isFinite(perSecond)) throw new RateError(text, "the count is too large");
  return perSecond;
}

/**
 * Writes a rate in requests per second as {@linkcode parseRate} reads it,
 * in the largest unit that makes the count whole (`10/s`, `30/m`, `90/h`),
 * else per second with a decimal count.
 *
 * @example
 * ```ts
 * import { formatRate } from "./gcra.ts";
 * formatRate(10); // "10/s"
 * formatRate(0.5); // "30/m"
 * formatRate(0.025); // "90/h"
 * ```
 */
export function formatRate(perSecond: number): string {
  for (const unit of ["s", "m", "h"]) {
    const count = perSecond * SECONDS_PER_UNIT[unit];
    // Within rounding of a whole count (0.1/s * 60 is 6.000000000000001).
    const whole = Math.round(count);
    if (whole >= 1 && Math.abs(count - whole) < 1e-9 * whole) return `${whole}/${unit}`;
  }
  return `${Number((perSecond * 3600).toFixed(6))}/h`;
}
