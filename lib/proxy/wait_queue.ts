/**
 * Requests waiting for a slot of their host, first come first served: each
 * host has its own line, a bounded length and a timer per waiter that ends
 * its wait once the whole timeout has passed on the monotonic clock.
 *
 * @module
 */

import type { Upstream } from "./upstream.ts";
import type { Slot } from "../limit/limiter.ts";

/** What a waiter is given: a slot of its host, or an idle connection to it. */
export type Grant = Slot | Upstream;

/** One request in line. */
export interface Waiter {
  /** Plain HTTP: an idle pooled connection serves it as well as a slot. */
  readonly http: boolean;
  /** Its ticket in the fleet's line, when the limiter keeps one. */
  readonly ticket?: string;
  /** Hands it what it waited for. */
  grant(what: Grant): void;
  /** Ends its wait with an error. */
  fail(err: unknown): void;
}

/** Options of {@linkcode WaitQueue.wait}. */
export interface WaitOptions {
  /** Plain HTTP (an idle connection will do). */
  http: boolean;
  /** How long to wait (ms). */
  timeout: number;
  /** The error a wait that ran out ends with, given how long it waited (ms). */
  expired: (waitedMs: number) => unknown;
  /** Aborts the wait: the waiter leaves the line at once. */
  signal?: AbortSignal;
  /** Its ticket in the fleet's line, when the limiter keeps one. */
  ticket?: string;
}

/** The lines of waiting requests, one per host key. */
export class WaitQueue {
  #lines = new Map<string, Waiter[]>();

  /** How many wait for `key`. */
  length(key: string): number {
    return this.#lines.get(key)?.length ?? 0;
  }

  /** The hosts someone waits for. */
  keys(): IterableIterator<string> {
    return this.#lines.keys();
  }

  /** The first in line for `key`. */
  head(key: string): Waiter | undefined {
    return this.#lines.get(key)?.[0];
  }

  /** Joins the line for `key`; resolves with what it is granted. */
  wait(key: string, options: WaitOptions): Promise<Grant> {
    const { promise, resolve, reject } = Promise.withResolvers<Grant>();
    const line = this.#lines.get(key) ?? [];
    this.#lines.set(key, line);
    const onAbort = () => {
      this.remove(key, waiter);
      settle();
      reject(options.signal!.reason);
    };
    const since = performance.now();
    let timer: ReturnType<typeof setTimeout>;
    // A timer may fire a little early: it checks, and waits out the rest.
    const check = () => {
      const waited = performance.now() - since;
      if (waited < options.timeout) {
        timer = setTimeout(check, Math.max(1, Math.ceil(options.timeout - waited)));
        return;
      }
      this.remove(key, waiter);
      waiter.fail(options.expired(waited));
    };
    timer = setTimeout(check, options.timeout);
    const settle = () => {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
    };
    const waiter: Waiter = {
      http: options.http,
      ticket: options.ticket,
      grant: (what) => {
        settle();
        resolve(what);
      },
      fail: (err) => {
        settle();
        reject(err);
      },
    };
    line.push(waiter);
    options.signal?.addEventListener("abort", onAbort, { once: true });
    return promise;
  }

  /** Takes `waiter` out of the line of `key`. */
  remove(key: string, waiter: Waiter): void {
    const line = this.#lines.get(key);
    if (!line) return;
    const i = line.indexOf(waiter);
    if (i >= 0) line.splice(i, 1);
    if (line.length === 0) this.#lines.delete(key);
  }

  /** Whether `waiter` is still in the line of `key`. */
  has(key: string, waiter: Waiter): boolean {
    return this.#lines.get(key)?.includes(waiter) ?? false;
  }

  /** The first plain-HTTP waiter of `key` that `skip` does not rule out, left in line. */
  firstHttp(key: string, skip: (waiter: Waiter) => boolean): Waiter | undefined {
    return this.#lines.get(key)?.find((w) => w.http && !skip(w));
  }

  /** Takes the first plain-HTTP waiter of `key` out of its line. */
  takeHttp(key: string): Waiter | undefined {
    const waiter = this.#lines.get(key)?.find((w) => w.http);
    if (waiter) this.remove(key, waiter);
    return waiter;
  }
}
