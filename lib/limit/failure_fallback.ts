/**
 * {@linkcode FailureFallback}: what the Redis limiter grants while Redis
 * cannot decide, by the failure mode: `"closed"` refuses with
 * {@linkcode LimiterUnavailableError}, `"open"` grants uncounted slots,
 * `"local"` grants while this process holds fewer than the limit (and fewer
 * than the group's limit for its group), counted in Redis from the next sync.
 *
 * @module
 */

import type { FailureMode } from "./redis_config.ts";
import type { HostLedger } from "./host_ledger.ts";
import type { RedisKeyNames } from "./redis_key_names.ts";
import type { PendingAcquire } from "./acquire_calls.ts";
import { LimiterUnavailableError, type RateLimit } from "./limiter.ts";
import { LocalRates } from "./local_rates.ts";

/** Options of {@linkcode FailureFallback}. */
export interface FailureFallbackOptions {
  /** The failure mode. */
  mode: FailureMode;
  /** This worker's accounting. */
  ledger: HostLedger;
  /** The keys' names (with the group of each host). */
  keys: RedisKeyNames;
  /** Forgets a host that holds nothing and that Redis agrees on. */
  collect: (host: string) => void;
}

/** Decides acquires by the failure mode while Redis cannot. */
export class FailureFallback {
  #o: FailureFallbackOptions;
  /** The rates of mode `"local"`: this process's own. */
  #rates = new LocalRates();

  /** Creates the fallback. */
  constructor(options: FailureFallbackOptions) {
    this.#o = options;
  }

  /**
   * Whether a slot of `host` under `limit` (and `groupLimit` for its group;
   * -1: none) is granted; throws {@linkcode LimiterUnavailableError} with
   * `cause` (`null`: none known) in failure mode `"closed"`.
   */
  admit(host: string, limit: number, cause: unknown, groupLimit = -1): boolean {
    const { mode, ledger, keys } = this.#o;
    if (mode === "open") {
      ledger.admitUncounted(host);
      return true;
    }
    if (mode === "local") {
      const group = keys.groupOf.get(host);
      const inGroup = (h: string) => keys.groupOf.get(h) === group;
      const admitted = (groupLimit <= 0 || ledger.localCount(inGroup) < groupLimit) &&
        ledger.admitLocal(host, limit);
      if (!admitted) this.#o.collect(host);
      return admitted;
    }
    this.#o.collect(host);
    throw new LimiterUnavailableError(
      "Redis is unavailable, so the connection limit cannot be checked",
      cause === null ? undefined : { cause },
    );
  }

  /**
   * The wait for a turn under `rate` (ms; 0: now): in mode `"open"` every
   * request has one, in mode `"local"` this process's own rate decides
   * (throwing `RateLimitedError` when over it), and in mode `"closed"` it
   * throws {@linkcode LimiterUnavailableError} with `cause`.
   */
  turn(rate: RateLimit | undefined, cause: unknown): number {
    const { mode } = this.#o;
    if (mode === "closed") {
      throw new LimiterUnavailableError(
        "Redis is unavailable, so the request rate cannot be checked",
        cause === null ? undefined : { cause },
      );
    }
    return rate && mode === "local" ? this.#rates.take(rate, Date.now()) : 0;
  }

  /**
   * A slot of `host` (or, for `slot` false, a turn alone) decided by the
   * failure mode: `false` when refused by the limit, else the wait for the
   * turn under `rate`. Throws as {@linkcode admit} and {@linkcode turn} do.
   */
  grant(
    host: string,
    ask: Omit<PendingAcquire, "resolve" | "reject">,
    cause: unknown,
  ): number | false {
    if (!ask.slot) return this.turn(ask.rate, cause);
    // A turn is taken first: a refusal by the rate then holds no slot.
    const wait = ask.rate && this.#o.mode === "local" ? this.turn(ask.rate, cause) : 0;
    return this.admit(host, ask.limit, cause, ask.groupLimit) && wait;
  }

  /** Settles `acquire` by the failure mode, Redis having failed with `cause`. */
  decide(host: string, acquire: PendingAcquire, cause: unknown): void {
    try {
      acquire.resolve(this.grant(host, acquire, cause));
    } catch (error) {
      acquire.reject(error);
    }
  }
}
