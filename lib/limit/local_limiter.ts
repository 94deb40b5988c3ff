import type { Limiter } from "./limiter.ts";

/** A {@linkcode Limiter} that counts in this process's memory. */
export class LocalLimiter implements Limiter {
  #counts = new Map<string, number>();

  /** Takes a slot unless the host is at `limit` (0 or less: unlimited). */
  acquire(host: string, limit: number): Promise<boolean> {
    const n = this.#counts.get(host) ?? 0;
    if (limit > 0 && n >= limit) return Promise.resolve(false);
    this.#counts.set(host, n + 1);
    return Promise.resolve(true);
  }

  /** Gives back one slot of `host`. */
  release(host: string): void {
    const n = this.#counts.get(host) ?? 0;
    if (n <= 1) this.#counts.delete(host);
    else this.#counts.set(host, n - 1);
  }

  /** The open connections to `host` counted here. */
  count(host: string): Promise<number> {
    return Promise.resolve(this.#counts.get(host) ?? 0);
  }

  /** Forgets every count. */
  close(): Promise<void> {
    this.#counts.clear();
    return Promise.resolve();
  }
}
