/**
 * A TCP relay to a local port for fault tests: it can cut every connection
 * at once, and, once armed, stops passing the replies of a connection whose
 * client sends a given command, as a server would that never answers it.
 *
 * @module
 */

/** A relay on a free loopback port. */
export class HoldingRelay implements AsyncDisposable {
  readonly port: number;
  #listener: Deno.Listener;
  #conns = new Set<Deno.Conn>();
  #armed: { command: string; onHeld: () => void } | null = null;

  /** Relays connections on a free port to `target`. */
  constructor(target: number) {
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#accept(target);
  }

  /**
   * From now on, the replies of a connection that sends `command` are
   * dropped; `onHeld` runs for each connection so held.
   */
  hold(command: string, onHeld: () => void): void {
    this.#armed = { command: command.toLowerCase(), onHeld };
  }

  /** Closes every connection relayed so far. */
  cutAll(): void {
    for (const conn of this.#conns) closeQuietly(conn);
    this.#conns.clear();
  }

  async #accept(target: number): Promise<void> {
    try {
      for await (const client of this.#listener) {
        const server = await Deno.connect({ hostname: "127.0.0.1", port: target }).catch(() =>
          null
        );
        if (server) this.#relay(client, server);
        else client.close();
      }
    } catch {
      // The listener was closed.
    }
  }

  #relay(client: Deno.Conn, server: Deno.Conn): void {
    this.#conns.add(client).add(server);
    let held = false;
    const watch = new TransformStream<Uint8Array, Uint8Array>({
      transform: (chunk, out) => {
        const armed = this.#armed;
        if (
          !held && armed && new TextDecoder().decode(chunk).toLowerCase().includes(armed.command)
        ) {
          held = true;
          armed.onHeld();
        }
        out.enqueue(chunk);
      },
    });
    const drop = new TransformStream<Uint8Array, Uint8Array>({
      transform: (chunk, out) => {
        if (!held) out.enqueue(chunk);
      },
    });
    const end = () => {
      for (const conn of [client, server]) {
        if (this.#conns.delete(conn)) closeQuietly(conn);
      }
    };
    client.readable.pipeThrough(watch).pipeTo(server.writable).catch(() => {}).finally(end);
    server.readable.pipeThrough(drop).pipeTo(client.writable).catch(() => {}).finally(end);
  }

  /** Closes the listener and every connection. */
  [Symbol.asyncDispose](): Promise<void> {
    this.#listener.close();
    this.cutAll();
    return Promise.resolve();
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Closed already.
  }
}
