/** Parsing, validation and serialisation of HTTP/1.x heads. */
import { Buffer } from "node:buffer";
import { DEFAULTS } from "../defaults.ts";

/** A request or response that cannot be framed safely. */
export class HttpError extends Error {
  readonly status: number;
  readonly proxyError: string;
  /** `cause` is logged, never sent to the client. */
  constructor(
    status: number,
    message: string,
    proxyError = "http_request_error",
    cause?: unknown,
  ) {
    super(message, { cause });
    this.name = "HttpError";
    this.status = status;
    this.proxyError = proxyError;
  }
}

/** Header fields as sent: raw lines, with lower-cased names and values. */
export interface Fields {
  /** The lines as received, `Name: value`. */
  lines: string[];
  /** Lower-cased field names, index-aligned with `lines`. */
  names: string[];
  /** Field values without surrounding white space, index-aligned. */
  values: string[];
  /**
   * The tokens of every `Connection` field that matter, lower-cased: those
   * that name a field of this head, and `close`, `keep-alive`, `upgrade`,
   * `content-length`, `transfer-encoding`, `host`.
   * Others are left out, so that thousands of listed names cost a single
   * pass without allocations.
   */
  connection: ReadonlySet<string>;
}

/** A parsed request head. */
export interface RequestHead extends Fields {
  method: string;
  target: string;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: number;
}

/** A parsed response head. */
export interface ResponseHead extends Fields {
  status: number;
  statusLine: string;
  minor: number;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([!-~]+) HTTP\/1\.([01])$/;
const STATUS_LINE = /^HTTP\/1\.([01]) ([0-9]{3})(?: .*)?$/;

/** Decodes bytes one to one into a string (ISO-8859-1). */
export function latin1(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    .toString("latin1");
}

/** Encodes a string of ISO-8859-1 characters into bytes. */
export function encodeLatin1(text: string): Uint8Array {
  const out = new Uint8Array(text.length);
  encodeLatin1Into(text, out);
  return out;
}

/**
 * Encodes a string of ISO-8859-1 characters into the start of `out` (which
 * has room for `text.length` bytes), one character a byte: a loop costs less
 * than a call out to `TextEncoder` for heads of this size.
 */
export function encodeLatin1Into(text: string, out: Uint8Array): void {
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
}

function splitLines(
  bytes: Uint8Array,
  error: (msg: string) => HttpError,
): string[] {
  const text = latin1(bytes);
  const lines: string[] = [];
  let lineStart = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 32 && c !== 127 || c === 9) continue;
    if (c === 13 && text.charCodeAt(i + 1) === 10) {
      lines.push(text.slice(lineStart, i));
      lineStart = i + 2;
      i++;
      continue;
    }
    throw error(
      `Control character 0x${c.toString(16).padStart(2, "0")} in head`,
    );
  }
  lines.push(text.slice(lineStart));
  return lines;
}

/** `text` without leading and trailing spaces and tabs (OWS, RFC 9110, 5.6.3). */
function trimOws(text: string): string {
  let start = 0;
  let end = text.length;
  while (start < end && isOws(text.charCodeAt(start))) start++;
  while (end > start && isOws(text.charCodeAt(end - 1))) end--;
  return start === 0 && end === text.length ? text : text.slice(start, end);
}

function isOws(c: number): boolean {
  return c === 32 || c === 9;
}

/** The non-empty, lower-cased elements of a comma-separated list value. */
function listElements(value: string, into: { add(token: string): unknown }): void {
  const text = value.toLowerCase();
  let start = 0;
  for (let i = 0; i <= text.length; i++) {
    if (i < text.length && text.charCodeAt(i) !== 44) continue;
    let a = start;
    let b = i;
    while (a < b && isOws(text.charCodeAt(a))) a++;
    while (b > a && isOws(text.charCodeAt(b - 1))) b--;
    if (a < b) into.add(text.slice(a, b));
    start = i + 1;
  }
}

function parseFields(
  lines: string[],
  error: (msg: string) => HttpError,
  tooMany: () => HttpError,
): Fields {
  if (lines.length - 1 > DEFAULTS.maxHeaderFields) throw tooMany();
  const names: string[] = [];
  const values: string[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const c = line.charCodeAt(0);
    if (c === 32 || c === 9) throw error("Obsolete line folding in head");
    const colon = line.indexOf(":");
    if (colon <= 0) throw error("Header line without a name");
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) throw error(`Invalid header name "${name}"`);
    names.push(name.toLowerCase());
    values.push(trimOws(line.slice(colon + 1)));
  }
  return { lines: lines.slice(1), names, values, connection: connectionTokens(names, values) };
}

/** Connection tokens that matter without a field of their name. */
const CONNECTION_OPTIONS = [
  "close",
  "keep-alive",
  "upgrade",
  "content-length",
  "transfer-encoding",
  "host",
];

/** The tokens of a head without a `Connection` field (most heads): shared, never changed. */
const NO_TOKENS: ReadonlySet<string> = new Set();

/** FNV-1a over `text[from, to)`, ASCII letters lower-cased. */
function hashLower(text: string, from: number, to: number): number {
  let h = 0x811c9dc5;
  for (let i = from; i < to; i++) {
    const c = text.charCodeAt(i);
    h = Math.imul(h ^ (c >= 65 && c <= 90 ? c | 32 : c), 16777619);
  }
  return h >>> 0;
}

/**
 * The tokens of the `Connection` fields that name a field of the head or
 * are one of {@linkcode CONNECTION_OPTIONS}: one pass over the values that
 * hashes each token in place, matched against at most one entry per field.
 */
function connectionTokens(names: string[], values: string[]): ReadonlySet<string> {
  if (!names.includes("connection")) return NO_TOKENS;
  const found = new Set<string>();
  const wanted = new Map<number, string[]>();
  // A filter of the wanted hashes' low bits: most tokens stop there.
  const filter = new Uint8Array(4096);
  for (const name of [...names, ...CONNECTION_OPTIONS]) {
    const h = hashLower(name, 0, name.length);
    filter[h & 4095] = 1;
    const same = wanted.get(h);
    if (!same) wanted.set(h, [name]);
    else if (!same.includes(name)) same.push(name);
  }
  const match = (text: string, h: number, start: number, end: number): void => {
    const same = filter[h & 4095] === 1 ? wanted.get(h >>> 0) : undefined;
    if (!same) return;
    const token = text.slice(start, end).toLowerCase();
    if (same.includes(token)) found.add(token);
  };
  for (let f = 0; f < names.length; f++) {
    if (names[f] !== "connection") continue;
    const text = values[f];
    let h = 0x811c9dc5;
    let start = -1; // first character of the token, -1 before it
    let end = -1; // end of the token, -1 while it runs
    let valid = true;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === 44) {
        if (start >= 0 && valid) match(text, h, start, end < 0 ? i : end);
        h = 0x811c9dc5;
        start = end = -1;
        valid = true;
      } else if (c === 32 || c === 9) {
        if (start >= 0 && end < 0) end = i;
      } else {
        if (start < 0) start = i;
        else if (end >= 0) valid = false; // white space inside: no token
        h = Math.imul(h ^ (c >= 65 && c <= 90 ? c | 32 : c), 16777619);
      }
    }
    if (start >= 0 && valid) match(text, h, start, end < 0 ? text.length : end);
  }
  return found;
}

/**
 * Fields that frame or route a message: a `Connection` field never removes
 * them. A request whose `Connection` lists one is refused.
 */
const FRAMING = new Set(["content-length", "transfer-encoding", "host"]);

/**
 * Parses and validates a request head (without its final empty line).
 * Throws {@linkcode HttpError}: 400 for a malformed head or a `Connection`
 * field that lists `Content-Length`, `Transfer-Encoding` or `Host`; 431 for
 * more than `DEFAULTS.maxHeaderFields` fields.
 */
export function parseRequestHead(bytes: Uint8Array): RequestHead {
  const lines = splitLines(bytes, requestError);
  const m = REQUEST_LINE.exec(lines[0]);
  if (!m) throw requestError("Request line is not HTTP/1.x");
  const { names, values, connection, lines: kept } = parseFields(
    lines,
    requestError,
    tooManyInRequest,
  );
  for (const name of FRAMING) {
    if (connection.has(name)) throw requestError(`Connection must not list ${name}`);
  }
  // Built whole, not spread: one shape, no copy.
  return {
    method: m[1],
    target: m[2],
    minor: m[3] === "1" ? 1 : 0,
    lines: kept,
    names,
    values,
    connection,
  };
}

/**
 * Parses and validates a response head (without its final empty line).
 * Throws {@linkcode HttpError} 502 when it is malformed or has more than
 * `DEFAULTS.maxHeaderFields` fields.
 */
export function parseResponseHead(bytes: Uint8Array): ResponseHead {
  const lines = splitLines(bytes, responseError);
  const m = STATUS_LINE.exec(lines[0]);
  if (!m) throw responseError("Upstream status line is not HTTP/1.x");
  const statusLine = lines[0];
  const { names, values, connection, lines: kept } = parseFields(
    lines,
    responseError,
    tooManyInResponse,
  );
  return {
    status: Number(m[2]),
    statusLine,
    minor: m[1] === "1" ? 1 : 0,
    lines: kept,
    names,
    values,
    connection,
  };
}

function requestError(msg: string): HttpError {
  return new HttpError(400, msg);
}

function tooManyInRequest(): HttpError {
  return new HttpError(431, `More than ${DEFAULTS.maxHeaderFields} header fields`);
}

function responseError(msg: string): HttpError {
  return new HttpError(502, msg, "http_protocol_error");
}

function tooManyInResponse(): HttpError {
  return responseError("Upstream response has too many header fields");
}

/** The first value of a field, or `undefined`. */
export function field(fields: Fields, name: string): string | undefined {
  const i = fields.names.indexOf(name);
  return i < 0 ? undefined : fields.values[i];
}

/**
 * How a message body is framed. A `chunked` body with `reusable: false` came
 * in an HTTP/1.0 message (RFC 9112, 6.1): relay it as chunked, then close
 * the connection it came on instead of reusing it.
 */
export type Framing =
  | { kind: "none" }
  | { kind: "length"; length: number }
  | { kind: "chunked"; reusable?: false }
  | { kind: "close" };

const NONE: Framing = { kind: "none" };

/**
 * The framing of a message's body from its Content-Length and
 * Transfer-Encoding fields (RFC 9112, 6.3), strictly: anything a second
 * parser could read differently is an error. `head.minor` 0 (HTTP/1.0)
 * refuses any Transfer-Encoding in a request and makes a chunked response
 * `reusable: false`; without `minor` the message counts as HTTP/1.1.
 */
export function bodyFraming(
  head: Fields & { minor?: number },
  error: (msg: string) => HttpError,
  isRequest: boolean,
): Framing {
  const te: string[] = [];
  let hasTe = false;
  let length = -1;
  const into = { add: (t: string) => te.push(t) };
  for (let i = 0; i < head.names.length; i++) {
    const name = head.names[i];
    if (name === "transfer-encoding") {
      hasTe = true;
      listElements(head.values[i], into);
    } else if (name === "content-length") {
      for (const part of head.values[i].split(",")) {
        const v = trimOws(part);
        if (!/^[0-9]{1,15}$/.test(v)) throw error("Invalid Content-Length");
        const n = Number(v);
        if (length >= 0 && n !== length) {
          throw error("Conflicting Content-Length");
        }
        length = n;
      }
    }
  }
  if (hasTe) {
    if (length >= 0) throw error("Both Content-Length and Transfer-Encoding");
    if (isRequest && head.minor === 0) {
      throw error("Transfer-Encoding in an HTTP/1.0 request");
    }
    if (te.at(-1) === "chunked") {
      if (te.indexOf("chunked") !== te.length - 1) {
        throw error("Transfer-Encoding chunked applied twice");
      }
      return head.minor === 0 ? { kind: "chunked", reusable: false } : { kind: "chunked" };
    }
    if (isRequest) throw error("Request Transfer-Encoding is not chunked");
    return { kind: "close" };
  }
  if (length > 0) return { kind: "length", length };
  if (length === 0 || isRequest) return NONE;
  return { kind: "close" };
}

/**
 * The framing of a response to a request with `method`: validated like
 * {@linkcode bodyFraming} (errors are 502), then none for HEAD, 1xx, 204
 * and 304 (RFC 9112, 6.3).
 */
export function responseFraming(res: ResponseHead, method: string): Framing {
  const framing = bodyFraming(
    res,
    (m) => new HttpError(502, m, "http_protocol_error"),
    false,
  );
  const bare = method === "HEAD" || res.status < 200 || res.status === 204 ||
    res.status === 304;
  return bare ? NONE : framing;
}

/** Serialises a start line and field lines into a head with its end. */
export function encodeHead(startLine: string, lines: string[]): Uint8Array {
  return encodeLatin1(headText(startLine, lines));
}

/** A start line and field lines as the text of a head with its end. */
export function headText(startLine: string, lines: string[]): string {
  let text = startLine + "\r\n";
  for (const line of lines) text += line + "\r\n";
  return text + "\r\n";
}

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "upgrade",
]);

/**
 * The field lines to forward: without hop-by-hop fields (RFC 9110, 7.6.1),
 * those the Connection field names, `Proxy-*`, and any name in `drop`.
 * `Content-Length`, `Transfer-Encoding` and `Host` stay even when
 * `Connection` lists them (a request doing so is refused by
 * {@linkcode parseRequestHead}). Repeated or listed `Content-Length` values
 * (`5, 5`) become one `Content-Length: 5` line; validate them first with
 * {@linkcode bodyFraming}, which refuses differing values.
 */
export function endToEndLines(fields: Fields, drop?: string): string[] {
  const out: string[] = [];
  let lengthSeen = false;
  for (let i = 0; i < fields.names.length; i++) {
    const name = fields.names[i];
    if (
      HOP_BY_HOP.has(name) || name === drop || name.startsWith("proxy-") ||
      (fields.connection.has(name) && !FRAMING.has(name))
    ) continue;
    if (name === "content-length") {
      if (lengthSeen) continue;
      lengthSeen = true;
      const value = fields.values[i];
      const comma = value.indexOf(",");
      if (comma >= 0 || fields.names.indexOf(name, i + 1) >= 0) {
        out.push(`Content-Length: ${trimOws(comma >= 0 ? value.slice(0, comma) : value)}`);
        continue;
      }
    }
    out.push(fields.lines[i]);
  }
  return out;
}
