/**
 * One open upstream socket, its read buffer and its host's slot, which it
 * holds until closed.
 *
 * @module
 */
import { BufferedReader } from "./buffered_reader.ts";
import type { Slot } from "../limit/limiter.ts";

/** One open upstream socket; it holds one slot of its host until closed. */
export class Upstream {
  /** The host key it counts under. */
  readonly key: string;
  /** The socket. */
  readonly conn: Deno.TcpConn;
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

  /** Wraps `conn` holding `slot`; `onClose` runs once, when it closes, after the slot went back. */
  constructor(
    key: string,
    conn: Deno.TcpConn,
    slot: Slot,
    onClose: (up: Upstream) => void,
  ) {
    this.key = key;
    this.conn = conn;
    this.slot = slot;
    this.reader = new BufferedReader(conn);
    this.#onClose = onClose;
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
    this.#onClose(this);
  }
}
