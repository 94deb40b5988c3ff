/**
 * {@linkcode withTimeout}: a promise bounded in time.
 *
 * @module
 */

/**
 * Settles as `promise` does, or rejects with `timeoutError()` once `ms`
 * milliseconds have passed first. The timer is cleared either way.
 *
 * @example
 * ```ts
 * import { withTimeout } from "./with_timeout.ts";
 * await withTimeout(Promise.resolve(1), 100, () => new Error("Timed out")); // 1
 * ```
 */
export function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  timeoutError: () => Error,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(timeoutError()), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
