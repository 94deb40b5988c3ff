/** Parsing, validation and serialisation of HTTP/1.x heads. */
import { Buffer } from "node:buffer";
import { DEFAULTS } from "../defaults.ts";

/** A request or response that cannot be framed safely. */
export class HttpError extends Error {
  readonly status: number;
  readonly proxyError: string;
  constructor(
    status: number,
    message: string,
    proxyError = "http_request_error",
  ) {
    super(message);
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
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^ ]+) HTTP\/1\.([01])$/;
const STATUS_LINE = /^HTTP\/1\.([01]) ([0-9]{3})(?: .*)?$/;

/** Decodes bytes one to one into a string (ISO-8859-1). */
export function latin1(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    .toString("latin1");
}

/** Encodes a string of ISO-8859-1 characters into bytes. */
export function encodeLatin1(text: string): Uint8Array {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
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

function parseFields(
  lines: string[],
  error: (msg: string) => HttpError,
): Fields {
  const names: string[] = [];
  const values: string[] = [];
  const kept: string[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const c = line.charCodeAt(0);
    if (c === 32 || c === 9) throw error("Obsolete line folding in head");
    const colon = line.indexOf(":");
    if (colon <= 0) throw error("Header line without a name");
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) throw error(`Invalid header name "${name}"`);
    names.push(name.toLowerCase());
    values.push(line.slice(colon + 1).trim());
    kept.push(line);
  }
  return { lines: kept, names, values };
}

/** Parses and validates a request head (without its final empty line). */
export function parseRequestHead(bytes: Uint8Array): RequestHead {
  const error = (msg: string) => new HttpError(400, msg);
  const lines = splitLines(bytes, error);
  const m = REQUEST_LINE.exec(lines[0]);
  if (!m) throw error("Request line is not HTTP/1.x");
  if (lines.length - 1 > DEFAULTS.maxHeaderFields) {
    throw new HttpError(431, `More than ${DEFAULTS.maxHeaderFields} header fields`);
  }
  return {
    method: m[1],
    target: m[2],
    minor: m[3] === "1" ? 1 : 0,
    ...parseFields(lines, error),
  };
}

/** Parses and validates a response head (without its final empty line). */
export function parseResponseHead(bytes: Uint8Array): ResponseHead {
  const error = (msg: string) => new HttpError(502, msg, "http_protocol_error");
  const lines = splitLines(bytes, error);
  const m = STATUS_LINE.exec(lines[0]);
  if (!m) throw error("Upstream status line is not HTTP/1.x");
  return {
    status: Number(m[2]),
    statusLine: lines[0],
    minor: m[1] === "1" ? 1 : 0,
    ...parseFields(lines, error),
  };
}

/** The first value of a field, or `undefined`. */
export function field(fields: Fields, name: string): string | undefined {
  const i = fields.names.indexOf(name);
  return i < 0 ? undefined : fields.values[i];
}

/** Every comma-separated element of every instance of a field, lower-cased. */
export function fieldTokens(fields: Fields, name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < fields.names.length; i++) {
    if (fields.names[i] !== name) continue;
    for (const part of fields.values[i].split(",")) {
      const t = part.trim().toLowerCase();
      if (t) out.push(t);
    }
  }
  return out;
}

/** How a message body is framed. */
export type Framing =
  | { kind: "none" }
  | { kind: "length"; length: number }
  | { kind: "chunked" }
  | { kind: "close" };

const NONE: Framing = { kind: "none" };

/**
 * The framing of a message's body from its Content-Length and
 * Transfer-Encoding fields (RFC 9112, 6.3), strictly: anything a second
 * parser could read differently is an error.
 */
export function bodyFraming(
  fields: Fields,
  error: (msg: string) => HttpError,
  isRequest: boolean,
): Framing {
  let te: string[] | null = null;
  let length = -1;
  for (let i = 0; i < fields.names.length; i++) {
    const name = fields.names[i];
    if (name === "transfer-encoding") {
      te ??= [];
      for (const part of fields.values[i].split(",")) {
        const t = part.trim().toLowerCase();
        if (t) te.push(t);
      }
    } else if (name === "content-length") {
      for (const part of fields.values[i].split(",")) {
        const v = part.trim();
        if (!/^[0-9]{1,15}$/.test(v)) throw error("Invalid Content-Length");
        const n = Number(v);
        if (length >= 0 && n !== length) {
          throw error("Conflicting Content-Length");
        }
        length = n;
      }
    }
  }
  if (te !== null) {
    if (length >= 0) throw error("Both Content-Length and Transfer-Encoding");
    if (te.at(-1) === "chunked") {
      if (te.indexOf("chunked") !== te.length - 1) {
        throw error("Transfer-Encoding chunked applied twice");
      }
      return { kind: "chunked" };
    }
    if (isRequest) throw error("Request Transfer-Encoding is not chunked");
    return { kind: "close" };
  }
  if (length > 0) return { kind: "length", length };
  if (length === 0 || isRequest) return NONE;
  return { kind: "close" };
}

/** Serialises a start line and field lines into a head with its end. */
export function encodeHead(startLine: string, lines: string[]): Uint8Array {
  let text = startLine + "\r\n";
  for (const line of lines) text += line + "\r\n";
  return encodeLatin1(text + "\r\n");
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
 */
export function endToEndLines(fields: Fields, drop?: string): string[] {
  const listed = fieldTokens(fields, "connection");
  const out: string[] = [];
  for (let i = 0; i < fields.names.length; i++) {
    const name = fields.names[i];
    if (
      HOP_BY_HOP.has(name) || name === drop || name.startsWith("proxy-") ||
      (listed.length > 0 && listed.includes(name))
    ) continue;
    out.push(fields.lines[i]);
  }
  return out;
}
