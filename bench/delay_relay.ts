/**
 * A TCP relay on loopback that delays every chunk by a fixed time each way,
 * in order: a Redis that answers `rtt` ms later, as one across a network
 * does, for the benchmark.
 *
 * @module
 */

/** A running relay: its port, and `close()`. */
export interface DelayRelay {
  /** The port to connect to instead of the target's. */
  port: number;
  /** Stops accepting and closes every connection. */
  close(): void;
}

/** Relays 127.0.0.1:`port` with `rttMs` added to every round trip (half each way). */
export function delayRelay(port: number, rttMs: number): DelayRelay {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const pipe = async (from: Deno.Conn, to: Deno.Conn) => {
    let chain = Promise.resolve();
    const buf = new Uint8Array(65_536);
    for (let n = await from.read(buf); n !== null; n = await from.read(buf)) {
      const chunk = buf.slice(0, n);
      const due = performance.now() + rttMs / 2;
      chain = chain.then(async () => {
        const wait = due - performance.now();
        if (wait > 0) await new Promise((done) => setTimeout(done, wait));
        for (let off = 0; off < chunk.length;) off += await to.write(chunk.subarray(off));
      });
    }
    await chain;
  };
  (async () => {
    for await (const client of listener) {
      const server = await Deno.connect({ hostname: "127.0.0.1", port });
      for (const c of [client, server]) conns.add(c);
      Promise.all([pipe(client, server), pipe(server, client)]).catch(() => {}).finally(() => {
        for (const c of [client, server]) {
          conns.delete(c);
          try {
            c.close();
          } catch {
            // closed already
          }
        }
      });
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    close: () => {
      listener.close();
      for (const c of conns) c.close();
    },
  };
}
