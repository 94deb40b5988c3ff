/** Relaying message bodies as they are framed, byte for byte. */
import { type BufferedReader, type Reader, writeAll, type Writer } from "./buffered_reader.ts";
import { type Framing, type HttpError, latin1 } from "./http_head.ts";

const PUMP_SIZE = 64 * 1024;
/** The largest tunnel buffer, reached only while reads keep filling it. */
const MAX_PUMP_SIZE = 256 * 1024;
const FLUSH_AT = 32 * 1024;
const MAX_LINE = 4096;
const CHUNK_SIZE_LINE = /^([0-9A-Fa-f]{1,15})(;[\t -~]*)?$/;
const CRLF = new Uint8Array([13, 10]);

/** A write to the receiving side failed (it closed or stopped reading). */
export class WriteError extends Error {
  constructor(cause: unknown) {
    super("Write failed", { cause });
    this.name = "WriteError";
  }
}

async function send(dst: Writer, data: Uint8Array): Promise<void> {
  try {
    await writeAll(dst, data);
  } catch (err) {
    throw new WriteError(err);
  }
}

/** Collects small pieces to send in one write. */
class Batch {
  #parts: Uint8Array[] = [];
  #size = 0;
  readonly dst: Writer;

  constructor(dst: Writer, first: Uint8Array | null) {
    this.dst = dst;
    if (first) this.add(first);
  }

  get size(): number {
    return this.#size;
  }

  /** Adds a copy of `bytes` (views into read buffers do not last). */
  add(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.#parts.push(bytes.slice());
    this.#size += bytes.length;
  }

  async flush(): Promise<void> {
    if (this.#size === 0) return;
    const parts = this.#parts;
    let data = parts[0];
    if (parts.length > 1) {
      data = new Uint8Array(this.#size);
      let off = 0;
      for (const p of parts) {
        data.set(p, off);
        off += p.length;
      }
    }
    this.#parts = [];
    this.#size = 0;
    await send(this.dst, data);
  }
}

/**
 * Sends `head` (when given) and then the body framed by `framing` from `src`
 * to `dst`, unchanged. `touch` is called on every transfer. Throws
 * {@linkcode HttpError} on broken framing and rethrows socket errors.
 */
export async function relayBody(
  src: BufferedReader,
  dst: Writer,
  framing: Framing,
  head: Uint8Array | null,
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
      await relayChunked(src, out, touch, error);
      break;
  }
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

async function relayChunked(
  src: BufferedReader,
  out: Batch,
  touch: () => void,
  error: (msg: string) => HttpError,
): Promise<void> {
  for (;;) {
    if (src.buffered === 0 || out.size >= FLUSH_AT) await out.flush();
    const line = await src.readLine(MAX_LINE);
    touch();
    const m = CHUNK_SIZE_LINE.exec(latin1(line));
    if (!m) throw error("Invalid chunk size line");
    const size = parseInt(m[1], 16);
    out.add(line);
    out.add(CRLF);
    if (size === 0) break;
    await relayLength(src, out, size, touch, error);
    if (src.buffered === 0) await out.flush();
    const end = await src.readLine(MAX_LINE);
    if (end.length !== 0) throw error("Chunk data does not end with CRLF");
    out.add(CRLF);
  }
  // Trailer section, ended by an empty line.
  for (let total = 0;;) {
    if (src.buffered === 0) await out.flush();
    const line = await src.readLine(MAX_LINE);
    total += line.length;
    if (total > PUMP_SIZE) throw error("Trailer section is too large");
    if (line.length === 0) break;
    const text = latin1(line);
    if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t -~\x80-\xff]*$/.test(text)) {
      throw error("Invalid trailer field");
    }
    out.add(line);
    out.add(CRLF);
  }
  out.add(CRLF);
}

const SMALL = 2048;

/**
 * Copies `src` to `dst` until `src` ends. The buffer stays small while the
 * stream idles; while it streams, two large buffers take turns so that the
 * next read overlaps the last write.
 */
export async function pump(
  src: Reader,
  dst: Writer,
  touch: () => void,
): Promise<void> {
  let buf = new Uint8Array(SMALL);
  let spare: Uint8Array<ArrayBuffer> | null = null;
  let writing: Promise<void> = Promise.resolve();
  for (;;) {
    const n = await src.read(buf);
    if (n === null) break;
    touch();
    await writing;
    writing = writeAll(dst, buf.subarray(0, n));
    // A failed write surfaces at the next await of `writing`.
    writing.catch(() => {});
    if (n < SMALL && buf.length !== SMALL) {
      // The stream calmed down: back to one small buffer.
      await writing;
      buf = new Uint8Array(SMALL);
      spare = null;
    } else if (buf.length === SMALL) {
      await writing;
      if (n === SMALL) buf = new Uint8Array(PUMP_SIZE);
    } else if (n === buf.length && buf.length < MAX_PUMP_SIZE) {
      // Full reads: grow, and let the old buffer finish its write.
      spare = null;
      buf = new Uint8Array(buf.length * 4);
    } else {
      [buf, spare] = [spare ?? new Uint8Array(buf.length), buf];
    }
  }
  await writing;
}
