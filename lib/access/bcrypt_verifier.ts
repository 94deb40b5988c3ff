/**
 * bcrypt checks on a worker thread, one at a time, shared fairly between
 * client addresses, so that a slow check never stalls the proxy's event
 * loop and a flood from one address cannot crowd out the others.
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

/** Options of a {@linkcode BcryptVerifier}. */
export interface BcryptVerifierOptions {
  /** Checks waiting or under way, in all; default 64. */
  maxWaiting?: number;
  /** Checks waiting or under way for one client; default 8. */
  maxPerClient?: number;
}

interface Check {
  client: string;
  password: string;
  hash: string;
  /** The round in which it runs: clients take turns, one check per round. */
  turn: number;
  resolve: (ok: boolean | undefined) => void;
}

/**
 * Checks passwords against bcrypt hashes off the main thread, one at a
 * time, with clients taking turns: each check of a client runs a round
 * after the client's previous one, and a client with nothing waiting joins
 * the current round, so its check waits for at most one check of every
 * other client. A client holds at most `maxPerClient` checks; when all
 * `maxWaiting` places are taken, a newcomer takes the newest waiting check
 * of the client holding the most, if that client holds at least two more
 * than the newcomer (the displaced check answers `undefined`).
 */
export class BcryptVerifier {
  readonly #maxWaiting: number;
  readonly #maxPerClient: number;
  /** Waiting checks, by turn, then arrival. */
  readonly #waiting: Check[] = [];
  /** Checks waiting or under way per client, and the turn of its last one. */
  readonly #held = new Map<string, { n: number; turn: number }>();
  #round = 0;
  #running: (Check & { id: number }) | undefined;
  #worker: Worker | undefined;
  #workerFailed = false;
  #nextId = 0;
  #checks = 0;

  /** A verifier with these bounds. */
  constructor(options: BcryptVerifierOptions = {}) {
    this.#maxWaiting = options.maxWaiting ?? 64;
    this.#maxPerClient = options.maxPerClient ?? 8;
  }

  /** bcrypt comparisons started so far. */
  get checks(): number {
    return this.#checks;
  }

  /**
   * Whether `password` matches `hash`; `undefined` when `client` (an
   * address, or any key that groups requests) has its share of checks
   * waiting, or the worker failed. The worker starts with the first check
   * and ends when none is left. Where no worker can run, the check runs on
   * the main thread in slices.
   */
  verify(password: string, hash: string, client = ""): Promise<boolean | undefined> {
    const held = this.#held.get(client);
    const n = held?.n ?? 0;
    if (n >= this.#maxPerClient) return Promise.resolve(undefined);
    const size = this.#waiting.length + (this.#running ? 1 : 0);
    if (size >= this.#maxWaiting && !this.#displaceFor(n)) return Promise.resolve(undefined);
    const turn = held ? Math.max(this.#round, held.turn + 1) : this.#round;
    this.#held.set(client, { n: n + 1, turn });
    return new Promise((resolve) => {
      let at = this.#waiting.length;
      while (at > 0 && this.#waiting[at - 1].turn > turn) at--;
      this.#waiting.splice(at, 0, { client, password, hash, turn, resolve });
      this.#next();
    });
  }

  /** Frees a place for a client holding `n` checks, if another holds two more. */
  #displaceFor(n: number): boolean {
    let most: string | undefined;
    let mostHeld = n + 1;
    for (const check of this.#waiting) {
      const held = this.#held.get(check.client)!.n;
      if (held > mostHeld) [most, mostHeld] = [check.client, held];
    }
    if (most === undefined) return false;
    const at = this.#waiting.findLastIndex((check) => check.client === most);
    const [check] = this.#waiting.splice(at, 1);
    this.#release(check.client);
    check.resolve(undefined);
    return true;
  }

  /** Starts the next check when none runs; ends the worker when none waits. */
  #next(): void {
    if (this.#running) return;
    const check = this.#waiting.shift();
    if (!check) {
      this.#worker?.terminate();
      this.#worker = undefined;
      return;
    }
    const id = this.#nextId++;
    this.#running = { ...check, id };
    this.#round = check.turn;
    this.#checks++;
    if (this.#workerFailed) {
      bcrypt.compare(check.password, check.hash).catch(() => false).then((ok) =>
        this.#settle(id, ok)
      );
      return;
    }
    this.#worker ??= this.#start();
    this.#worker.postMessage({ id, password: check.password, hash: check.hash });
  }

  #start(): Worker {
    workerUrl ??= URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
    const worker = new Worker(workerUrl, { type: "module" });
    worker.onmessage = ({ data }: MessageEvent<{ id: number; ok: boolean }>) =>
      this.#settle(data.id, data.ok);
    worker.onerror = (event) => {
      event.preventDefault();
      this.#workerFailed = true;
      worker.terminate();
      this.#worker = undefined;
      if (this.#running) this.#settle(this.#running.id, undefined);
    };
    return worker;
  }

  #settle(id: number, ok: boolean | undefined): void {
    const check = this.#running;
    if (check?.id !== id) return;
    this.#running = undefined;
    this.#release(check.client);
    check.resolve(ok);
    this.#next();
  }

  #release(client: string): void {
    const held = this.#held.get(client)!;
    if (--held.n === 0) this.#held.delete(client);
  }
}
