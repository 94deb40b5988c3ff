/** Relaying message bodies as they are framed, byte for byte. */
import { type BufferedReader, writeAll, type Writer } from "./buffered_reader.ts";
import { encodeLatin1, encodeLatin1Into, type Framing, type HttpError } from "./http_head.ts";
import { giveSpare, SPARE_SIZE, takeSpare } from "./spare_buffers.ts";

const PUMP_SIZE = 64 * 1024;
const FLUSH_AT = 32 * 1024;
/** Longest chunk-size line, extensions included. */
const MAX_LINE = 4096;
/** Largest trailer section. */
const MAX_TRAILERS = 64 * 1024;
/** Chunk data left at which a relay reads it straight into its own buffer. */
const DIRECT_AT = 1024;
const CRLF = new Uint8Array([13, 10]);
const EMPTY = new Uint8Array(0);

/** A write to the receiving side failed (it closed or stopped reading). */
export class WriteError extends Error {
  constructor(cause: unknown) {
    super("Write failed", { cause });
    this.name = "WriteError";
  }
}

function send(dst: Writer, data: Uint8Array): Promise<void> {
  return writeAll(dst, data).then(undefined, toWriteError);
}

function toWriteError(err: unknown): never {
  throw new WriteError(err);
}

/**
 * Sends the text of a head (ISO-8859-1), encoded into a spare buffer when
 * it fits one: a typed array of its own per head would cost more than the
 * encoding. Rejects with {@linkcode WriteError}.
 */
export function sendText(dst: Writer, text: string): Promise<void> {
  if (text.length > SPARE_SIZE) return send(dst, encodeLatin1(text));
  const buf = takeSpare();
  encodeLatin1Into(text, buf);
  // Once the write has ended, either way, nothing views the buffer.
  return writeAll(dst, buf.subarray(0, text.length)).then(() => giveSpare(buf), (err) => {
    giveSpare(buf);
    throw new WriteError(err);
  });
}

/**
 * Collects small pieces in one buffer, to send in one write. A first piece
 * given to the constructor (a head, as bytes or as ISO-8859-1 text) waits
 * until a second one comes; then the buffer is allocated, as large as both,
 * and the head encoded or copied into it. A head alone goes out as it is.
 */
class Batch {
  #first: Uint8Array | string | null;
  #buf = EMPTY;
  #size = 0;
  readonly dst: Writer;

  constructor(dst: Writer, first: Uint8Array | string | null) {
    this.dst = dst;
    this.#first = first;
    this.#size = first?.length ?? 0;
  }

  get size(): number {
    return this.#size;
  }

  /** Adds a copy of `bytes` (views into read buffers do not last). */
  add(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    const need = this.#size + bytes.length;
    if (need > this.#buf.length) {
      const size = Math.max(need, 2 * this.#buf.length);
      const bigger = size <= SPARE_SIZE ? takeSpare() : new Uint8Array(size);
      const first = this.#first;
      if (typeof first === "string") encodeLatin1Into(first, bigger);
      else if (first) bigger.set(first);
      else bigger.set(this.#buf.subarray(0, this.#size));
      this.#first = null;
      this.#buf = bigger;
    }
    this.#buf.set(bytes, this.#size);
    this.#size = need;
  }

  async flush(): Promise<void> {
    if (this.#size === 0) return;
    const first = this.#first;
    const data = first ?? this.#buf.subarray(0, this.#size);
    this.#first = null;
    this.#size = 0;
    if (typeof data === "string") return await sendText(this.dst, data);
    await send(this.dst, data);
    if (this.#buf.length === SPARE_SIZE) {
      // Written: the buffer is free for the next batch (this one takes another when it needs one).
      giveSpare(this.#buf);
      this.#buf = EMPTY;
    }
  }
}

/**
 * Fields a trailer section must not carry (RFC 9110, 6.5.1): framing,
 * routing, hop-by-hop and content metadata. A relay drops them.
 */
const NOT_IN_TRAILERS = new Set([
  "content-length",
  "transfer-encoding",
  "host",
  "connection",
  "keep-alive",
  "te",
  "trailer",
  "upgrade",
  "content-encoding",
  "content-range",
  "content-type",
]);

// States of the chunked decoder.
const SIZE = 0; // first hex digit of a chunk size
const SIZE_MORE = 1; // further hex digits, `;` or CR
const EXT_NAME_START = 2;
const EXT_NAME = 3;
const EXT_VALUE_START = 4;
const EXT_TOKEN = 5;
const EXT_QUOTED = 6;
const EXT_QUOTED_ESCAPE = 7;
const EXT_QUOTED_END = 8;
const SIZE_LF = 9;
const DATA = 10;
const DATA_CR = 11;
const DATA_LF = 12;
const TRAILER = 13; // inside a trailer line (or at the start of one)
const TRAILER_LF = 14;
const DONE = 15;

/** Token characters (RFC 9110, 5.6.2), by byte. */
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TCHAR[c.charCodeAt(0)] = 1;
for (let c = 48; c <= 57; c++) TCHAR[c] = 1;
for (let c = 65; c <= 90; c++) TCHAR[c] = TCHAR[c + 32] = 1;

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  const l = c | 32;
  return l >= 97 && l <= 102 ? l - 87 : -1;
}

/** Options of {@linkcode ChunkedDecoder}. */
export interface ChunkedDecoderOptions {
  /**
   * Emit only the chunk data (de-chunked, trailers dropped) instead of the
   * chunked framing itself.
   */
  dechunk: boolean;
  /** Makes the error thrown for broken framing. */
  error: (msg: string) => HttpError;
}

/**
 * A strict decoder of the chunked transfer coding (RFC 9112, 7.1) that runs
 * on bytes as they come, in pieces of any size. By default it emits the
 * message as it came, minus trailer fields that {@linkcode NOT_IN_TRAILERS}
 * names; with `dechunk` it emits only the data. Chunk extensions must be
 * `;name` or `;name=value` (token or quoted string) with no white space;
 * anything else, a bare CR or LF, or a chunk size beyond 2^53 is an error.
 */
export class ChunkedDecoder {
  #state = SIZE;
  #size = 0;
  #digits = 0;
  #lineLength = 0;
  #trailerBytes = 0;
  #line: number[] = [];
  #dechunk: boolean;
  /** Makes the error thrown for broken framing. */
  readonly error: (msg: string) => HttpError;

  constructor(options: ChunkedDecoderOptions) {
    this.#dechunk = options.dechunk;
    this.error = options.error;
  }

  /** True once the whole body, trailers included, has been decoded. */
  get done(): boolean {
    return this.#state === DONE;
  }

  /** Data bytes still expected in the current chunk (0 outside chunk data). */
  get dataLeft(): number {
    return this.#state === DATA ? this.#size : 0;
  }

  /**
   * Accounts for `n` bytes of chunk data (at most {@linkcode dataLeft}) that
   * the caller relays itself.
   */
  skipData(n: number): void {
    if (n > this.dataLeft) throw new RangeError("More than the chunk's data");
    this.#size -= n;
    if (this.#size === 0) this.#state = DATA_CR;
  }

  /**
   * Decodes `input`, calling `emit` with what to send on (views that last
   * only until `emit` returns). Returns the number of bytes consumed: all of
   * them, or fewer when the body ended inside `input`.
   *
   * One function over 80 lines on purpose: a byte-level state machine whose
   * states are the `case`s below, run once per byte of every chunked body.
   * Kept in one loop so that each byte costs a switch on a local, not a call,
   * and so that every transition can be read in one place.
   */
  // deno-lint-ignore dprl/max-function-lines -- a byte-level state machine, see above
  feed(input: Uint8Array, emit: (bytes: Uint8Array) => void): number {
    const dechunk = this.#dechunk;
    let state = this.#state;
    let i = 0;
    const n = input.length;
    try {
      while (i < n && state !== DONE) {
        if (state === DATA) {
          const take = Math.min(this.#size, n - i);
          if (dechunk) emit(input.subarray(i, i + take));
          i += take;
          this.#size -= take;
          if (this.#size === 0) state = DATA_CR;
          continue;
        }
        const c = input[i++];
        if (state < SIZE_LF && ++this.#lineLength > MAX_LINE) {
          throw this.error("Chunk size line is too long");
        }
        switch (state) {
          case SIZE:
          case SIZE_MORE: {
            const h = hexValue(c);
            if (h >= 0) {
              this.#size = this.#size * 16 + h;
              if (++this.#digits > 16 || this.#size > Number.MAX_SAFE_INTEGER) {
                throw this.error("Chunk size is too large");
              }
              state = SIZE_MORE;
            } else if (state === SIZE) {
              throw this.error("Invalid chunk size");
            } else if (c === 59) state = EXT_NAME_START;
            else if (c === 13) state = SIZE_LF;
            else throw this.error("Invalid chunk size");
            break;
          }
          case EXT_NAME_START:
            if (!TCHAR[c]) throw this.error("Invalid chunk extension");
            state = EXT_NAME;
            break;
          case EXT_NAME:
          case EXT_TOKEN:
          case EXT_QUOTED_END:
            if (c === 59) state = EXT_NAME_START;
            else if (c === 13) state = SIZE_LF;
            else if (c === 61 && state === EXT_NAME) state = EXT_VALUE_START;
            else if (!TCHAR[c] || state === EXT_QUOTED_END) {
              throw this.error("Invalid chunk extension");
            }
            break;
          case EXT_VALUE_START:
            if (c === 34) state = EXT_QUOTED;
            else if (TCHAR[c]) state = EXT_TOKEN;
            else throw this.error("Invalid chunk extension");
            break;
          case EXT_QUOTED:
            if (c === 34) state = EXT_QUOTED_END;
            else if (c === 92) state = EXT_QUOTED_ESCAPE;
            else if (c < 32 && c !== 9 || c === 127) {
              throw this.error("Invalid chunk extension");
            }
            break;
          case EXT_QUOTED_ESCAPE:
            if (c < 32 && c !== 9 || c === 127) {
              throw this.error("Invalid chunk extension");
            }
            state = EXT_QUOTED;
            break;
          case SIZE_LF:
            if (c !== 10) throw this.error("Chunk size line does not end with CRLF");
            this.#lineLength = 0;
            this.#digits = 0;
            if (this.#size > 0) {
              state = DATA;
            } else {
              state = TRAILER;
              if (!dechunk) emit(input.subarray(0, i));
            }
            break;
          case DATA_CR:
            if (c !== 13) throw this.error("Chunk data does not end with CRLF");
            state = DATA_LF;
            break;
          case DATA_LF:
            if (c !== 10) throw this.error("Chunk data does not end with CRLF");
            state = SIZE;
            break;
          case TRAILER:
            if (++this.#trailerBytes > MAX_TRAILERS) {
              throw this.error("Trailer section is too large");
            }
            if (c === 13) state = TRAILER_LF;
            else if (c === 10) throw this.error("Trailer line does not end with CRLF");
            else this.#line.push(c);
            break;
          case TRAILER_LF:
            if (c !== 10) throw this.error("Trailer line does not end with CRLF");
            if (this.#line.length === 0) {
              state = DONE;
              if (!dechunk) emit(CRLF);
            } else {
              this.#trailerLine(dechunk ? null : emit);
              state = TRAILER;
            }
            break;
        }
      }
    } finally {
      this.#state = state;
    }
    if (!dechunk && state < TRAILER) emit(input.subarray(0, i));
    return i;
  }

  /** Checks the trailer line collected and emits it unless it is dropped. */
  #trailerLine(emit: ((bytes: Uint8Array) => void) | null): void {
    const line = this.#line;
    this.#line = [];
    let colon = 0;
    while (colon < line.length && TCHAR[line[colon]]) colon++;
    if (colon === 0 || line[colon] !== 58) throw this.error("Invalid trailer field");
    for (let j = colon + 1; j < line.length; j++) {
      const c = line[j];
      if (c < 32 && c !== 9 || c === 127) throw this.error("Invalid trailer field");
    }
    if (!emit) return;
    const name = String.fromCharCode(...line.slice(0, colon)).toLowerCase();
    if (NOT_IN_TRAILERS.has(name) || name.startsWith("proxy-")) return;
    const bytes = new Uint8Array(line.length + 2);
    bytes.set(line);
    bytes.set(CRLF, line.length);
    emit(bytes);
  }
}

/**
 * Sends `head` (when given: bytes, or the text of a head in ISO-8859-1) and
 * then the body framed by `framing` from `src` to `dst`, unchanged but for
 * trailer fields that must not be trailers.
 * `touch` is called on every transfer. Throws {@linkcode HttpError} on broken
 * framing and rethrows socket errors.
 */
export async function relayBody(
  src: BufferedReader,
  dst: Writer,
  framing: Framing,
  head: Uint8Array | string | null,
  touch: () => void,
  error: (msg: string) => HttpError,
): Promise<void> {
  const out = new Batch(dst, head);
  switch (framing.kind) {
    case "none":
      break;
    case "length":
      await relayLength(src, out, framing.length, touch, error);
      break;
    case "close":
      await relayLength(src, out, Infinity, touch, error);
      break;
    case "chunked":
      await relayChunked(src, out, new ChunkedDecoder({ dechunk: false, error }), touch);
      break;
  }
  await out.flush();
}

/**
 * Sends `head` (when given) and then the data of the chunked body from
 * `src` to `dst` without its chunked framing, trailers dropped: for a
 * client that must not receive chunked (HTTP/1.0). The head must carry no
 * `Transfer-Encoding` and no `Content-Length`, and `Connection: close`: the
 * end of the body is the close of `dst`, which the caller does after this.
 * Throws like {@linkcode relayBody}.
 */
export async function relayDechunked(
  src: BufferedReader,
  dst: Writer,
  head: Uint8Array | string | null,
  touch: () => void,
  error: (msg: string) => HttpError,
): Promise<void> {
  const out = new Batch(dst, head);
  await relayChunked(src, out, new ChunkedDecoder({ dechunk: true, error }), touch);
  await out.flush();
}

async function relayLength(
  src: BufferedReader,
  out: Batch,
  length: number,
  touch: () => void,
  error: (msg: string) => HttpError,
): Promise<void> {
  const buffered = src.takeUpTo(length);
  out.add(buffered);
  let left = length - buffered.length;
  if (left === 0) return;
  await out.flush();
  const buf = new Uint8Array(Math.min(PUMP_SIZE, left));
  while (left > 0) {
    const n = await src.readInto(
      left < buf.length ? buf.subarray(0, left) : buf,
    );
    if (n === null) {
      if (length === Infinity) return;
      throw error("Body ended before its Content-Length");
    }
    touch();
    await send(out.dst, buf.subarray(0, n));
    left -= n;
  }
}

/**
 * Runs `decoder` over `src` into `out`: buffered bytes are decoded in place
 * with no await; long chunk data is read straight into one buffer.
 */
async function relayChunked(
  src: BufferedReader,
  out: Batch,
  decoder: ChunkedDecoder,
  touch: () => void,
): Promise<void> {
  const emit = (bytes: Uint8Array) => out.add(bytes);
  let direct: Uint8Array | null = null;
  while (!decoder.done) {
    if (src.buffered === 0) {
      await out.flush();
      const left = decoder.dataLeft;
      if (left >= DIRECT_AT) {
        direct ??= new Uint8Array(PUMP_SIZE);
        const n = await src.readInto(direct.subarray(0, Math.min(left, direct.length)));
        if (n === null) throw decoder.error("Body ended inside a chunk");
        touch();
        decoder.skipData(n);
        // De-chunked or not, chunk data goes out as it is.
        await send(out.dst, direct.subarray(0, n));
        continue;
      }
      if (await src.fill() === null) throw decoder.error("Body ended inside a chunked body");
      touch();
    }
    src.skip(decoder.feed(src.peek(), emit));
    if (out.size >= FLUSH_AT) await out.flush();
  }
}
