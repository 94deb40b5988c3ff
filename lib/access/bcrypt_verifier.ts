/**
 * bcrypt checks on a worker thread, one at a time, with a bounded queue, so
 * that a slow check never stalls the proxy's event loop.
 *
 * @module
 */

import bcrypt from "bcryptjs";

/** The bcryptjs the worker loads: the version pinned in deno.json. */
export const BCRYPTJS = "npm:bcryptjs@3.0.3";

// A worker from a blob needs no read permission for its own source.
const WORKER_SOURCE = `import bcrypt from "${BCRYPTJS}";
self.onmessage = ({ data: { id, password, hash } }) => {
  let ok = false;
  try { ok = bcrypt.compareSync(password, hash); } catch { /* matches nothing */ }
  self.postMessage({ id, ok });
};`;
let workerUrl: string | undefined;

/** Checks passwords against bcrypt hashes off the main thread. */
export class BcryptVerifier {
  readonly #maxWaiting: number;
  readonly #pending = new Map<number, (ok: boolean | undefined) => void>();
  #worker: Worker | undefined;
  #workerFailed = false;
  #nextId = 0;

  /** A verifier that refuses new checks while `maxWaiting` are under way. */
  constructor(maxWaiting: number) {
    this.#maxWaiting = maxWaiting;
  }

  /**
   * Whether `password` matches `hash`; `undefined` when too many checks wait
   * or the worker failed. The worker starts with the first check and ends
   * when none is left. Where no worker can run, the check runs on the main
   * thread in slices.
   */
  verify(password: string, hash: string): Promise<boolean | undefined> {
    if (this.#pending.size >= this.#maxWaiting) return Promise.resolve(undefined);
    if (this.#workerFailed) return bcrypt.compare(password, hash).catch(() => false);
    const worker = this.#worker ??= this.#start();
    const id = this.#nextId++;
    return new Promise((resolve) => {
      this.#pending.set(id, resolve);
      worker.postMessage({ id, password, hash });
    });
  }

  #start(): Worker {
    workerUrl ??= URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
    const worker = new Worker(workerUrl, { type: "module" });
    worker.onmessage = ({ data }: MessageEvent<{ id: number; ok: boolean }>) =>
      this.#settle(data.id, data.ok);
    worker.onerror = (event) => {
      event.preventDefault();
      this.#workerFailed = true;
      for (const id of [...this.#pending.keys()]) this.#settle(id, undefined);
    };
    return worker;
  }

  #settle(id: number, ok: boolean | undefined): void {
    const resolve = this.#pending.get(id);
    this.#pending.delete(id);
    if (this.#pending.size === 0) {
      this.#worker?.terminate();
      this.#worker = undefined;
    }
    resolve?.(ok);
  }
}
