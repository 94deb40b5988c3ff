/**
 * An adaptive concurrency limit for one upstream host: a gradient controller
 * after Envoy's adaptive concurrency filter, guarded as Vector's Adaptive
 * Request Concurrency and Netflix's AIMD limit are.
 *
 * - The no-load latency is measured, not guessed: the limit drops to its
 *   floor until a few requests sent at that concurrency have answered
 *   (Envoy's minRTT window), at start and again every 30 to 37.5 seconds
 *   (a jittered interval, so hosts and fleets do not probe in step). A
 *   window that ran at the floor anyway measures it for free, and a window
 *   faster than the measure lowers it.
 * - Each window then moves the limit by the gradient `1.25 × noLoad /
 *   latency` (clamped to 0.5 to 2) plus a headroom of the square root of the
 *   result, as Envoy does: a host that answers as fast as when idle grows,
 *   a host whose answers queue shrinks to about 1.25 times the concurrency
 *   it serves without queueing, plus the square root of that.
 * - Growth needs evidence: a window closes only with at least 10 answers
 *   sent in it, and the limit grows only when the host's in-flight count
 *   reached the limit during the window (Vector's "reached limit"), so a
 *   lightly used host does not drift up to its ceiling.
 * - Drops (429 or 503, connect errors, timeouts, resets before the first
 *   byte) close the window at once and halve the limit. Their latency is not
 *   a latency sample: a timeout or an instant 503 says nothing about how
 *   fast the host serves, and treating it as one is what lets a steady
 *   timeout pin Netflix's Gradient2 at its maximum (concurrency-limits
 *   issues 137 and 176). A drop of a request sent before the last back-off
 *   was already answered by it and is ignored, so one burst halves once.
 * - Only answers to requests sent since the window opened are latency
 *   samples: older ones were sent under another limit.
 * - The limit stays within its floor and its ceiling (the static limit).
 *
 * The state is a fixed record of numbers and every step is plain arithmetic
 * (`+ - * / % floor sqrt min max`), so that a Redis script can run the same
 * algorithm on the same state under a host's hash tag.
 *
 * @module
 */

/** The tuning of the controller; see {@linkcode ADAPTIVE_TUNING}. */
export interface AdaptiveTuning {
  /** The shortest window, in milliseconds. */
  readonly windowMs: number;
  /** Latency samples a window (or a no-load measure) needs before it closes. */
  readonly minSamples: number;
  /** How much slower than no-load a host may answer before the limit shrinks. */
  readonly tolerance: number;
  /** The smallest factor one window applies to the limit on latency. */
  readonly minGradient: number;
  /** The largest factor one window applies to the limit on latency. */
  readonly maxGradient: number;
  /** The factor applied to the limit on a drop. */
  readonly backoff: number;
  /** The interval between no-load measures, in milliseconds, before jitter. */
  readonly probeMs: number;
  /** The largest jitter added to `probeMs`, as a fraction of it. */
  readonly probeJitter: number;
  /** Added to both latencies of the gradient, so that sub-millisecond noise is not overload. */
  readonly latencyFloorMs: number;
}

/** The values the controller runs with; a Redis script uses the same. */
export const ADAPTIVE_TUNING: AdaptiveTuning = Object.freeze({
  windowMs: 250,
  minSamples: 10,
  tolerance: 1.25,
  minGradient: 0.5,
  maxGradient: 2,
  backoff: 0.5,
  probeMs: 30_000,
  probeJitter: 0.25,
  latencyFloorMs: 1,
});

/** Why the limit last changed, or what a window did. */
export type AdaptiveReason =
  | "probe"
  | "restore"
  | "grow"
  | "backoff-drop"
  | "backoff-latency"
  | "hold"
  | "wait";

/** The reasons by their code in {@linkcode AdaptiveState.reason}. */
export const ADAPTIVE_REASONS: readonly AdaptiveReason[] = Object.freeze([
  "probe",
  "restore",
  "grow",
  "backoff-drop",
  "backoff-latency",
  "hold",
  "wait",
]);

/**
 * The adaptive state of one host: numbers only, times in milliseconds on
 * the clock that the caller passes as `now`.
 */
export interface AdaptiveState {
  /** The floor of the limit. */
  readonly min: number;
  /** The ceiling of the limit: the host's static limit. */
  readonly max: number;
  /** The limit, with its fraction; {@linkcode effectiveLimit} rounds it down. */
  readonly limit: number;
  /** When the current window opened. */
  readonly windowStart: number;
  /** Latency samples in the window (answers to requests sent since it opened). */
  readonly samples: number;
  /** The sum of their latencies. */
  readonly latencySum: number;
  /** Drops in the window. */
  readonly drops: number;
  /** The highest in-flight count seen in the window. */
  readonly peakInflight: number;
  /** The measured no-load latency; 0 until the first measure. */
  readonly noLoadMs: number;
  /** 1 while the window measures the no-load latency at the floor, else 0. */
  readonly probing: number;
  /** The limit to return to when the measure ends. */
  readonly savedLimit: number;
  /** When the next no-load measure is due. */
  readonly probeAt: number;
  /** When the limit last backed off on drops. */
  readonly backoffAt: number;
  /** The code in {@linkcode ADAPTIVE_REASONS} of the last change of the limit. */
  readonly reason: number;
}

/** Options of {@linkcode initialState}. */
export interface AdaptiveBounds {
  /** The floor (1 or more). */
  min: number;
  /** The ceiling, the static limit (at least `min`). */
  max: number;
  /** The current time. */
  now: number;
}

/** One answer (or failure) of an upstream request, for {@linkcode sample}. */
export interface AdaptiveSample {
  /** Time from sending the request to its response head, or to its failure. */
  latencyMs: number;
  /** A 429 or 503, a connect error, a timeout or a reset before the first byte. */
  dropped: boolean;
  /** The host's requests in flight as the sample is taken, this one included. */
  inflight: number;
  /** The current time. */
  now: number;
}

/** The answer of {@linkcode roll}. */
export interface AdaptiveRoll {
  /** The new state. */
  state: AdaptiveState;
  /**
   * What the roll did: `"wait"` when the window is not over (the state is
   * the same object), `"hold"` when it closed without changing the limit,
   * else the reason of the change.
   */
  reason: AdaptiveReason;
}

const code = (reason: AdaptiveReason): number => ADAPTIVE_REASONS.indexOf(reason);

/** A number in [0, 1) drawn from `now` (two MINSTD steps; exact in doubles and in Lua). */
function jitterOf(now: number): number {
  const m = 2147483647;
  let x = Math.floor(Math.abs(now)) % m;
  x = (x * 48271) % m;
  x = (x * 48271) % m;
  return x / m;
}

/** When the no-load measure after one at `now` is due. */
function nextProbe(now: number): number {
  const { probeMs, probeJitter } = ADAPTIVE_TUNING;
  return now + Math.floor(probeMs * (1 + probeJitter * jitterOf(now)));
}

/** `state` with a new, empty window opened at `now` and the given changes. */
function openWindow(
  state: AdaptiveState,
  now: number,
  changes: Partial<AdaptiveState>,
): AdaptiveState {
  return {
    ...state,
    windowStart: now,
    samples: 0,
    latencySum: 0,
    drops: 0,
    peakInflight: 0,
    ...changes,
  };
}

/**
 * The state of a host that starts adapting at `now`: its limit at the floor
 * while it measures the no-load latency.
 *
 * @example
 * ```ts
 * import { effectiveLimit, initialState } from "./adaptive_limit.ts";
 * const state = initialState({ min: 1, max: 64, now: Date.now() });
 * effectiveLimit(state); // 1
 * ```
 */
export function initialState({ min, max, now }: AdaptiveBounds): AdaptiveState {
  const floor = Math.max(1, Math.floor(min));
  const ceiling = Math.max(floor, Math.floor(max));
  return {
    min: floor,
    max: ceiling,
    limit: floor,
    windowStart: now,
    samples: 0,
    latencySum: 0,
    drops: 0,
    peakInflight: 0,
    noLoadMs: 0,
    probing: 1,
    savedLimit: floor,
    probeAt: now,
    backoffAt: now,
    reason: code("probe"),
  };
}

/**
 * The limit to enforce: the state's limit rounded down, within its floor
 * and ceiling.
 */
export function effectiveLimit(state: AdaptiveState): number {
  return Math.min(state.max, Math.max(state.min, Math.floor(state.limit)));
}

/** The reason of the last change of the limit. */
export function lastReason(state: AdaptiveState): AdaptiveReason {
  return ADAPTIVE_REASONS[state.reason] ?? "hold";
}

/**
 * Adds one answer (or failure) to the current window. Client aborts, the
 * proxy's own refusals and DNS failures are not samples: do not pass them.
 *
 * @example
 * ```ts
 * import { initialState, sample } from "./adaptive_limit.ts";
 * let state = initialState({ min: 1, max: 64, now: 0 });
 * state = sample(state, { latencyMs: 50, dropped: false, inflight: 1, now: 60 });
 * state.samples; // 1
 * ```
 */
export function sample(state: AdaptiveState, s: AdaptiveSample): AdaptiveState {
  const valid = Number.isFinite(s.latencyMs) && s.latencyMs >= 0;
  const sentAt = valid ? s.now - s.latencyMs : s.now;
  const inflight = Number.isFinite(s.inflight) ? s.inflight : 0;
  const peakInflight = Math.max(state.peakInflight, inflight);
  if (s.dropped) {
    // Sent before the last back-off: that back-off already answered it.
    if (sentAt < state.backoffAt) return { ...state, peakInflight };
    return { ...state, drops: state.drops + 1, peakInflight };
  }
  // Sent before the window opened, so under another limit (or not known).
  if (!valid || sentAt < state.windowStart) return { ...state, peakInflight };
  return {
    ...state,
    samples: state.samples + 1,
    latencySum: state.latencySum + s.latencyMs,
    peakInflight,
  };
}

/** Whether the window of `state` may close at `now`. */
function windowDue(state: AdaptiveState, now: number): boolean {
  if (state.drops > 0) return true;
  if (state.samples < ADAPTIVE_TUNING.minSamples) return false;
  return state.probing === 1 || now - state.windowStart >= ADAPTIVE_TUNING.windowMs;
}

/** `"grow"`, `"hold"` or `other`, by how `next` compares with `limit`. */
function direction(limit: number, next: number, other: AdaptiveReason): AdaptiveReason {
  if (next > limit) return "grow";
  return next < limit ? other : "hold";
}

/** Closes a window of the no-load measure: its mean is the new no-load latency. */
function endProbe(state: AdaptiveState, now: number): AdaptiveRoll {
  const probeAt = nextProbe(now);
  if (state.drops > 0) {
    const limit = Math.max(state.min, state.savedLimit * ADAPTIVE_TUNING.backoff);
    const changes = { limit, probing: 0, probeAt, backoffAt: now, reason: code("backoff-drop") };
    return { state: openWindow(state, now, changes), reason: "backoff-drop" };
  }
  const noLoadMs = state.latencySum / state.samples;
  const changes = {
    limit: state.savedLimit,
    noLoadMs,
    probing: 0,
    probeAt,
    reason: code("restore"),
  };
  return { state: openWindow(state, now, changes), reason: "restore" };
}

/** The limit after a window of latency samples, before the floor and ceiling. */
function gradientLimit(state: AdaptiveState, meanMs: number, noLoadMs: number): number {
  const t = ADAPTIVE_TUNING;
  const ratio = t.tolerance * (noLoadMs + t.latencyFloorMs) / (meanMs + t.latencyFloorMs);
  const gradient = Math.min(t.maxGradient, Math.max(t.minGradient, ratio));
  const scaled = state.limit * gradient;
  const next = scaled + Math.sqrt(scaled);
  // Grow only on evidence that the limit was what held the host back.
  const reached = state.peakInflight >= Math.floor(state.limit);
  return next > state.limit && !reached ? state.limit : next;
}

/**
 * Closes the current window if it is over and moves the limit: halved on
 * drops, to the floor when a no-load measure is due, back when it is done,
 * else by the latency gradient. A window is over when it holds a drop, or
 * at least {@linkcode ADAPTIVE_TUNING}`.minSamples` latency samples and
 * (except while measuring) has lasted `windowMs`. Call it after each
 * {@linkcode sample}; until then it answers `"wait"`.
 *
 * @example
 * ```ts
 * import { effectiveLimit, initialState, roll, sample } from "./adaptive_limit.ts";
 * let state = initialState({ min: 1, max: 64, now: 0 });
 * for (let t = 50; t <= 500; t += 50) {
 *   state = sample(state, { latencyMs: 50, dropped: false, inflight: 1, now: t });
 * }
 * const { state: next, reason } = roll(state, 500); // reason: "restore"
 * effectiveLimit(next); // 1, and it grows from there
 * ```
 */
export function roll(state: AdaptiveState, now: number): AdaptiveRoll {
  if (!windowDue(state, now)) return { state, reason: "wait" };
  if (state.probing === 1) return endProbe(state, now);
  if (state.drops > 0) {
    const limit = Math.max(state.min, state.limit * ADAPTIVE_TUNING.backoff);
    const reason = limit < state.limit ? "backoff-drop" : "hold";
    const last = reason === "hold" ? state.reason : code(reason);
    return { state: openWindow(state, now, { limit, backoffAt: now, reason: last }), reason };
  }
  const meanMs = state.latencySum / state.samples;
  // A window that ran at the floor measured the no-load latency as it went.
  const idle = state.peakInflight <= state.min;
  const noLoadMs = idle || state.noLoadMs <= 0 ? meanMs : Math.min(state.noLoadMs, meanMs);
  const probeAt = idle ? nextProbe(now) : state.probeAt;
  if (now >= probeAt) {
    const changes = {
      limit: state.min,
      savedLimit: state.limit,
      probing: 1,
      reason: code("probe"),
    };
    return { state: openWindow(state, now, changes), reason: "probe" };
  }
  const next = Math.min(state.max, Math.max(state.min, gradientLimit(state, meanMs, noLoadMs)));
  const reason = direction(state.limit, next, "backoff-latency");
  const last = reason === "hold" ? state.reason : code(reason);
  return {
    state: openWindow(state, now, { limit: next, noLoadMs, probeAt, reason: last }),
    reason,
  };
}
