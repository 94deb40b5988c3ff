/**
 * An upstream of limited capacity, as the adaptive limit's goal describes
 * it: it serves `capacity` requests at a time, each taking `serviceMs`,
 * queues the rest, and answers 503 at once to a request that arrives while
 * more than `maxInFlight` are in flight. It records the in-flight count at
 * each arrival and the answers it gave.
 */

/** Options of {@linkcode startCapacityUpstream}. */
export interface CapacityOptions {
  /** Requests served at a time. */
  capacity: number;
  /** Time to serve one request, in ms. */
  serviceMs: number;
  /** In flight beyond which a request is answered 503 at once. */
  maxInFlight: number;
}

/** A running capacity-limited upstream. */
export interface CapacityUpstream extends AsyncDisposable {
  /** Its URL. */
  url: string;
  /** Its `host:port`. */
  authority: string;
  /** The in-flight count at each arrival, this one included. */
  inflight: number[];
  /** Answers by status. */
  answers: Map<number, number>;
  /** The upstream's peak of in-flight requests. */
  peak(): number;
}

/** Starts the upstream on a free loopback port. */
export function startCapacityUpstream(o: CapacityOptions): CapacityUpstream {
  let inFlight = 0;
  let serving = 0;
  let peak = 0;
  const line: (() => void)[] = [];
  const inflight: number[] = [];
  const answers = new Map<number, number>();
  const answer = (status: number) => {
    answers.set(status, (answers.get(status) ?? 0) + 1);
    return new Response(status === 200 ? "ok\n" : "overloaded\n", { status });
  };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async () => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    inflight.push(inFlight);
    try {
      if (inFlight > o.maxInFlight) return answer(503);
      // A place among the `capacity` served, handed on as each ends.
      if (serving >= o.capacity) await new Promise<void>((go) => line.push(go));
      else serving++;
      // The service time of the scripted host, not a wait of the test.
      await new Promise((done) => setTimeout(done, o.serviceMs));
      const next = line.shift();
      if (next) next();
      else serving--;
      return answer(200);
    } finally {
      inFlight--;
    }
  });
  const { port } = server.addr as Deno.NetAddr;
  return {
    url: `http://127.0.0.1:${port}/`,
    authority: `127.0.0.1:${port}`,
    inflight,
    answers,
    peak: () => peak,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}
