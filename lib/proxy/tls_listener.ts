/**
 * {@linkcode TlsListener}: the proxy port over TLS, optionally asking every
 * client for a certificate signed by a given CA, with the certificate and key
 * replaceable while it runs.
 *
 * Built on `node:tls`: Deno's own `Deno.listenTls` can neither ask for client
 * certificates nor change its certificate without binding the port again.
 *
 * @module
 */
import tls from "node:tls";
import type { Socket } from "node:net";
import type { ClientConn, ClientListener } from "./client_conn.ts";
import { NodeSocketConn } from "./node_socket_conn.ts";

/** The PEM text of the proxy port's TLS. */
export interface TlsPem {
  /** The certificate chain, leaf first. */
  cert: string;
  /** The private key of the leaf certificate. */
  key: string;
  /** CA certificates; when set, clients must present a certificate signed by one. */
  clientCa?: string;
}

/** Options of {@linkcode TlsListener.listen}. */
export interface TlsListenerOptions {
  /** Address to bind. */
  hostname: string;
  /** Port to bind; 0 picks a free one. */
  port: number;
  /** Certificate, key and client CA. */
  pem: TlsPem;
  /** Longest time a handshake may take, in ms. */
  handshakeTimeout: number;
  /** A handshake failed or took too long; nothing of it reaches the engine. */
  onHandshakeFailure?: (error: Error) => void;
  /** Open connections in all, handshakes under way included; beyond it new ones are dropped. 0: no cap. */
  maxClients?: number;
  /** The same per client address. 0: no cap. */
  maxClientsPerIp?: number;
}

/**
 * Checks that `pem` holds a certificate and the key that goes with it (and
 * a readable client CA); throws a `TypeError` naming what is wrong.
 */
export function checkPem(pem: TlsPem): void {
  let probe: Deno.TlsListener;
  try {
    probe = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert: pem.cert, key: pem.key });
  } catch (err) {
    throw new TypeError(`TLS certificate and key are not a usable pair: ${message(err)}`);
  }
  probe.close();
  if (pem.clientCa !== undefined && !/-----BEGIN CERTIFICATE-----/.test(pem.clientCa)) {
    throw new TypeError("TLS client CA holds no PEM certificate");
  }
}

/** Accepts TLS client connections that completed their handshake. */
export class TlsListener implements ClientListener {
  readonly addr: Deno.NetAddr;
  #server: tls.Server;
  #requestCert: boolean;
  #ready: ClientConn[] = [];
  #waiting: PromiseWithResolvers<ClientConn>[] = [];
  #closed = false;

  private constructor(server: tls.Server, addr: Deno.NetAddr, requestCert: boolean) {
    this.#server = server;
    this.addr = addr;
    this.#requestCert = requestCert;
    server.on("secureConnection", (socket: tls.TLSSocket) => this.#accepted(socket));
  }

  /** Binds the port; resolves once it listens. Throws a `TypeError` on a bad `pem`. */
  static async listen(options: TlsListenerOptions): Promise<TlsListener> {
    checkPem(options.pem);
    const requestCert = options.pem.clientCa !== undefined;
    const server = tls.createServer({
      ...contextOptions(options.pem),
      requestCert,
      rejectUnauthorized: true,
      allowHalfOpen: true,
      handshakeTimeout: options.handshakeTimeout,
    });
    server.on("tlsClientError", (err: Error, socket: tls.TLSSocket) => {
      socket.destroy();
      options.onHandshakeFailure?.(err);
    });
    capClients(server, options);
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port, options.hostname, () => {
        server.off("error", reject);
        resolve();
      });
    });
    const bound = server.address() as { address: string; port: number };
    const addr: Deno.NetAddr = { transport: "tcp", hostname: bound.address, port: bound.port };
    return new TlsListener(server, addr, requestCert);
  }

  /**
   * Serves `pem` to new handshakes from now on; connections already open
   * keep theirs. Throws a `TypeError`, changing nothing, when `pem` is not
   * usable or would turn client certificates on or off (that needs a restart).
   */
  setPem(pem: TlsPem): void {
    checkPem(pem);
    if ((pem.clientCa !== undefined) !== this.#requestCert) {
      throw new TypeError("Turning TLS client certificates on or off needs a restart");
    }
    this.#server.setSecureContext(contextOptions(pem));
  }

  /** The next connection whose handshake completed. */
  accept(): Promise<ClientConn> {
    const conn = this.#ready.shift();
    if (conn) return Promise.resolve(conn);
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("Listener is closed"));
    const waiting = Promise.withResolvers<ClientConn>();
    this.#waiting.push(waiting);
    return waiting.promise;
  }

  /** Stops accepting; connections accepted stay open, handshakes under way are dropped. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#server.close();
    for (const conn of this.#ready.splice(0)) conn.close();
    for (const w of this.#waiting.splice(0)) {
      w.reject(new Deno.errors.BadResource("Listener is closed"));
    }
  }

  #accepted(socket: tls.TLSSocket): void {
    if (this.#closed) return void socket.destroy();
    socket.setNoDelay(true);
    const conn = new NodeSocketConn(socket, this.#requestCert ? subjectOf(socket) : undefined);
    const waiting = this.#waiting.shift();
    if (waiting) waiting.resolve(conn);
    else this.#ready.push(conn);
  }
}

/**
 * Holds the TCP connections of `server` (handshakes under way included) to
 * the client caps: one over either is dropped before its handshake.
 */
function capClients(server: tls.Server, caps: TlsListenerOptions): void {
  const { maxClients = 0, maxClientsPerIp = 0 } = caps;
  if (maxClients > 0) server.maxConnections = maxClients;
  if (maxClientsPerIp <= 0) return;
  const perIp = new Map<string, number>();
  server.on("connection", (socket: Socket) => {
    const ip = socket.remoteAddress ?? "";
    const n = (perIp.get(ip) ?? 0) + 1;
    perIp.set(ip, n);
    socket.once("close", () => {
      const left = perIp.get(ip)! - 1;
      if (left === 0) perIp.delete(ip);
      else perIp.set(ip, left);
    });
    if (n > maxClientsPerIp) socket.destroy();
  });
}

/** The secure-context options of `pem`. */
function contextOptions(pem: TlsPem): tls.SecureContextOptions {
  return { cert: pem.cert, key: pem.key, ca: pem.clientCa };
}

/** What names the client in its certificate: the subject's common name, else the whole subject. */
function subjectOf(socket: tls.TLSSocket): string | undefined {
  const subject = socket.getPeerCertificate()?.subject;
  if (!subject) return undefined;
  if (subject.CN) return subject.CN;
  const parts = Object.entries(subject).map(([k, v]) => `${k}=${String(v)}`);
  return parts.length ? parts.join(",") : undefined;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
