/** {@linkcode abortableDelay}: a wait that the client leaving cuts short. */

/**
 * Resolves after `ms` milliseconds, or rejects with `signal`'s reason as
 * soon as it aborts (at once when it has already).
 */
export function abortableDelay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const gone = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", gone);
      resolve();
    }, ms);
    signal?.addEventListener("abort", gone, { once: true });
  });
}
