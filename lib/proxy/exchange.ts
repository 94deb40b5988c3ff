/**
 * The plain-HTTP exchange: one absolute-form request rewritten and sent
 * upstream on a pooled or a new connection (once more on a fresh one when
 * the replay rule allows), interim answers relayed, then the final response
 * relayed and the upstream connection pooled when it is clean. A 101 answer
 * to an upgrade turns the exchange into a pipe.
 *
 * @module
 */
import { TooLargeError, writeAll } from "./buffered_reader.ts";
import { relayBody, relayDechunked, sendText, WriteError } from "./body.ts";
import {
  bodyFraming,
  encodeHead,
  endToEndLines,
  field,
  type Framing,
  headText,
  HttpError,
  parseResponseHead,
  type RequestHead,
  responseFraming,
  type ResponseHead,
} from "./http_head.ts";
import { UpstreamClosedError, UpstreamTimeoutError } from "./errors.ts";
import { parentRefusal } from "./parent_proxy.ts";
import type { Session } from "./session.ts";
import { parseTarget } from "./target.ts";
import { pipe } from "./relay.ts";
import type { Upstream } from "./upstream.ts";
import type { UpstreamPool } from "./upstream_pool.ts";

/** Methods that may be sent again when a reused connection drops them. */
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "TRACE"]);
/** A forwarded line carrying an idempotency key. */
const IDEMPOTENCY_KEY = /^(?:x-)?idempotency-key:/i;

/** A request ready to go upstream. */
interface Outbound {
  req: RequestHead;
  /** The host key, name and port to dial. */
  key: string;
  hostname: string;
  port: number;
  /** How the request body is framed. */
  framing: Framing;
  /** The text of the rewritten request head (origin-form), encoded as it is sent. */
  head: string;
  /** The target's authority and origin-form path, and the forwarded lines, for a parent proxy. */
  absolute: { authority: string; path: string; lines: string[] };
  /** The client asked to switch protocols (e.g. WebSocket). */
  upgrading: boolean;
  /** The client lets its connection carry further requests. */
  clientKeepAlive: boolean;
  /** Safe to send again on a fresh connection (RFC 9110, 9.2.2). */
  replayable: boolean;
}

/** How the sending of a request goes. */
interface Sending {
  done: boolean;
  error: unknown;
  /** Settles when the request body relay has ended, either way. */
  ended: Promise<void>;
}

/** The final response head and how the request's sending went. */
interface Answer {
  res: ResponseHead;
  request: Sending;
}

/**
 * Forwards one absolute-form request and its response; every failure is
 * answered by {@linkcode Session.fail}. Resolves whether the client
 * connection may carry another request.
 */
export async function exchange(s: Session, req: RequestHead): Promise<boolean> {
  let out: Outbound;
  try {
    out = outbound(req);
  } catch (err) {
    await s.fail(err);
    return false;
  }
  s.begin(out.upgrading ? "upgrade" : "http", req.method, out.key);
  s.watchClient();
  try {
    const { up, res, request } = await roundTrip(s, out);
    s.status = res.status;
    if (res.status === 429 || res.status === 503) {
      s.engine.pool.gates.notePause(out.key, res.status, field(res, "retry-after"));
    }
    if (res.status === 101 && out.upgrading) {
      await switchProtocols(s, up, res, request);
      return false;
    }
    return await relayResponse(s, up, out, { res, request });
  } catch (err) {
    s.upstream?.close();
    s.upstream = null;
    await s.fail(s.timedOut && !s.sent ? new UpstreamTimeoutError(out.key) : err);
    return false;
  }
}

/** Builds the request to send upstream; throws a 400 for a bad one. */
function outbound(req: RequestHead): Outbound {
  const bad = (msg: string) => new HttpError(400, msg);
  const target = parseTarget(req.target);
  const framing = bodyFraming(req, bad, true);
  const upgrade = req.connection.has("upgrade") ? field(req, "upgrade") : undefined;
  const lines = endToEndLines(req);
  const hostAt = lines.findIndex((l) => /^host:/i.test(l));
  const hostLine = `Host: ${target.authority}`;
  if (hostAt < 0) lines.unshift(hostLine);
  else if (field(req, "host")!.toLowerCase() !== target.authority.toLowerCase()) {
    lines[hostAt] = hostLine;
  }
  if (upgrade !== undefined) lines.push("Connection: Upgrade", `Upgrade: ${upgrade}`);
  return {
    req,
    key: target.key,
    hostname: target.hostname,
    port: target.port,
    framing,
    head: headText(`${req.method} ${target.path} HTTP/1.1`, lines),
    absolute: { authority: target.authority, path: target.path, lines },
    upgrading: upgrade !== undefined,
    clientKeepAlive: req.minor === 1 && !req.connection.has("close"),
    // Judged by what is forwarded: a key the Connection field strips does not count.
    replayable: framing.kind === "none" &&
      (IDEMPOTENT.has(req.method) || lines.some((l) => IDEMPOTENCY_KEY.test(l))),
  };
}

/**
 * Sends the request on a pooled or new upstream connection and waits for
 * the final response head, relaying interim 1xx responses. A reused
 * connection that closes before answering is replaced once, for a
 * replayable request only.
 */
async function roundTrip(s: Session, out: Outbound): Promise<Answer & { up: Upstream }> {
  const pool = s.engine.pool;
  for (let attempt = 0;; attempt++) {
    const up = await pool.reuse(out.key, s.signal) ??
      await pool.open(out.key, out.hostname, out.port, s.signal, true);
    const pooled = up.reused;
    s.upstream = up;
    s.via = up.parent?.url.authority;
    if (s.closed) throw s.signal.reason;
    // The clock is read only for a host whose limit adapts.
    const sentAt = pool.gates.adapts(out.key) ? performance.now() : NaN;
    let answer: Answer | null;
    try {
      answer = await send(s, up, out);
    } catch (err) {
      // Reset or timed out before the first byte: the host could not serve it.
      if (err instanceof UpstreamClosedError && !s.signal.aborted) {
        observe(pool, out.key, sentAt, true);
      }
      throw err;
    }
    if (answer !== null) {
      const { status } = answer.res;
      observe(pool, out.key, sentAt, status === 429 || status === 503);
      return { ...answer, up };
    }
    up.close();
    if (!pooled || attempt > 0 || !out.replayable || s.timedOut) {
      observe(pool, out.key, sentAt, true);
      throw new UpstreamClosedError(out.key);
    }
  }
}

/** Takes in the latency of a request sent at `sentAt` (`NaN`: its host's limit does not adapt). */
function observe(pool: UpstreamPool, key: string, sentAt: number, dropped: boolean): void {
  if (!Number.isNaN(sentAt)) pool.gates.observe(key, performance.now() - sentAt, dropped);
}

/**
 * Sends the request head and body on `up` and reads the final response
 * head. Resolves `null` when the upstream closed without a byte of answer.
 */
async function send(s: Session, up: Upstream, out: Outbound): Promise<Answer | null> {
  let request: Sending;
  const head = headFor(up, out);
  if (out.framing.kind === "none") {
    try {
      await sendText(s.toUpstream, head);
    } catch {
      return null; // a reused connection that had closed: nothing was read
    }
    request = { done: true, error: null, ended: Promise.resolve() };
  } else request = sendWithBody(s, up, out, head);
  return await readAnswer(s, up, out, request);
}

/**
 * The head to send on `up`: origin-form to the host; absolute-form with the
 * parent's `Proxy-Authorization` (for the parent only) to a parent proxy.
 */
function headFor(up: Upstream, out: Outbound): string {
  if (!up.parent) return out.head;
  const { authority, path, lines } = out.absolute;
  const target = `http://${authority}${path}`;
  return headText(`${out.req.method} ${target} HTTP/1.1`, [...lines, ...up.parent.authLines]);
}

/**
 * Starts relaying the request head and body to `up`. A broken request body
 * ends the exchange; an upstream that stops reading early may still answer.
 */
function sendWithBody(s: Session, up: Upstream, out: Outbound, head: string): Sending {
  const request: Sending = { done: false, error: null, ended: Promise.resolve() };
  s.readingBody = true;
  const bad = (m: string) => new HttpError(400, m);
  request.ended = relayBody(s.reader, s.toUpstream, out.framing, head, s.touch, bad)
    .then(() => {
      request.done = true;
      s.readingBody = false;
      s.watchClient();
    }, (err) => {
      request.error = err;
      s.readingBody = false;
      if (!(err instanceof WriteError)) up.close();
    });
  return request;
}

/**
 * Reads response heads from `up` until the final one, relaying interim 1xx
 * answers. Resolves `null` when the upstream closed without a byte of
 * answer to a request without a body (it may be sent again).
 */
async function readAnswer(
  s: Session,
  up: Upstream,
  out: Outbound,
  request: Sending,
): Promise<Answer | null> {
  for (;;) {
    let head: Uint8Array | null;
    try {
      head = await up.reader.readHead(s.engine.maxHead);
    } catch (err) {
      if (request.error instanceof HttpError) throw request.error;
      if (err instanceof TooLargeError) {
        throw upstreamProtocolError("Upstream response head is too large");
      }
      throw new UpstreamClosedError(up.key, err);
    }
    if (head === null) {
      if (request.error instanceof HttpError) throw request.error;
      if (out.framing.kind !== "none") throw new UpstreamClosedError(up.key);
      return null;
    }
    const res = parseResponseHead(head);
    s.touch();
    const refusal = up.parent && parentRefusal(up.parent, up.key, res);
    if (refusal) throw refusal;
    if (res.status >= 200 || res.status === 101) return { res, request };
    // Interim 1xx: relay (never to an HTTP/1.0 client, RFC 9110, 15.2)
    // and keep waiting for the final response.
    if (out.req.minor === 1) await writeAll(s, encodeHead(res.statusLine, endToEndLines(res)));
  }
}

/**
 * Relays a 101 answer and hands the connection to a two-way pipe, which
 * ends it. The upstream may switch before it has read the request body:
 * the client's side of the pipe takes over where the body relay ends.
 */
async function switchProtocols(
  s: Session,
  up: Upstream,
  res: ResponseHead,
  request: Sending,
): Promise<void> {
  const lines = endToEndLines(res);
  lines.push("Connection: Upgrade", `Upgrade: ${field(res, "upgrade") ?? ""}`);
  await writeAll(s, encodeHead(res.statusLine, lines));
  const bodySent = request.ended.then(() => {
    if (request.error !== null) throw request.error;
  });
  pipe(s, up, bodySent);
}

/**
 * Relays the final response and its body; the upstream connection goes
 * back to the pool only when it is clean. Resolves whether the client
 * connection may carry another request.
 */
async function relayResponse(
  s: Session,
  up: Upstream,
  out: Outbound,
  { res, request }: Answer,
): Promise<boolean> {
  if (res.status === 101) throw upstreamProtocolError("Upstream switched protocols unasked");
  const framing = responseFraming(res, out.req.method);
  const reusable = framing.kind !== "close" &&
    !(framing.kind === "chunked" && framing.reusable === false) &&
    (res.minor === 1 ? !res.connection.has("close") : res.connection.has("keep-alive"));
  // An HTTP/1.0 client never receives chunked: the data, then the close.
  const dechunk = framing.kind === "chunked" && out.req.minor === 0;
  const keepAlive = out.clientKeepAlive && framing.kind !== "close" && !dechunk &&
    !s.engine.closing;
  const lines = endToEndLines(res, dechunk ? "transfer-encoding" : undefined);
  if (!keepAlive) lines.push("Connection: close");
  const statusLine = res.minor === 1 ? res.statusLine : `HTTP/1.1${res.statusLine.slice(8)}`;
  const head = headText(statusLine, lines);
  s.phase = "response";
  if (dechunk) await relayDechunked(up.reader, s, head, s.touch, upstreamProtocolError);
  else await relayBody(up.reader, s, framing, head, s.touch, upstreamProtocolError);
  // A response complete while the client still sends its body, or after
  // a broken request body, ends the client connection too.
  const requestSent = request.done && request.error === null;
  s.upstream = null;
  // Nothing may follow the response on a pooled connection.
  if (reusable && requestSent && up.reader.buffered === 0 && !s.closed) {
    s.engine.pool.put(up);
  } else up.close();
  return keepAlive && requestSent;
}

function upstreamProtocolError(message: string): HttpError {
  return new HttpError(502, message, "http_response_incomplete");
}
