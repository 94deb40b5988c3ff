/**
 * A discrete-event simulation, in simulated milliseconds, of clients that
 * loop through a per-host limiter (a FIFO queue in front of a concurrency
 * limit, as dprl's queue is) to an upstream of fixed capacity that queues
 * what it cannot serve yet and refuses with 503 beyond a bound. Nothing
 * sleeps: the whole run takes a few milliseconds of real time.
 *
 * @module
 */

/** The limit a simulated limiter enforces, and what it learns from answers. */
export interface SimController {
  /** The limit now. */
  limit(): number;
  /** One answer or refusal of the upstream, as it arrives. */
  answer(sample: { latencyMs: number; dropped: boolean; inflight: number; now: number }): void;
}

/** The simulated upstream. */
export interface SimUpstream {
  /** Requests served at once. */
  servers: number;
  /** Mean service time of one request, in milliseconds. */
  serviceMs: number;
  /** Service times are uniform in `serviceMs` × (1 ± `jitter`). */
  jitter: number;
  /** A request that finds this many in flight (served or queued) gets a 503. */
  rejectAt: number;
  /** Time to answer a refusal, in milliseconds. */
  rejectMs: number;
}

/** Options of {@linkcode simulate}. */
export interface SimOptions {
  /** Simulated time, in milliseconds. */
  durationMs: number;
  /** Clients, each sending its next request as soon as the last is answered. */
  clients: number;
  /** The upstream. */
  upstream: SimUpstream;
  /** The limiter's controller. */
  controller: SimController;
  /** Seed of the service times. */
  seed: number;
}

/** What a run saw. */
export interface SimReport {
  /** Answers of the upstream (200 or 503) received during the run. */
  answers: number;
  /** Of them, 503s. */
  refused: number;
  /** Of them, 200s: the goodput. */
  served: number;
  /** The time-weighted median of requests in flight at the upstream. */
  medianInflight: number;
  /** The highest in flight at the upstream. */
  peakInflight: number;
}

/** The upstream of the issue: 4 at a time at 50 ms, 503 beyond 12 in flight. */
export const ISSUE_UPSTREAM: SimUpstream = {
  servers: 4,
  serviceMs: 50,
  jitter: 0.1,
  rejectAt: 12,
  rejectMs: 1,
};

/** mulberry32: a small seeded generator of numbers in [0, 1). */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface SimEvent {
  at: number;
  seq: number;
  run: () => void;
}

/** A clock of simulated time with a binary heap of events. */
class Clock {
  now = 0;
  #heap: SimEvent[] = [];
  #seq = 0;

  #before(a: SimEvent, b: SimEvent): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }

  schedule(at: number, run: () => void): void {
    const heap = this.#heap;
    heap.push({ at, seq: this.#seq++, run });
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#before(heap[i], heap[parent])) break;
      [heap[i], heap[parent]] = [heap[parent], heap[i]];
      i = parent;
    }
  }

  #pop(): SimEvent {
    const heap = this.#heap;
    const top = heap[0];
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < heap.length && this.#before(heap[l], heap[m])) m = l;
        if (r < heap.length && this.#before(heap[r], heap[m])) m = r;
        if (m === i) break;
        [heap[i], heap[m]] = [heap[m], heap[i]];
        i = m;
      }
    }
    return top;
  }

  runUntil(end: number): void {
    while (this.#heap.length > 0 && this.#heap[0].at <= end) {
      const event = this.#pop();
      this.now = event.at;
      event.run();
    }
    this.now = end;
  }
}

/** The upstream's in-flight count over time, for its time-weighted median. */
class InflightLog {
  #spent = new Map<number, number>();
  #level = 0;
  #since = 0;
  peak = 0;

  change(now: number, delta: number): void {
    this.#spent.set(this.#level, (this.#spent.get(this.#level) ?? 0) + now - this.#since);
    this.#level += delta;
    this.#since = now;
    this.peak = Math.max(this.peak, this.#level);
  }

  get level(): number {
    return this.#level;
  }

  median(end: number): number {
    this.change(end, 0);
    const levels = [...this.#spent.keys()].sort((a, b) => a - b);
    let acc = 0;
    for (const level of levels) {
      acc += this.#spent.get(level)!;
      if (acc >= end / 2) return level;
    }
    return this.#level;
  }
}

/**
 * Runs the simulation: every client loops through the limiter to the
 * upstream; the controller sees every answer before its slot is released,
 * and the limiter admits waiting clients in order whenever in flight is
 * under the controller's limit.
 */
export function simulate(options: SimOptions): SimReport {
  const { upstream: up, controller } = options;
  const clock = new Clock();
  const next = random(options.seed);
  const log = new InflightLog();
  const report = { answers: 0, refused: 0, served: 0 };
  const waiting: (() => void)[] = []; // the limiter's FIFO queue
  const serverQueue: (() => void)[] = []; // the upstream's own queue
  let inflight = 0; // admitted by the limiter
  let busy = 0; // upstream servers at work

  const serve = (done: () => void) => {
    busy++;
    const ms = up.serviceMs * (1 + up.jitter * (2 * next() - 1));
    clock.schedule(clock.now + ms, () => {
      busy--;
      const queued = serverQueue.shift();
      if (queued) serve(queued);
      done();
    });
  };
  const arrive = (answer: (status: number) => void) => {
    if (log.level >= up.rejectAt) {
      log.change(clock.now, 1);
      clock.schedule(clock.now + up.rejectMs, () => {
        log.change(clock.now, -1);
        answer(503);
      });
      return;
    }
    log.change(clock.now, 1);
    const done = () => {
      log.change(clock.now, -1);
      answer(200);
    };
    if (busy < up.servers) serve(done);
    else serverQueue.push(done);
  };
  const admit = () => {
    while (waiting.length > 0 && inflight < controller.limit()) {
      inflight++;
      waiting.shift()!();
    }
  };
  const loop = (): void => {
    waiting.push(() => {
      const sentAt = clock.now;
      arrive((status) => {
        report.answers++;
        if (status === 503) report.refused++;
        else report.served++;
        const latencyMs = clock.now - sentAt;
        controller.answer({ latencyMs, dropped: status === 503, inflight, now: clock.now });
        inflight--;
        loop();
      });
    });
    admit();
  };
  for (let c = 0; c < options.clients; c++) loop();
  clock.runUntil(options.durationMs);
  const medianInflight = log.median(options.durationMs);
  return { ...report, medianInflight, peakInflight: log.peak };
}

/** A controller whose limit never changes. */
export function staticController(limit: number): SimController {
  return { limit: () => limit, answer: () => {} };
}
