/**
 * What the engine needs of a client connection and of the listener that
 * accepts them: a TCP connection from `Deno.listen`, or a TLS one
 * (`tls_listener.ts`).
 *
 * @module
 */

/** A client connection, plain or TLS. */
export interface ClientConn {
  /** Where the client is. */
  readonly remoteAddr: Deno.NetAddr;
  /**
   * Who the client's certificate names (TLS with client certificates): its
   * subject's common name, else the whole subject; absent otherwise.
   */
  readonly peer?: string;
  /** Reads into `p`; resolves the count, or `null` at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes `p` (or a first part of it); resolves the count written. */
  write(p: Uint8Array): Promise<number>;
  /** Ends the writing side (the peer reads end of stream); reading goes on. */
  closeWrite(): Promise<void>;
  /** Closes both sides at once. */
  close(): void;
}

/** Accepts client connections. */
export interface ClientListener {
  /** The bound address. */
  readonly addr: Deno.NetAddr;
  /** The next client connection; rejects with `Deno.errors.BadResource` once closed. */
  accept(): Promise<ClientConn>;
  /** Stops accepting (again: nothing); connections accepted stay open. */
  close(): void;
}

/** The plain TCP proxy port as a {@linkcode ClientListener}: Nagle's delay off on every connection. */
export function tcpClients(listener: Deno.TcpListener): ClientListener {
  return {
    addr: listener.addr,
    accept: async () => {
      const conn = await listener.accept();
      conn.setNoDelay(true);
      return conn;
    },
    close: () => {
      try {
        listener.close();
      } catch { /* closed already */ }
    },
  };
}
