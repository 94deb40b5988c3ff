/**
 * The failures of an exchange or tunnel, named where they happen, and the
 * one place that turns each into the status, `Proxy-Status` error and
 * message the client gets, and into the bytes of that reply. Messages sent to clients name the problem in
 * dprl's words; causes (system error texts) go to the log only.
 *
 * @module
 */

import { AuthBusyError } from "../access/proxy_auth.ts";
import { LimiterUnavailableError, RateLimitedError } from "../limit/limiter.ts";
import { encodeHead, encodeLatin1, HttpError } from "./http_head.ts";

/** Why a host's slot was refused: at once, after waiting, or a full line. */
export type LimitRefusal = "limit" | "queue_timeout" | "queue_full";

/** Options of {@linkcode LimitReachedError}. */
export interface LimitReachedOptions {
  /** Why; default `"limit"`. */
  reason?: LimitRefusal;
  /** An estimate of when a slot may be free, in seconds. */
  retryAfter?: number;
  /** How long the request waited, in milliseconds. */
  waitedMs?: number;
}

/** The host is at its connection limit (and a wait for a slot, if any, failed). */
export class LimitReachedError extends Error {
  /** The host key. */
  readonly key: string;
  /** Its limit. */
  readonly limit: number;
  /** Refused at once, after a wait, or because the line was full. */
  readonly reason: LimitRefusal;
  /** An estimate of when to try again, in whole seconds (at least 1). */
  readonly retryAfter: number;
  /** The `Proxy-Status` details. */
  readonly details: string;
  /** Creates the error for `key` at `limit`. */
  constructor(key: string, limit: number, options: LimitReachedOptions = {}) {
    super(`Connection limit reached for ${key} (limit ${limit})`);
    this.name = "LimitReachedError";
    this.key = key;
    this.limit = limit;
    this.reason = options.reason ?? "limit";
    this.retryAfter = Math.max(1, Math.ceil(options.retryAfter ?? 1));
    this.details = this.reason === "queue_timeout"
      ? `waited ${formatSeconds(options.waitedMs ?? 0)}`
      : this.reason === "queue_full"
      ? "queue full"
      : this.message;
  }
}

/** The host asked, with `Retry-After`, not to be sent anything until a time not yet reached. */
export class HostPausedError extends Error {
  /** The host key. */
  readonly key: string;
  /** When the pause ends (ms since epoch). */
  readonly until: number;
  /** The status that asked for the pause. */
  readonly status: number;
  /** Whole seconds left, at least 1. */
  readonly retryAfter: number;
  /** Creates the error for `key`, paused until `until` by a response of `status`. */
  constructor(key: string, until: number, status: number, retryAfter: number) {
    const asked = status > 0 ? `${status} with Retry-After` : "Retry-After, to the fleet";
    super(`${key} asked for a pause (${asked}) until ${new Date(until).toISOString()}`);
    this.name = "HostPausedError";
    this.key = key;
    this.until = until;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** Seconds to a tenth, rounded down: a wait is never said to be longer than it was. */
function formatSeconds(ms: number): string {
  return `${(Math.floor(ms / 100) / 10).toFixed(1)}s`;
}

/** Why an upstream connection could not be opened. */
export type ConnectFailure = "refused" | "timeout" | "unavailable";

/** An upstream connection could not be opened. */
export class ConnectError extends Error {
  /** The host key. */
  readonly key: string;
  /** What went wrong. */
  readonly failure: ConnectFailure;
  /** Creates the error; `cause` is logged, never sent to the client. */
  constructor(key: string, failure: ConnectFailure, cause?: unknown) {
    super(CONNECT_MESSAGES[failure](key), { cause });
    this.name = "ConnectError";
    this.key = key;
    this.failure = failure;
  }
}

const CONNECT_MESSAGES: Record<ConnectFailure, (key: string) => string> = {
  refused: (key) => `Connection to ${key} refused`,
  timeout: (key) => `Connecting to ${key} timed out`,
  unavailable: (key) => `Cannot connect to ${key}`,
};

const CONNECT_REPLIES: Record<ConnectFailure, [number, string]> = {
  refused: [502, "connection_refused"],
  timeout: [504, "connection_timeout"],
  unavailable: [502, "destination_unavailable"],
};

/** Why a parent proxy gave no way through: its answer, or no answer. */
export type ParentFailure = "status" | "timeout" | "unavailable";

/** Options of {@linkcode ParentError}. */
export interface ParentErrorOptions {
  /** The target's host key. */
  key: string;
  /** The parent as `host:port`, the `Proxy-Status` `next-hop`. */
  nextHop: string;
  /** What went wrong. */
  failure: ParentFailure;
  /** The parent's status, for `status`. */
  status?: number;
  /** The `Proxy-Status` details, when other than the message. */
  details?: string;
  /** Logged, never sent to the client. */
  cause?: unknown;
}

/**
 * A parent proxy refused the way to the target (answered a `CONNECT` other
 * than 2xx, or 407 to a request), could not be reached, or did not answer
 * within the connect timeout.
 */
export class ParentError extends Error {
  /** The target's host key. */
  readonly key: string;
  /** The parent as `host:port`. */
  readonly nextHop: string;
  /** What went wrong. */
  readonly failure: ParentFailure;
  /** The parent's status, for `status`. */
  readonly status?: number;
  /** The `Proxy-Status` details, when other than the message. */
  readonly details?: string;
  /** Creates the error. */
  constructor(o: ParentErrorOptions) {
    super(
      o.failure === "status"
        ? `Parent proxy ${o.nextHop} answered ${o.status} for ${o.key}`
        : o.failure === "timeout"
        ? `Parent proxy ${o.nextHop} did not answer in time for ${o.key}`
        : `Cannot reach ${o.key} through parent proxy ${o.nextHop}`,
      { cause: o.cause },
    );
    this.name = "ParentError";
    this.key = o.key;
    this.nextHop = o.nextHop;
    this.failure = o.failure;
    this.status = o.status;
    this.details = o.details;
  }
}

const PARENT_REPLIES: Record<ParentFailure, [number, string]> = {
  status: [502, "http_response_status_code"],
  timeout: [504, "connection_timeout"],
  unavailable: [502, "destination_unavailable"],
};

/** The upstream closed or failed before its response was complete. */
export class UpstreamClosedError extends Error {
  /** Creates the error for host key `key`. */
  constructor(key: string, cause?: unknown) {
    super(`Upstream ${key} closed the connection`, { cause });
    this.name = "UpstreamClosedError";
  }
}

/** The upstream sent nothing within the idle timeout. */
export class UpstreamTimeoutError extends Error {
  /** Creates the error for host key `key`. */
  constructor(key: string) {
    super(`Upstream ${key} did not answer in time`);
    this.name = "UpstreamTimeoutError";
  }
}

/**
 * The client closed its connection while its request waited for a slot, a
 * dial or an answer: nobody is left to answer, and nothing failed upstream.
 */
export class ClientGoneError extends Error {
  /** Creates the error. */
  constructor() {
    super("Client connection closed");
    this.name = "ClientGoneError";
  }
}

/** The client may not use the proxy (its address, or too many connections). */
export class ClientRefusedError extends Error {
  /** 403 for an address, 503 for too many connections. */
  readonly status: number;
  /** Creates the error with the client-facing message. */
  constructor(message: string, status = 403) {
    super(message);
    this.name = "ClientRefusedError";
    this.status = status;
  }
}

/** The request lacks valid `Proxy-Authorization`. */
export class ProxyAuthRequiredError extends Error {
  /** The `Proxy-Authenticate` challenge to send. */
  readonly challenge: string;
  /** Creates the error with the challenge to send. */
  constructor(challenge: string) {
    super("Proxy authentication required");
    this.name = "ProxyAuthRequiredError";
    this.challenge = challenge;
  }
}

/** What the client is told about a failure. */
export interface ErrorReply {
  /** The HTTP status. */
  status: number;
  /** The `Proxy-Status` error token (RFC 9209). */
  proxyError: string;
  /** One line for the body and the `Proxy-Status` details. */
  message: string;
  /**
   * The upstream failed (counted per host, logged at info); refusals and
   * client errors are logged at debug, never once per request at info.
   */
  upstream: boolean;
  /** The `Proxy-Status` details, when other than the message. */
  details?: string;
  /** Extra header lines of the reply. */
  headers?: string[];
  /** The parent proxy the failure was met at (`Proxy-Status` `next-hop`). */
  nextHop?: string;
  /** The parent proxy's status (`Proxy-Status` `received-status`). */
  receivedStatus?: number;
}

/** Turns any failure into the reply the client gets. */
export function errorReply(err: unknown, rejectStatus: number): ErrorReply {
  if (err instanceof LimitReachedError) {
    return {
      ...reply(rejectStatus, "connection_limit_reached", err.message, false),
      details: err.details,
      headers: [`Retry-After: ${err.retryAfter}`],
    };
  }
  if (err instanceof HostPausedError) {
    return {
      ...reply(503, "destination_unavailable", err.message, false),
      headers: [`Retry-After: ${err.retryAfter}`],
    };
  }
  if (err instanceof RateLimitedError) {
    return {
      ...reply(rejectStatus, "connection_limit_reached", err.message, false),
      details: `request rate reached for ${
        err.key.startsWith("g:") ? `group ${err.key.slice(2)}` : err.key
      }`,
      headers: [`Retry-After: ${Math.max(1, Math.ceil(err.retryAfterMs / 1000))}`],
    };
  }
  if (err instanceof LimiterUnavailableError) {
    return reply(503, "proxy_internal_error", "Connection limiter unavailable", false);
  }
  if (err instanceof ConnectError) {
    const [status, token] = CONNECT_REPLIES[err.failure];
    return reply(status, token, err.message, true);
  }
  if (err instanceof ParentError) {
    const [status, token] = PARENT_REPLIES[err.failure];
    return {
      ...reply(status, token, err.message, true),
      details: err.details,
      nextHop: err.nextHop,
      receivedStatus: err.status,
    };
  }
  if (err instanceof ClientRefusedError) {
    return reply(err.status, "http_request_denied", err.message, false);
  }
  if (err instanceof AuthBusyError) {
    return {
      ...reply(503, "http_request_denied", err.message, false),
      headers: [`Retry-After: ${err.retryAfter}`],
    };
  }
  if (err instanceof ProxyAuthRequiredError) {
    return {
      ...reply(407, "http_request_denied", err.message, false),
      headers: [`Proxy-Authenticate: ${err.challenge}`],
    };
  }
  if (err instanceof UpstreamTimeoutError) {
    return reply(504, "http_response_timeout", err.message, true);
  }
  if (err instanceof UpstreamClosedError) {
    return reply(502, "http_response_incomplete", err.message, true);
  }
  if (err instanceof HttpError) {
    return reply(err.status, err.proxyError, err.message, err.status >= 500);
  }
  return reply(502, "proxy_internal_error", "Upstream exchange failed", true);
}

function reply(
  status: number,
  proxyError: string,
  message: string,
  upstream: boolean,
): ErrorReply {
  return { status, proxyError, message, upstream };
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  403: "Forbidden",
  405: "Method Not Allowed",
  407: "Proxy Authentication Required",
  408: "Request Timeout",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

/**
 * The reply as sent: status line, `Proxy-Status`, the reply's own header
 * lines, `Connection: close` and the message as a one-line plain-text body.
 */
export function encodeErrorReply(r: ErrorReply): Uint8Array {
  const text = r.message.replace(/[^\x20-\x7e]/g, "?");
  const body = encodeLatin1(`${text}\n`);
  const head = encodeHead(`HTTP/1.1 ${r.status} ${REASONS[r.status] ?? "Error"}`, [
    "Content-Type: text/plain; charset=utf-8",
    `Content-Length: ${body.length}`,
    `Proxy-Status: dprl; error=${r.proxyError}${
      r.nextHop === undefined ? "" : `; next-hop="${quoted(r.nextHop)}"`
    }${r.receivedStatus === undefined ? "" : `; received-status=${r.receivedStatus}`}; details="${
      quoted(r.details ?? text)
    }"`,
    ...r.headers ?? [],
    "Connection: close",
  ]);
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

/** Text for a quoted `Proxy-Status` parameter: printable ASCII, escaped. */
function quoted(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, "?").replace(/["\\]/g, "\\$&");
}
