/**
 * {@linkcode AdaptiveLimits}: the adaptive limits of the hosts one process
 * sends to, each a controller of `adaptive_limit.ts` fed with the answers
 * of the host's requests.
 *
 * @module
 */

import {
  type AdaptiveReason,
  type AdaptiveState,
  effectiveLimit,
  initialState,
  lastReason,
  roll,
  sample,
} from "./adaptive_limit.ts";

/**
 * The ceiling of a host whose static limit is 0 (unlimited) when its limit
 * adapts: an adaptive limit needs one.
 */
export const UNLIMITED_CEILING = 1000;

/** One answer (or failure) of a request to a host, as the engine sees it. */
export interface HostSample {
  /** Time from sending the request to its response head (or to its failure), in ms. */
  latencyMs: number;
  /** A 429 or 503, a connect error, a timeout or a reset before the first byte. */
  dropped: boolean;
  /** The host's requests in flight from this process, this one included. */
  inflight: number;
}

/** The bounds of an adaptive limit. */
export interface AdaptiveBoundsOf {
  /** The floor, 1 or more. */
  min: number;
  /** The ceiling: the host's static limit; 0 (unlimited) is {@linkcode UNLIMITED_CEILING}. */
  max: number;
}

/** A host's adaptive limit as the admin API and metrics show it. */
export interface AdaptiveView {
  /** The limit enforced now. */
  limit: number;
  /** Why it last changed. */
  reason: AdaptiveReason;
  /** The measured no-load latency, in ms; 0 until measured. */
  noLoadMs: number;
}

/** The adaptive limits a limiter keeps, in this process or for a fleet. */
export interface AdaptiveSource {
  /** Takes in an answer (or failure) of a request to `host`, whose limit adapts within `bounds`. */
  observe(host: string, sample: HostSample, bounds: AdaptiveBoundsOf): void;
  /** The host's adaptive limit as last known; `undefined` when it has none. */
  view(host: string): AdaptiveView | undefined;
  /** Set by the owner to hear of each change of a host's limit. */
  onChange?: (host: string, view: AdaptiveView) => void;
  /** The hosts with an adaptive limit known here. */
  hosts(): Iterable<string>;
  /** Forgets hosts not heard of for a while; called now and then with the time. */
  sweep?(now: number): void;
}

/**
 * The floor and ceiling a controller runs with: the floor 1 or more, the
 * ceiling the static limit ({@linkcode UNLIMITED_CEILING} for 0), at least
 * the floor.
 */
export function adaptiveBounds(bounds: AdaptiveBoundsOf): AdaptiveBoundsOf {
  const min = Math.max(1, Math.floor(bounds.min));
  return { min, max: Math.max(min, Math.floor(bounds.max > 0 ? bounds.max : UNLIMITED_CEILING)) };
}

/**
 * The time in ms since epoch, to the fraction: samples are placed by their
 * latency (from `performance.now()`), so a whole-ms clock could place a
 * request sent after a window opened before it.
 */
function clock(): number {
  return performance.timeOrigin + performance.now();
}

/** Hosts not heard of for this long are forgotten (their next request starts afresh). */
const FORGET_MS = 10 * 60_000;

/** The adaptive limits of one process, by host. */
export class AdaptiveLimits implements AdaptiveSource {
  #states = new Map<string, AdaptiveState>();
  #seen = new Map<string, number>();
  #sweptAt = 0;
  /** Called when a host's limit changes, with why. */
  onChange?: (host: string, view: AdaptiveView) => void;

  /** The state of `host` within `bounds` at `now`, created at its floor when new. */
  #state(host: string, bounds: AdaptiveBoundsOf, now: number): AdaptiveState {
    const { min, max } = adaptiveBounds(bounds);
    this.#seen.set(host, now);
    let state = this.#states.get(host);
    if (!state) this.#states.set(host, state = initialState({ min, max, now }));
    else if (state.min !== min || state.max !== max) {
      // The rules changed: the same controller within the new bounds.
      this.#states.set(host, state = { ...state, min, max });
    }
    return state;
  }

  /** The limit of `host` to enforce now, within `bounds`. */
  limit(host: string, bounds: AdaptiveBoundsOf, now = clock()): number {
    return effectiveLimit(this.#state(host, bounds, now));
  }

  /** Takes in an answer (or failure) of a request to `host` and moves its limit when a window closes. */
  observe(host: string, s: HostSample, bounds: AdaptiveBoundsOf, now = clock()): void {
    const before = this.#state(host, bounds, now);
    const sampled = sample(before, { ...s, now });
    const { state, reason } = roll(sampled, now);
    this.#states.set(host, state);
    if (reason !== "wait" && reason !== "hold" && this.onChange) {
      this.onChange(host, this.view(host)!);
    }
  }

  /** The adaptive limit of `host`, if it has one. */
  view(host: string): AdaptiveView | undefined {
    const state = this.#states.get(host);
    if (!state) return undefined;
    return { limit: effectiveLimit(state), reason: lastReason(state), noLoadMs: state.noLoadMs };
  }

  /** The hosts with a controller here. */
  hosts(): Iterable<string> {
    return this.#states.keys();
  }

  /** Forgets hosts not heard of for ten minutes (looking once a minute). */
  sweep(now: number): void {
    if (now - this.#sweptAt < 60_000) return;
    this.#sweptAt = now;
    for (const [host, seen] of this.#seen) {
      if (now - seen < FORGET_MS) continue;
      this.#seen.delete(host);
      this.#states.delete(host);
    }
  }
}
