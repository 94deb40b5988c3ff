import type { Limiter } from "./limiter.ts";

/** A {@linkcode Limiter} that counts in this process's memory. */
export class LocalLimiter implements Limiter {
  #counts = new Map<string, number>();

  /** Takes a slot unless the host is at `limit` (0 or less: unlimited). */
  acquire(host: string, limit: number): Promise<boolean> {
    return Promise.resolve(this.tryAcquire(host, limit));
  }

  /** The synchronous form of {@linkcode LocalLimiter.acquire}. */
  tryAcquire(host: string, limit: number): boolean {
    const n = this.#counts.get(host) ?? 0;
    if (limit > 0 && n >= limit) return false;
    this.#counts.set(host, n + 1);
    return true;
  }

  /** Gives back one slot of `host`. */
  release(host: string): void {
    const n = this.#counts.get(host) ?? 0;
    if (n <= 1) this.#counts.delete(host);
    else this.#counts.set(host, n - 1);
  }

  /** The open connections to `host` counted here. */
  count(host: string): Promise<number> {
    return Promise.resolve(this.countSync(host));
  }

  /** The synchronous form of {@linkcode LocalLimiter.count}. */
  countSync(host: string): number {
    return this.#counts.get(host) ?? 0;
  }

  /** Every host with open connections, with its count. */
  entries(): IterableIterator<[string, number]> {
    return this.#counts.entries();
  }

  /** Forgets every count. */
  close(): Promise<void> {
    this.#counts.clear();
    return Promise.resolve();
  }
}
