/**
 * A full garbage collection once the proxy goes quiet after a busy spell.
 *
 * V8 frees the garbage of a burst (promises, heads, closures of requests
 * and tunnel openings) only when allocation goes on: a proxy that falls
 * quiet while holding thousands of idle tunnels keeps the garbage of their
 * opening in its resident memory for as long as it stays quiet, which is
 * when its footprint is read (bench/README.md, "Memory per idle tunnel").
 * Node's memory reducer collects in such lulls; Deno runs none. So this
 * collects once, when no request or tunnel has begun for a while and the
 * heap has grown since the last collection. A quiet proxy is the one whose
 * pause nobody waits on.
 *
 * @module
 */
import { getHeapStatistics, setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

/** Options of {@linkcode IdleCollector}. */
export interface IdleCollectorOptions {
  /** Runs a full collection. */
  collect: () => void;
  /** Bytes of heap in use now. */
  heapUsed: () => number;
  /** Time with no new request or tunnel before a collection (ms). Default: 1000. */
  quietMs?: number;
  /** Heap growth since the last collection that makes one worth its pause (bytes). Default: 4 MiB. */
  minGrowth?: number;
}

/** Decides, tick by tick, when a quiet proxy collects its garbage. */
export class IdleCollector {
  readonly #o: Required<IdleCollectorOptions>;
  #activity = -1;
  #quietSince = 0;
  #heapAfter: number;

  /** A collector that starts from the heap as it is now. */
  constructor(options: IdleCollectorOptions) {
    this.#o = { quietMs: 1000, minGrowth: 4 * 1024 * 1024, ...options };
    this.#heapAfter = this.#o.heapUsed();
  }

  /**
   * Notes the time (ms) and a count that moves with every request or
   * tunnel begun; collects when the count has stood still for the quiet
   * time and the heap has grown enough since the last collection. Returns
   * whether it collected.
   */
  tick(now: number, activity: number): boolean {
    if (activity !== this.#activity) {
      this.#activity = activity;
      this.#quietSince = now;
      return false;
    }
    if (now - this.#quietSince < this.#o.quietMs) return false;
    if (this.#o.heapUsed() - this.#heapAfter < this.#o.minGrowth) return false;
    this.#o.collect();
    this.#heapAfter = this.#o.heapUsed();
    return true;
  }
}

/** The process's full collection, once found (`null`: the runtime refused it). */
let found: (() => void) | null | undefined;

/**
 * V8's full collection, through a context made after `--expose-gc` is set
 * (the flag needs no start-up option or permission), or `null` where the
 * runtime refuses it. One context serves the whole process.
 */
export function fullCollection(): (() => void) | null {
  if (found !== undefined) return found;
  try {
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc");
    found = typeof gc === "function" ? () => gc() : null;
  } catch {
    found = null;
  }
  return found;
}

/** Bytes of V8 heap in use now. */
export function heapUsed(): number {
  return getHeapStatistics().used_heap_size;
}
