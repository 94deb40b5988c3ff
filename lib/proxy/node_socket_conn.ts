/**
 * {@linkcode NodeSocketConn}: a `node:net` or `node:tls` socket read and
 * written like a `Deno.Conn`, for the engine (`client_conn.ts`).
 *
 * @module
 */
import type { Socket } from "node:net";
import type { ClientConn } from "./client_conn.ts";

/** Bytes received and not read yet past which the socket stops reading. */
const HIGH_WATER = 64 * 1024;

/** The error of a write to a socket that has ended or closed. */
function closedError(): Error {
  return new Deno.errors.BrokenPipe("Connection is closed");
}

/**
 * A node socket as a {@linkcode ClientConn}: reads take what arrived (the
 * socket pauses while 64 KiB wait unread), writes resolve once the socket has
 * taken the bytes (the caller may reuse its buffer then).
 */
export class NodeSocketConn implements ClientConn {
  readonly remoteAddr: Deno.NetAddr;
  readonly peer?: string;
  #socket: Socket;
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  #ended = false;
  #error: Error | null = null;
  #wake: (() => void) | null = null;

  /** Wraps `socket`; `peer` is the subject of the client's certificate, if any. */
  constructor(socket: Socket, peer?: string) {
    this.#socket = socket;
    this.peer = peer;
    this.remoteAddr = {
      transport: "tcp",
      hostname: socket.remoteAddress ?? "",
      port: socket.remotePort ?? 0,
    };
    socket.on("data", (chunk: Uint8Array) => {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
      if (this.#buffered >= HIGH_WATER) socket.pause();
      this.#notify();
    });
    socket.on("end", () => this.#end(null));
    socket.on("close", () => this.#end(null));
    socket.on("error", (err: Error) => this.#end(err));
  }

  /** Reads what arrived into `p`, waiting for some; `null` at end of stream. */
  async read(p: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    const chunk = this.#chunks[0];
    const n = Math.min(p.length, chunk.length);
    p.set(n === chunk.length ? chunk : chunk.subarray(0, n));
    if (n === chunk.length) this.#chunks.shift();
    else this.#chunks[0] = chunk.subarray(n);
    this.#buffered -= n;
    if (this.#buffered < HIGH_WATER && this.#socket.isPaused()) this.#socket.resume();
    return n;
  }

  /** Writes all of `p`; resolves once the socket has taken it. */
  write(p: Uint8Array): Promise<number> {
    const socket = this.#socket;
    if (socket.destroyed || socket.writableEnded) return Promise.reject(closedError());
    return new Promise((resolve, reject) => {
      socket.write(p, (err) => err ? reject(err) : resolve(p.length));
    });
  }

  /** Ends the writing side (TLS: close_notify, then FIN); reading goes on. */
  closeWrite(): Promise<void> {
    this.#socket.end();
    return Promise.resolve();
  }

  /** Closes the socket at once. */
  close(): void {
    this.#socket.destroy();
    this.#end(null);
  }

  #end(err: Error | null): void {
    this.#ended = true;
    this.#error ??= err;
    this.#notify();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}
