/**
 * {@linkcode HostGates}: what follows the host's own signals: a pause it
 * asked for with `Retry-After`, its request rate, and its adaptive limit,
 * fed with how its requests went.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import type { Limiter, RateLimit } from "../limit/limiter.ts";
import { RateLimitedError } from "../limit/limiter.ts";
import type { LimitTable } from "../limit/limit_table.ts";
import type { RuleMatch } from "../limit/rules/rule_table.ts";
import { type HostPause, HostPauses } from "../limit/host_pauses.ts";
import { pauseUntil, secondsLeft } from "../limit/retry_after.ts";
import type { ProxyStats } from "../metrics/proxy_stats.ts";
import { HostPausedError } from "./errors.ts";
import { abortableDelay } from "./abortable_delay.ts";

/** Options of {@linkcode HostGates}. */
export interface HostGatesOptions {
  /** Where turns under a rate are taken and pauses told to the fleet. */
  limiter: Limiter;
  /** The rules: a host's own rate, queue timeout and `retry-after-max`. */
  limits: LimitTable;
  /** Counters of pauses and refusals. */
  stats: ProxyStats;
  /** Time a request may wait (for a slot, a pause's end or its turn), in ms. */
  queueTimeout: number;
  /** Longest pause a `Retry-After` may ask for, in ms; 0 honours none. */
  retryAfterMax: number;
  /** New requests or tunnels per second each host may be sent; 0: no rate. */
  maxRate: number;
  /** Whether hosts' limits adapt unless their rule says otherwise. */
  adaptive: boolean;
  /** The floor of an adaptive limit. */
  adaptiveMin: number;
  /** The requests in flight to a host from this process. */
  busy: (key: string) => number;
  /** Where a pause's start is logged. */
  logger: Logger;
}

/** The pauses and rates of the hosts a proxy sends to. */
export class HostGates {
  #o: HostGatesOptions;
  #pauses = new HostPauses();
  #adaptive: { readonly min: number };

  /** Creates the gates. */
  constructor(options: HostGatesOptions) {
    this.#o = options;
    this.#adaptive = Object.freeze({ min: Math.max(1, options.adaptiveMin) });
    options.limiter.adaptive.onChange = (host, view) => {
      options.logger.debug("Adaptive limit of {host} is now {limit} ({reason})", {
        host,
        limit: view.limit,
        reason: view.reason,
      });
    };
  }

  /** What an acquire for a host of `match` names when its limit adapts; else `undefined`. */
  adaptiveOf(match: Readonly<RuleMatch>): { readonly min: number } | undefined {
    return match.adaptive ?? this.#o.adaptive ? this.#adaptive : undefined;
  }

  /** Whether the limit of `key` adapts: only then are its latencies taken ({@linkcode observe}). */
  adapts(key: string): boolean {
    return this.adaptiveOf(this.#o.limits.lookup(key)) !== undefined;
  }

  /**
   * The limit of `key` in force: its adaptive limit as last known when it
   * adapts, else the rule's.
   */
  limitOf(key: string, match: Readonly<RuleMatch>): number {
    if (!this.adaptiveOf(match)) return match.limit;
    return this.#o.limiter.adaptive.view(key)?.limit ?? this.#adaptive.min;
  }

  /**
   * Takes in how a request to `key` went, for its adaptive limit: the time
   * to its response head (plain HTTP) or its connect time (tunnels), and
   * whether it was dropped (429 or 503, connect error, timeout or reset
   * before the first byte).
   */
  observe(key: string, latencyMs: number, dropped: boolean): void {
    const match = this.#o.limits.lookup(key);
    const adaptive = this.adaptiveOf(match);
    if (!adaptive) return;
    this.#o.limiter.adaptive.observe(
      key,
      { latencyMs, dropped, inflight: this.#o.busy(key) },
      { min: adaptive.min, max: match.limit },
    );
  }

  /**
   * Takes in a response of `status` from `key` with its `Retry-After` value:
   * a 429 or 503 that asks for a pause (capped by the host's
   * `retry-after-max`) pauses the host, here and in the fleet. Returns
   * whether a pause started or grew.
   */
  notePause(key: string, status: number, retryAfter: string | undefined): boolean {
    const now = Date.now();
    const max = this.#o.limits.lookup(key).retryAfterMax ?? this.#o.retryAfterMax;
    const until = pauseUntil({ status, retryAfter, now, max });
    if (until === undefined || !this.#pauses.pause(key, until, status)) return false;
    this.#o.limiter.pause?.(key, until);
    this.#o.stats.onPause(status);
    this.#o.logger.info(
      "{host} answered {status} with Retry-After: new requests to it wait or are refused for {seconds} s",
      { host: key, status, seconds: secondsLeft(until, now) },
    );
    return true;
  }

  /** Takes in a pause the fleet learnt of (no status of its own). */
  pausedByFleet(key: string, until: number): void {
    this.#pauses.pause(key, until, 0);
  }

  /** Whether `key` is paused now. */
  isPaused(key: string): boolean {
    return this.#pauses.get(key, Date.now()) !== undefined;
  }

  /** Every pause running now, by host. */
  running(): Map<string, HostPause> {
    return this.#pauses.running(Date.now());
  }

  /**
   * While `key` is paused, waits for the pause to end when the host's queue
   * timeout reaches past it, else throws {@linkcode HostPausedError}.
   */
  async waitOutPause(key: string, signal?: AbortSignal): Promise<void> {
    const now = Date.now();
    const pause = this.#pauses.get(key, now);
    if (!pause) return;
    const timeout = this.#o.limits.lookup(key).queueTimeout ?? this.#o.queueTimeout;
    if (timeout < pause.until - now) {
      this.#o.stats.onRefused(key, "paused");
      throw new HostPausedError(key, pause.until, pause.status, secondsLeft(pause.until, now));
    }
    await abortableDelay(pause.until - now, signal);
  }

  /**
   * The rate requests to `key` are held to (its rule's, else the process's),
   * with the wait for a turn that the host's queue timeout allows.
   */
  rateOf(key: string, match: Readonly<RuleMatch>): RateLimit | undefined {
    const perSecond = match.rate?.perSecond ?? this.#o.maxRate;
    if (!(perSecond > 0)) return undefined;
    const group = match.rate?.group;
    return {
      key: group === undefined ? key : `g:${group}`,
      perSecond,
      maxWaitMs: match.queueTimeout ?? this.#o.queueTimeout,
    };
  }

  /** Counts `err` when it is a refusal by the rate of `key`; returns it. */
  refused(key: string, err: unknown): unknown {
    if (err instanceof RateLimitedError) this.#o.stats.onRefused(key, "rate");
    return err;
  }

  /**
   * Takes a turn under the rate of `key`, for a request that needs no new
   * slot: `undefined` at once when the host has no rate (no promise to wait
   * on), else a promise that settles when the turn comes. It rejects with
   * `RateLimitedError` when no turn comes within the host's queue timeout.
   */
  turn(key: string, signal?: AbortSignal): Promise<void> | undefined {
    const rate = this.rateOf(key, this.#o.limits.lookup(key));
    return rate && this.#takeTurn(key, rate, signal);
  }

  async #takeTurn(key: string, rate: RateLimit, signal?: AbortSignal): Promise<void> {
    let wait: number;
    try {
      wait = await this.#o.limiter.admit(key, rate);
    } catch (err) {
      throw this.refused(key, err);
    }
    if (wait > 0) await abortableDelay(wait, signal);
  }
}
