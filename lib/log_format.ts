/**
 * Log output for pipelines: a LogTape formatter for JSON lines, and the
 * access log (one line per exchange or tunnel).
 *
 * @module
 */

import type { Logger, LogRecord } from "@logtape/logtape";

const RESERVED = new Set(["time", "level", "category", "message"]);

/**
 * Formats a LogTape record as one JSON object on one line: `time` (ISO
 * 8601), `level`, `category` (dot-separated), `message` (rendered), then
 * the record's structured fields. A field named like one of the first four
 * is written with a leading underscore. Bigints become decimal strings and
 * errors `{name, message}`.
 *
 * @example
 * ```ts ignore
 * import { configure, getStreamSink } from "@logtape/logtape";
 * await configure({
 *   sinks: { stderr: getStreamSink(Deno.stderr.writable, { formatter: jsonLinesFormatter }) },
 *   loggers: [{ category: ["dprl"], lowestLevel: "info", sinks: ["stderr"] }],
 * });
 * // {"time":"2026-01-01T00:00:00.000Z","level":"info","category":"dprl","message":"listening","url":"http://127.0.0.1:8080/"}
 * ```
 */
export function jsonLinesFormatter(record: LogRecord): string {
  const out: Record<string, unknown> = {
    time: new Date(record.timestamp).toISOString(),
    level: record.level,
    category: record.category.join("."),
    message: renderMessage(record.message),
  };
  for (const [key, value] of Object.entries(record.properties)) {
    out[RESERVED.has(key) ? `_${key}` : key] = value;
  }
  try {
    return JSON.stringify(out, replacer) + "\n";
  } catch {
    // A field that JSON cannot hold (a circular structure): write it as text.
    for (const [key, value] of Object.entries(out)) out[key] = jsonSafe(value);
    return JSON.stringify(out, replacer) + "\n";
  }
}

/** One exchange (plain HTTP) or tunnel (CONNECT, upgrade) for the access log. */
export interface AccessEntry {
  /** The client's address, `host:port`. */
  client: string;
  /** The request method (`CONNECT` for tunnels). */
  method: string;
  /** The upstream host key. */
  host: string;
  /** The status the client got. */
  status: number;
  /** Bytes sent towards the upstream (bodies and tunnel data). */
  bytesUp: number;
  /** Bytes sent towards the client (bodies and tunnel data). */
  bytesDown: number;
  /** Time from the request head to the end of the exchange or tunnel, in milliseconds. */
  durationMs: number;
  /** Time spent waiting for a slot in a queue, in milliseconds, once a queue exists. */
  waitMs?: number;
  /** The parent proxy it went through (`host:port`), if any. */
  via?: string;
  /**
   * Who the client is: the name in its TLS client certificate, else the user
   * of its `Proxy-Authorization`; absent when neither names it.
   */
  user?: string;
}

/**
 * Formats an access log line:
 * `client method host status up=N down=N duration=S [wait=S] [via=host:port] [user=name]`,
 * durations in seconds rounded to the millisecond.
 *
 * @example
 * ```ts
 * formatAccessLine({
 *   client: "127.0.0.1:50312", method: "CONNECT", host: "api.example.com",
 *   status: 200, bytesUp: 517, bytesDown: 6120, durationMs: 1234.5,
 * });
 * // "127.0.0.1:50312 CONNECT api.example.com 200 up=517 down=6120 duration=1.235"
 * ```
 */
export function formatAccessLine(entry: AccessEntry): string {
  const f = accessFields(entry);
  let line =
    `${f.client} ${f.method} ${f.host} ${f.status} up=${f.bytesUp} down=${f.bytesDown} duration=${f.duration}`;
  if (f.wait !== undefined) line += ` wait=${f.wait}`;
  if (f.via !== undefined) line += ` via=${f.via}`;
  if (f.user !== undefined) line += ` user=${f.user}`;
  return line;
}

const ACCESS_TEMPLATE =
  "{client} {method} {host} {status} up={bytesUp} down={bytesDown} duration={duration}";

/**
 * Logs one access log entry at level info. Its message is the
 * {@linkcode formatAccessLine} line; its structured fields are the entry's,
 * with `duration` and `wait` in seconds, so the JSON format carries both.
 *
 * @example
 * ```ts ignore
 * const access = getLogger(["dprl", "access"]);
 * logAccess(access, { client, method, host, status, bytesUp, bytesDown, durationMs });
 * ```
 */
export function logAccess(logger: Logger, entry: AccessEntry): void {
  const fields = accessFields(entry);
  let template = ACCESS_TEMPLATE;
  if (fields.wait !== undefined) template += " wait={wait}";
  if (fields.via !== undefined) template += " via={via}";
  if (fields.user !== undefined) template += " user={user}";
  logger.info(template, fields);
}

interface AccessFields extends Record<string, unknown> {
  client: string;
  method: string;
  host: string;
  status: number;
  bytesUp: number;
  bytesDown: number;
  duration: number;
  wait?: number;
  via?: string;
  user?: string;
}

function accessFields(entry: AccessEntry): AccessFields {
  const fields: AccessFields = {
    client: entry.client,
    method: entry.method,
    host: entry.host,
    status: entry.status,
    bytesUp: entry.bytesUp,
    bytesDown: entry.bytesDown,
    duration: seconds(entry.durationMs),
  };
  if (entry.waitMs !== undefined) fields.wait = seconds(entry.waitMs);
  if (entry.via !== undefined) fields.via = entry.via;
  if (entry.user !== undefined) fields.user = entry.user;
  return fields;
}

function seconds(ms: number): number {
  return Math.round(ms) / 1000;
}

function renderMessage(parts: readonly unknown[]): string {
  let text = "";
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    text += i % 2 === 0 || typeof part === "string" ? String(part) : stringify(part);
  }
  return text;
}

function stringify(value: unknown): string {
  const safe = jsonSafe(value);
  return typeof safe === "string" ? safe : JSON.stringify(safe, replacer) ?? String(value);
}

function jsonSafe(value: unknown): unknown {
  try {
    JSON.stringify(value, replacer);
    return value;
  } catch {
    return String(value);
  }
}

function replacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) return { name: value.name, message: value.message };
  return value;
}
