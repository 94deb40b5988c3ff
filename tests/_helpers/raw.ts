/**
 * Raw socket helpers for the tests: a buffered reader over a `Deno.Conn` in
 * which every wait is bounded, an HTTP/1.1 response parser that keeps the
 * exact bytes, a polling helper and a pause.
 *
 * @module
 */

/** Thrown when a bounded wait runs out. */
export class WaitTimeoutError extends Error {
  /** Creates the error naming what was awaited. */
  constructor(what: string, ms: number) {
    super(`Timed out after ${ms} ms waiting for ${what}`);
    this.name = "WaitTimeoutError";
  }
}

/** The default bound of one wait, in milliseconds. */
export const WAIT_MS = 10_000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Encodes a string as UTF-8 bytes. */
export function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}

/** Decodes UTF-8 (or Latin-1-safe ASCII) bytes. */
export function text(b: Uint8Array): string {
  return decoder.decode(b);
}

/** Concatenates byte arrays. */
export function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Hex SHA-256 of some bytes. */
export async function sha256(b: Uint8Array): Promise<string> {
  const d = new Uint8Array(
    await crypto.subtle.digest("SHA-256", b as Uint8Array<ArrayBuffer>),
  );
  return Array.from(d, (x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * Resolves after `ms` milliseconds. For simulated work or pacing only (an
 * upstream holding a request, arrivals spread over time): to wait until
 * something has happened, use {@linkcode waitFor} on the condition.
 */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Races a promise against a timer that is always cleared. */
export async function withTimeout<T>(
  p: Promise<T>,
  ms: number,
  what: string,
): Promise<T> {
  if (!Number.isFinite(ms)) return await p;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new WaitTimeoutError(what, ms)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `check`, or `false` where it throws: for {@linkcode waitFor} on a condition
 * whose check fails while it does not hold yet (a limiter refusing while Redis
 * is down, say).
 */
export function orFalse<T>(check: () => T | Promise<T>): () => Promise<T | false> {
  return async () => {
    try {
      return await check();
    } catch {
      return false;
    }
  };
}

/**
 * Polls `check` until it returns a truthy value (which is returned) or the
 * bound runs out (which throws, naming `what` and the last value seen).
 */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  what: string | (() => string),
  ms = WAIT_MS,
): Promise<T> {
  const end = Date.now() + ms;
  let last: T | undefined;
  while (true) {
    last = await check();
    if (last) return last;
    if (Date.now() > end) {
      const w = typeof what === "function" ? what() : what;
      throw new WaitTimeoutError(`${w} (last value ${String(last)})`, ms);
    }
    await sleep(10);
  }
}

/**
 * A buffered reader and writer over one connection. Every read waits at most
 * `ms` milliseconds; when a wait runs out the connection is closed (so no
 * read stays pending) and a {@linkcode WaitTimeoutError} is thrown.
 */
export class BufferedConn {
  readonly conn: Deno.Conn;
  #buf: Uint8Array = new Uint8Array(0);
  #eof = false;
  #closed = false;
  #pending: Promise<number | null> | null = null;
  #chunk = new Uint8Array(64 * 1024);

  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }

  /** Opens a TCP connection and wraps it. */
  static async connect(
    addr: { hostname: string; port: number } | URL,
  ): Promise<BufferedConn> {
    const opts = addr instanceof URL
      ? { hostname: addr.hostname.replace(/^\[|\]$/g, ""), port: +addr.port }
      : addr;
    return new BufferedConn(await Deno.connect(opts));
  }

  /** True after the peer closed its side. */
  get eof(): boolean {
    return this.#eof && this.#buf.length === 0;
  }

  /** True once {@linkcode close} ran. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Bytes received but not consumed yet. */
  get buffered(): Uint8Array {
    return this.#buf;
  }

  /** Writes all of `data` (a string is UTF-8 encoded). */
  async write(data: string | Uint8Array, ms = WAIT_MS): Promise<void> {
    const bytes = typeof data === "string" ? utf8(data) : data;
    let off = 0;
    while (off < bytes.length) {
      off += await this.#bounded(
        this.conn.write(bytes.subarray(off)),
        ms,
        "a write",
      );
    }
  }

  /** Closes the write side (sends FIN). */
  async closeWrite(): Promise<void> {
    await this.conn.closeWrite();
  }

  /** Closes the connection; safe to call twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // already closed
    }
  }

  async #bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    try {
      return await withTimeout(p, ms, what);
    } catch (e) {
      if (e instanceof WaitTimeoutError) {
        this.close();
        // Let the pending op settle after the close so no op leaks.
        await p.catch(() => {});
      }
      throw e;
    }
  }

  /** Reads more bytes into the buffer; false at EOF. */
  async #fill(ms: number, what: string): Promise<boolean> {
    if (this.#eof) return false;
    if (this.#closed) throw new Error("Connection is closed");
    this.#pending ??= this.conn.read(this.#chunk);
    let n: number | null;
    try {
      n = await this.#bounded(this.#pending, ms, what);
    } catch (e) {
      this.#pending = null;
      if (e instanceof WaitTimeoutError) throw e;
      // A reset counts as EOF for the tests' purposes.
      if (
        e instanceof Deno.errors.ConnectionReset ||
        e instanceof Deno.errors.BrokenPipe ||
        e instanceof Deno.errors.BadResource ||
        e instanceof Deno.errors.Interrupted
      ) {
        this.#eof = true;
        return false;
      }
      throw e;
    }
    this.#pending = null;
    if (n === null) {
      this.#eof = true;
      return false;
    }
    const next = new Uint8Array(this.#buf.length + n);
    next.set(this.#buf);
    next.set(this.#chunk.subarray(0, n), this.#buf.length);
    this.#buf = next;
    return true;
  }

  /** Takes `n` bytes from the buffer. */
  #take(n: number): Uint8Array {
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }

  /**
   * Reads up to and including `delim`; null at EOF before it. The bytes read
   * so far stay buffered when EOF comes first.
   */
  async readUntil(
    delim: Uint8Array,
    ms = WAIT_MS,
    what = "data",
  ): Promise<Uint8Array | null> {
    let from = 0;
    while (true) {
      const i = indexOf(this.#buf, delim, from);
      if (i >= 0) return this.#take(i + delim.length);
      from = Math.max(0, this.#buf.length - delim.length + 1);
      if (!await this.#fill(ms, what)) return null;
    }
  }

  /** Reads one CRLF-terminated line without its CRLF; null at EOF. */
  async readLine(ms = WAIT_MS): Promise<string | null> {
    const b = await this.readUntil(CRLF, ms, "a line");
    return b === null ? null : text(b.subarray(0, b.length - 2));
  }

  /** Reads exactly `n` bytes; throws at an early EOF. */
  async readExact(n: number, ms = WAIT_MS): Promise<Uint8Array> {
    while (this.#buf.length < n) {
      if (!await this.#fill(ms, `${n} bytes`)) {
        throw new Error(
          `EOF after ${this.#buf.length} of ${n} expected bytes`,
        );
      }
    }
    return this.#take(n);
  }

  /** Reads whatever arrives next (at least one byte); null at EOF. */
  async readSome(ms = WAIT_MS): Promise<Uint8Array | null> {
    if (this.#buf.length === 0 && !await this.#fill(ms, "some bytes")) {
      return null;
    }
    return this.#take(this.#buf.length);
  }

  /** Reads everything until the peer closes. */
  async readToEnd(ms = WAIT_MS): Promise<Uint8Array> {
    while (await this.#fill(ms, "the end of the stream"));
    return this.#take(this.#buf.length);
  }

  /**
   * Waits until the peer closes the connection (EOF or reset) and returns
   * the bytes that came before it. Throws when it stays open past `ms`.
   */
  async waitClosed(ms = WAIT_MS): Promise<Uint8Array> {
    return await this.readToEnd(ms);
  }
}

/** CRLF as bytes. */
export const CRLF: Uint8Array = utf8("\r\n");
/** CRLF CRLF as bytes. */
export const CRLFCRLF: Uint8Array = utf8("\r\n\r\n");

/** Index of `needle` in `hay` at or after `from`, or -1. */
export function indexOf(
  hay: Uint8Array,
  needle: Uint8Array,
  from = 0,
): number {
  const first = needle[0];
  const last = hay.length - needle.length;
  outer: for (let i = from; i <= last; i++) {
    if (hay[i] !== first) continue;
    for (let j = 1; j < needle.length; j++) {
      if (hay[i + j] !== needle[j]) continue outer;
    }
    return i;
  }
  return -1;
}

/** A parsed head: the start line and the header fields in order. */
export interface Head {
  /** The start line. */
  startLine: string;
  /** Header fields in order, names as sent. */
  fields: [string, string][];
  /** The raw bytes of the head, CRLFCRLF included. */
  raw: Uint8Array;
}

/** Looks up a header (case-insensitive); the values joined with ", ". */
export function header(head: Head, name: string): string | null {
  const n = name.toLowerCase();
  const vals = head.fields.filter(([k]) => k.toLowerCase() === n).map((
    [, v],
  ) => v);
  return vals.length ? vals.join(", ") : null;
}

/** Every value of a header (case-insensitive). */
export function headerAll(head: Head, name: string): string[] {
  const n = name.toLowerCase();
  return head.fields.filter(([k]) => k.toLowerCase() === n).map(([, v]) => v);
}

/** Parses the bytes of a head (CRLFCRLF included). */
export function parseHead(raw: Uint8Array): Head {
  const lines = text(raw).split("\r\n");
  const startLine = lines[0];
  const fields: [string, string][] = [];
  for (const line of lines.slice(1)) {
    if (line === "") continue;
    const i = line.indexOf(":");
    if (i < 0) fields.push([line, ""]);
    else fields.push([line.slice(0, i), line.slice(i + 1).trim()]);
  }
  return { startLine, fields, raw };
}

/** Reads one head; null when the stream ends before any byte of it. */
export async function readHead(
  c: BufferedConn,
  ms = WAIT_MS,
): Promise<Head | null> {
  const raw = await c.readUntil(CRLFCRLF, ms, "a head");
  if (raw === null) {
    if (c.buffered.length) {
      throw new Error(
        `EOF inside a head: ${JSON.stringify(text(c.buffered))}`,
      );
    }
    return null;
  }
  return parseHead(raw);
}

/** A response read from a raw socket. */
export interface RawResponse {
  /** The status code. */
  status: number;
  /** The head of the final response. */
  head: Head;
  /** Heads of interim (1xx) responses that came before it. */
  interim: Head[];
  /** The decoded body (chunked framing removed). */
  body: Uint8Array;
  /** The body bytes exactly as they came on the wire (chunk framing kept). */
  wireBody: Uint8Array;
  /** Trailer fields of a chunked body. */
  trailers: [string, string][];
  /** True when the body was delimited by the close of the connection. */
  closeDelimited: boolean;
}

/** Status code of a status line. */
export function statusOf(head: Head): number {
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(head.startLine);
  if (!m) throw new Error(`Not a status line: ${head.startLine}`);
  return Number(m[1]);
}

/**
 * Reads a chunked body from `c`. Returns the decoded body, the wire bytes
 * and the trailer fields.
 */
export async function readChunked(
  c: BufferedConn,
  ms = WAIT_MS,
): Promise<
  { body: Uint8Array; wire: Uint8Array; trailers: [string, string][] }
> {
  const parts: Uint8Array[] = [];
  const wire: Uint8Array[] = [];
  const trailers: [string, string][] = [];
  while (true) {
    const lineBytes = await c.readUntil(CRLF, ms, "a chunk size");
    if (lineBytes === null) throw new Error("EOF inside a chunked body");
    wire.push(lineBytes);
    const line = text(lineBytes).trim();
    const size = parseInt(line.split(";")[0], 16);
    if (!Number.isFinite(size)) throw new Error(`Bad chunk size ${line}`);
    if (size === 0) {
      while (true) {
        const t = await c.readUntil(CRLF, ms, "a trailer line");
        if (t === null) throw new Error("EOF inside trailers");
        wire.push(t);
        const tl = text(t.subarray(0, t.length - 2));
        if (tl === "") break;
        const i = tl.indexOf(":");
        trailers.push([tl.slice(0, i), tl.slice(i + 1).trim()]);
      }
      break;
    }
    const data = await c.readExact(size, ms);
    parts.push(data);
    wire.push(data);
    wire.push(await c.readExact(2, ms));
  }
  return { body: concat(parts), wire: concat(wire), trailers };
}

/**
 * Reads one full response (interim 1xx heads first) framed as HTTP/1.1
 * says: no body for HEAD/1xx/204/304, then chunked, Content-Length or
 * close-delimited. `ms` bounds each single wait.
 */
export async function readResponse(
  c: BufferedConn,
  opts: { method?: string; ms?: number } = {},
): Promise<RawResponse> {
  const ms = opts.ms ?? WAIT_MS;
  const interim: Head[] = [];
  while (true) {
    const head = await readHead(c, ms);
    if (head === null) throw new Error("Connection closed before a response");
    const status = statusOf(head);
    if (status >= 100 && status < 200 && status !== 101) {
      interim.push(head);
      continue;
    }
    const res: RawResponse = {
      status,
      head,
      interim,
      body: new Uint8Array(0),
      wireBody: new Uint8Array(0),
      trailers: [],
      closeDelimited: false,
    };
    if (
      opts.method === "HEAD" || status === 101 || status === 204 ||
      status === 304
    ) {
      return res;
    }
    const te = header(head, "transfer-encoding");
    const cl = header(head, "content-length");
    if (te && /chunked\s*$/i.test(te)) {
      const { body, wire, trailers } = await readChunked(c, ms);
      res.body = body;
      res.wireBody = wire;
      res.trailers = trailers;
    } else if (cl !== null) {
      res.body = await c.readExact(Number(cl), ms);
      res.wireBody = res.body;
    } else {
      res.body = await c.readToEnd(ms);
      res.wireBody = res.body;
      res.closeDelimited = true;
    }
    return res;
  }
}

/** Builds an HTTP/1.1 request as a string. */
export function request(
  method: string,
  target: string,
  headers: Record<string, string> | [string, string][] = {},
  body = "",
): string {
  const fields = Array.isArray(headers) ? headers : Object.entries(headers);
  let s = `${method} ${target} HTTP/1.1\r\n`;
  for (const [k, v] of fields) s += `${k}: ${v}\r\n`;
  if (
    body &&
    !fields.some(([k]) => /^(content-length|transfer-encoding)$/i.test(k))
  ) {
    s += `Content-Length: ${utf8(body).length}\r\n`;
  }
  return s + "\r\n" + body;
}

/**
 * Sends one request over a fresh connection to `addr` and reads the
 * response; closes the connection.
 */
export async function rawExchange(
  addr: { hostname: string; port: number } | URL,
  req: string | Uint8Array,
  opts: { method?: string; ms?: number } = {},
): Promise<RawResponse> {
  const c = await BufferedConn.connect(addr);
  try {
    await c.write(req);
    return await readResponse(c, opts);
  } finally {
    c.close();
  }
}
