import { type AcquireOptions, type Limiter, type RateLimit, type Slot, slotOf } from "./limiter.ts";
import { LocalRates } from "./local_rates.ts";
import { AdaptiveLimits } from "./adaptive_limits.ts";

/** A {@linkcode Limiter} that counts in this process's memory. */
export class LocalLimiter implements Limiter {
  #counts = new Map<string, number>();
  #rates = new LocalRates();
  /** The adaptive limits of this process's hosts. */
  readonly adaptive: AdaptiveLimits = new AdaptiveLimits();
  /** The group of each host that holds slots. */
  #groupOf = new Map<string, string>();
  #groupCounts = new Map<string, number>();

  /**
   * Takes a slot unless the host is at `limit` or its group at
   * `group.limit` (0 or less: unlimited), or at its adaptive limit when
   * `adaptive` is given, with a turn under `rate` when given (a slot
   * without a turn is not taken).
   */
  acquire(
    host: string,
    limit: number,
    { group, rate, adaptive }: AcquireOptions = {},
  ): Promise<Slot | null> {
    const cap = adaptive ? this.adaptive.limit(host, { min: adaptive.min, max: limit }) : limit;
    if (!this.#take(host, cap, group)) return Promise.resolve(null);
    let waitMs = 0;
    try {
      if (rate) waitMs = this.#rates.take(rate, Date.now());
    } catch (err) {
      this.#release(host);
      return Promise.reject(err);
    }
    return Promise.resolve(slotOf(host, () => this.#release(host), waitMs));
  }

  /** Takes a turn under `rate` for a request on an open connection. */
  admit(_host: string, rate: RateLimit): Promise<number> {
    try {
      return Promise.resolve(this.#rates.take(rate, Date.now()));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  #take(host: string, limit: number, group: AcquireOptions["group"]): boolean {
    const n = this.#counts.get(host) ?? 0;
    if (limit > 0 && n >= limit) return false;
    const name = n > 0 ? this.#groupOf.get(host) : group?.name;
    if (name !== undefined) {
      const g = this.#groupCounts.get(name) ?? 0;
      const cap = group?.name === name ? group.limit : 0;
      if (cap > 0 && g >= cap) return false;
      this.#groupCounts.set(name, g + 1);
      this.#groupOf.set(host, name);
    }
    this.#counts.set(host, n + 1);
    return true;
  }

  /** Gives back one slot of `host` and of its group. */
  #release(host: string): void {
    const n = this.#counts.get(host) ?? 0;
    if (n <= 0) return;
    const name = this.#groupOf.get(host);
    if (name !== undefined) {
      const g = (this.#groupCounts.get(name) ?? 1) - 1;
      if (g <= 0) this.#groupCounts.delete(name);
      else this.#groupCounts.set(name, g);
    }
    if (n <= 1) {
      this.#counts.delete(host);
      this.#groupOf.delete(host);
    } else this.#counts.set(host, n - 1);
  }

  /** The open connections to `host` counted here. */
  count(host: string): Promise<number> {
    return Promise.resolve(this.#counts.get(host) ?? 0);
  }

  /** The open connections of the members of group `name` counted here. */
  groupCount(name: string): number {
    return this.#groupCounts.get(name) ?? 0;
  }

  /** Forgets every count. */
  close(): Promise<void> {
    this.#counts.clear();
    this.#groupOf.clear();
    this.#groupCounts.clear();
    this.#rates.clear();
    return Promise.resolve();
  }
}
