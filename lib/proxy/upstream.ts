/**
 * One open upstream socket, its read buffer and its host's slot, which it
 * holds until closed.
 *
 * @module
 */
import { BufferedReader } from "./buffered_reader.ts";
import type { Slot } from "../limit/limiter.ts";
import type { ParentProxy } from "./parent_proxy.ts";

/** Options of {@linkcode Upstream}. */
export interface UpstreamOptions {
  /** The host key it counts under. */
  key: string;
  /** The socket: to the host, or to the parent proxy it goes through. */
  conn: Deno.TcpConn | Deno.TlsConn;
  /** The slot it holds. */
  slot: Slot;
  /** Runs once, when it closes, after the slot went back. */
  onClose: (up: Upstream) => void;
  /** Its read buffer, when reading began elsewhere (a parent's `CONNECT` answer). */
  reader?: BufferedReader;
  /** The parent proxy it goes through, if any. */
  parent?: ParentProxy;
}

/** One open upstream socket; it holds one slot of its host until closed. */
export class Upstream {
  /** The host key it counts under. */
  readonly key: string;
  /** The socket: to the host, or to the parent proxy it goes through. */
  readonly conn: Deno.TcpConn | Deno.TlsConn;
  /** The parent proxy it goes through, if any. */
  readonly parent?: ParentProxy;
  /** Its read buffer. */
  readonly reader: BufferedReader;
  /** When an idle pooled socket is closed (coarse clock, ms). */
  idleUntil = 0;
  /** When it was opened (coarse clock, ms). */
  openedAt = 0;
  /** It served an exchange before (it came from the pool). */
  reused = false;
  /**
   * The slot it holds, given back when it closes; swapped for another when
   * the fleet's queue decides who uses it (giving back a slot twice does
   * nothing).
   */
  slot: Slot;
  #onClose: (up: Upstream) => void;
  #closed = false;

  /** Wraps a socket holding a slot. */
  constructor(o: UpstreamOptions) {
    this.key = o.key;
    this.conn = o.conn;
    this.slot = o.slot;
    this.reader = o.reader ?? new BufferedReader(o.conn);
    this.parent = o.parent;
    this.#onClose = o.onClose;
  }

  /** Whether {@linkcode Upstream.close} ran. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the socket and gives its slot back, exactly once. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch { /* already closed by the peer */ }
    this.slot.release();
    if (this.parent) this.parent.open--;
    this.#onClose(this);
  }
}
