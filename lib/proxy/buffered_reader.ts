/** A read buffer over a connection, for heads, chunk lines and bodies. */
import { giveSpare, SMALL_SIZE, SPARE_SIZE, takeSpare } from "./spare_buffers.ts";

/** A connection's first read buffer: a spare one, given back once it waits on a watch buffer. */
const INITIAL_SIZE = SPARE_SIZE;
const EMPTY = new Uint8Array(0);

/** Thrown when a head or line grows past its allowed size. */
export class TooLargeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TooLargeError";
  }
}

/**
 * Buffers what a connection sends so heads and chunk-size lines can be
 * framed; bodies are read through it so buffered bytes are never lost.
 */
export class BufferedReader {
  readonly conn: Reader;
  #buf: Uint8Array<ArrayBuffer>;
  #start = 0;
  #end = 0;
  #pending: Promise<number | null> | null = null;
  #eof = false;

  constructor(conn: Reader) {
    this.conn = conn;
    this.#buf = EMPTY;
  }

  /** Bytes read from the connection but not consumed yet. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /** Whether a read started by {@linkcode watch} is still on its way. */
  get reading(): boolean {
    return this.#pending !== null;
  }

  /**
   * Starts one read in the background, to notice a peer that closes while
   * nothing else reads (an idle pooled socket, a client awaiting its
   * answer). Its bytes join the buffer; a read that starts meanwhile waits
   * for it instead of reading beside it.
   */
  watch(): Promise<number | null> {
    if (this.#pending) return this.#pending;
    if (this.#start === this.#end) {
      // Nothing buffered: wait with a small buffer, not the head-sized one
      // (an idle tunnel or pooled socket may wait like this for minutes);
      // the last one, when it is small, serves again.
      this.#start = this.#end = 0;
      if (this.#buf.length !== SMALL_SIZE) {
        giveSpare(this.#buf); // heads are parsed by now: nothing views it
        this.#buf = takeSpare(SMALL_SIZE);
      }
    }
    // Once settled, its bytes are in the buffer for any reader.
    const pending = this.#readMore(() => {
      if (this.#pending === pending) this.#pending = null;
    });
    return this.#pending = pending;
  }

  /** Reads more bytes into the buffer; `null` at end of stream. */
  fill(): Promise<number | null> {
    const pending = this.#pending;
    if (pending) {
      this.#pending = null;
      return pending;
    }
    return this.#readMore();
  }

  /** Reads more bytes into the buffer; `settled` runs first once the read ends. */
  #readMore(settled?: () => void): Promise<number | null> {
    if (this.#eof) {
      return Promise.resolve(null).then((n) => {
        settled?.();
        return n;
      });
    }
    if (this.#buf.length === 0) {
      this.#buf = takeSpare();
    } else if (this.#end === this.#buf.length) {
      if (this.#start > 0) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      } else {
        // A head longer than a watch buffer (most real ones) moves to a spare one.
        const bigger = this.#buf.length < SPARE_SIZE
          ? takeSpare()
          : new Uint8Array(this.#buf.length * 2);
        bigger.set(this.#buf);
        giveSpare(this.#buf); // no read is on its way into it, and views end at a read
        this.#buf = bigger;
      }
    }
    // A plain promise, not an async frame: an idle socket may wait here for minutes.
    return this.conn.read(this.#buf.subarray(this.#end)).then((n) => {
      settled?.();
      if (n === null) this.#eof = true;
      else this.#end += n;
      return n;
    }, (err) => {
      settled?.();
      throw err;
    });
  }

  /**
   * Reads a head that ends with an empty line and returns it without the
   * final CRLF CRLF, or `null` when the stream ends before a byte of it.
   * The bytes are a view into the buffer, valid until the next read: parse
   * them first.
   * Empty lines before a head are skipped (RFC 9112, 2.2). A bare LF, or a
   * CR after a line's CRLF without its LF, ends the head at once: the bytes
   * returned then run through that byte, and the head parser refuses them
   * without waiting for more.
   */
  async readHead(maxSize: number): Promise<Uint8Array | null> {
    let scanFrom = this.#start;
    for (;;) {
      // Skip leading empty lines.
      while (
        this.#end - this.#start >= 2 && this.#buf[this.#start] === 13 &&
        this.#buf[this.#start + 1] === 10
      ) {
        this.#start += 2;
        if (scanFrom < this.#start) scanFrom = this.#start;
      }
      // A plain loop, not indexOf: that is a call into the runtime per line.
      const buf = this.#buf;
      const end = this.#end;
      let next = end;
      for (let i = scanFrom; i < end; i++) {
        if (buf[i] !== 10) continue;
        if (i === this.#start || buf[i - 1] !== 13) return this.#takeHead(i + 1, i + 1, maxSize);
        if (i + 2 >= end) {
          // Too few bytes yet to tell whether this line is the last.
          if (i + 1 === end || buf[i + 1] === 13) {
            next = i;
            break;
          }
          continue;
        }
        if (buf[i + 1] !== 13) continue;
        if (buf[i + 2] === 10) return this.#takeHead(i - 1, i + 3, maxSize);
        return this.#takeHead(i + 2, i + 2, maxSize);
      }
      if (this.#end - this.#start > maxSize) {
        throw new TooLargeError("Head is too large");
      }
      scanFrom = next;
      const startBefore = this.#start;
      const n = await this.fill();
      if (n === null) {
        if (this.#end === this.#start) return null;
        throw new Deno.errors.UnexpectedEof("Stream ended inside a head");
      }
      scanFrom -= startBefore - this.#start; // the buffer may have moved
    }
  }

  /** Takes the head up to `end` (a view) and consumes the buffer up to `next`. */
  #takeHead(end: number, next: number, maxSize: number): Uint8Array {
    if (end - this.#start > maxSize) throw new TooLargeError("Head is too large");
    const head = this.#buf.subarray(this.#start, end);
    this.#start = next;
    this.#compact();
    return head;
  }

  /** A view of every buffered byte, valid until the next read. */
  peek(): Uint8Array {
    return this.#buf.subarray(this.#start, this.#end);
  }

  /** Consumes `n` buffered bytes (at most {@linkcode buffered}). */
  skip(n: number): void {
    this.#start += Math.min(n, this.#end - this.#start);
    if (this.#start === this.#end && !this.#pending) this.#start = this.#end = 0;
  }

  /**
   * Reads body bytes into `p`: buffered bytes first, then straight from the
   * connection. Returns the count, or `null` at end of stream.
   */
  async readInto(p: Uint8Array): Promise<number | null> {
    if (this.#start === this.#end && this.#pending) {
      if (await this.fill() === null) return null;
    }
    if (this.#start < this.#end) {
      const n = Math.min(p.length, this.#end - this.#start);
      p.set(this.#buf.subarray(this.#start, this.#start + n));
      this.#start += n;
      if (this.#start === this.#end) this.#start = this.#end = 0;
      return n;
    }
    if (this.#eof) return null;
    const n = await this.conn.read(p);
    if (n === null) this.#eof = true;
    return n;
  }

  /**
   * Reads like a connection: buffered bytes first, then straight from the
   * connection; the buffer is let go once drained (for pipes, which never
   * read a head again).
   */
  read(p: Uint8Array): Promise<number | null> {
    if (this.#start < this.#end) {
      const n = Math.min(p.length, this.#end - this.#start);
      p.set(this.#buf.subarray(this.#start, this.#start + n));
      this.#start += n;
      if (this.#start === this.#end && !this.#pending) this.#release();
      return Promise.resolve(n);
    }
    if (this.#pending) return this.fill().then((n) => n === null ? null : this.read(p));
    // Drained: let go of the buffer before a read that may wait for minutes,
    // and read straight from the connection (no frame of ours kept waiting).
    this.#release();
    return this.#eof ? Promise.resolve(null) : this.conn.read(p);
  }

  #release(): void {
    this.#buf = EMPTY;
    this.#start = this.#end = 0;
  }

  /** A view of up to `max` buffered bytes, consumed; empty when none. */
  takeUpTo(max: number): Uint8Array {
    const n = Math.min(max, this.#end - this.#start);
    const view = this.#buf.subarray(this.#start, this.#start + n);
    this.#start += n;
    return view;
  }

  /** Lets go of a buffer that grew for a large head. */
  #compact(): void {
    if (this.#start === this.#end) {
      this.#start = this.#end = 0;
      if (this.#buf.length > INITIAL_SIZE && !this.#pending) this.#buf = takeSpare();
    }
  }
}

/** Where bytes can be written: a connection, or a wrapper of one. */
export interface Writer {
  /** Writes some of `p`, resolving how many bytes were written. */
  write(p: Uint8Array): Promise<number>;
}

/** Where bytes can be read from: a connection, or a {@linkcode BufferedReader}. */
export interface Reader {
  /** Reads into `p`, resolving the count or `null` at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
}

/**
 * Writes every byte of `data`: one write and one promise reaction when the
 * connection takes it all, as it mostly does (no async frame per write).
 * A connection that throws at once rejects the promise.
 */
export function writeAll(conn: Writer, data: Uint8Array): Promise<void> {
  if (data.length === 0) return Promise.resolve();
  try {
    return conn.write(data).then((n) => n < data.length ? writeRest(conn, data, n) : undefined);
  } catch (err) {
    return Promise.reject(err);
  }
}

/** Writes the bytes of `data` from `off` on, after a partial write. */
async function writeRest(conn: Writer, data: Uint8Array, off: number): Promise<void> {
  while (off < data.length) off += await conn.write(data.subarray(off));
}
