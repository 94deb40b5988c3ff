/**
 * The proxy engine: accepts client connections on a `Deno.Listener`, frames
 * HTTP/1.1 by hand, forwards absolute-form requests and CONNECT tunnels to
 * upstream sockets opened within each host's limit.
 *
 * One client connection is a {@linkcode Session} that moves through named
 * phases and is always under one named deadline; the sweep runs the action
 * of the deadline's kind once it passes.
 * Every failure is an error named where it happens and turned into a reply
 * in one place, {@linkcode ProxyServer.#fail}.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { Limiter } from "../limit/limiter.ts";
import type { LimitTable } from "../limit/limit_table.ts";
import { BufferedReader, TooLargeError, writeAll, type Writer } from "./buffered_reader.ts";
import { pump, relayBody, relayDechunked, WriteError } from "./body.ts";
import {
  bodyFraming,
  encodeHead,
  encodeLatin1,
  endToEndLines,
  field,
  type Framing,
  HttpError,
  parseRequestHead,
  parseResponseHead,
  type RequestHead,
  responseFraming,
  type ResponseHead,
} from "./http_head.ts";
import {
  ClientGoneError,
  ClientRefusedError,
  errorReply,
  ProxyAuthRequiredError,
  UpstreamClosedError,
  UpstreamTimeoutError,
} from "./errors.ts";
import { AuthBusyError, ClientPolicy, PROXY_AUTHENTICATE } from "../access/client_policy.ts";
import type { DestinationPolicy } from "../access/destination_policy.ts";
import { ProxyStats, type RequestKind } from "../metrics/proxy_stats.ts";
import type { UpstreamHostView } from "../metrics/host_summary.ts";
import type { AccessEntry } from "../log_format.ts";
import { parseConnectTarget, parseTarget } from "./target.ts";
import type { Upstream } from "./upstream.ts";
import { UpstreamPool } from "./upstream_pool.ts";
import { DEFAULTS, type Timeouts } from "../defaults.ts";

export type { Timeouts };

/** Options of {@linkcode ProxyServer}. */
export interface ProxyServerOptions {
  /** The bound proxy port. */
  listener: Deno.Listener<Deno.TcpConn>;
  /** The limits to apply. */
  limits: LimitTable;
  /** Where slots are counted. */
  limiter: Limiter;
  /** Status sent when a host is at its limit. */
  rejectStatus: number;
  /** Timeouts; missing ones take their defaults. */
  timeouts?: Partial<Timeouts>;
  /** Largest request or response head, in bytes. */
  maxHeadSize?: number;
  /** Idle upstream sockets kept per host. */
  maxIdlePerHost?: number;
  /** Where the engine logs. */
  logger: Logger;
  /** Who may use the proxy. Default: loopback and private addresses, no authentication. */
  clients?: ClientPolicy;
  /** Where the proxy may connect. Default: anywhere. */
  destinations?: DestinationPolicy;
  /** Counters the engine updates. Default: a fresh set. */
  stats?: ProxyStats;
  /** Called once per finished exchange or tunnel (the access log). */
  onAccess?: (entry: AccessEntry) => void;
  /** Open client connections in all; 0 is no cap. */
  maxClients?: number;
  /** Open client connections per client address; 0 is no cap. */
  maxClientsPerIp?: number;
  /** Time a request over its host's limit waits for a slot (ms); 0 refuses at once. */
  queueTimeout?: number;
  /** Requests that may wait per host; beyond it, refused at once. */
  queueMax?: number;
}

const SWEEP_MS = 250;
/** Client bytes read ahead (pipelined requests) while an exchange runs. */
const WATCH_LIMIT = 64 * 1024;
/** The abort reason of a closed session (a DOMException per close would cost a stack trace). */
const CLIENT_LEFT = new ClientGoneError();
/** Methods that may be sent again when a reused connection drops them. */
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "TRACE"]);
const ESTABLISHED = encodeLatin1("HTTP/1.1 200 Connection Established\r\n\r\n");
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
 * Where a client connection is:
 * - `head`: waiting for (or reading) a request head;
 * - `request`: a request is on its way: slot, dial, request body, and the
 *   wait for the response head;
 * - `response`: response bytes are being relayed to the client;
 * - `tunnel`: a CONNECT tunnel or switched protocol pipes raw bytes.
 */
type Phase = "head" | "request" | "response" | "tunnel";

/**
 * Which timeout a session is under, and what its passing does:
 * - `head`: a request head is awaited (`--head-timeout`); a half-sent head
 *   gets 408, a silent connection is closed quietly;
 * - `keepAlive`: idle between requests (`--keep-alive-timeout`); like `head`;
 * - `idle`: an exchange or tunnel with no byte either way (`--idle-timeout`);
 *   a request still awaiting its answer gets 504, anything else is closed;
 * - `fin`: one side of a pipe ended and the other's time is up
 *   (`--fin-timeout`); closed, whatever still flows;
 * - `reply`: an error reply had its time to go out; closed.
 */
type DeadlineKind = "head" | "keepAlive" | "idle" | "fin" | "reply";

/** Time an error reply of the sweep's (408, 504) has to go out before the close. */
const REPLY_GRACE_MS = 1000;

/** One client connection. */
class Session {
  readonly conn: Deno.TcpConn;
  readonly reader: BufferedReader;
  phase: Phase = "head";
  /** The timeout the session is under. */
  kind: DeadlineKind = "head";
  /** When it passes (coarse clock, ms). */
  deadline = 0;
  /** A byte of the current response reached the client. */
  sent = false;
  /** The wait for the response head ran past its deadline. */
  timedOut = false;
  /** The request body is being read (no read-ahead meanwhile). */
  readingBody = false;
  /** A background read watches for the client leaving. */
  watching = false;
  upstream: Upstream | null = null;
  /** The client's address (`host:port`) and IP. */
  readonly client: string;
  readonly ip: string;
  /** The current exchange or tunnel, for the access log and metrics. */
  method = "";
  key = "";
  status = 0;
  bytesUp = 0;
  bytesDown = 0;
  startedAt = 0;
  #left = new AbortController();
  /** Writes towards the upstream of the moment, counted. */
  readonly toUpstream: Writer = {
    write: async (p) => {
      const n = await this.upstream!.conn.write(p);
      this.bytesUp += n;
      return n;
    },
  };

  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
    this.reader = new BufferedReader(conn);
    const addr = conn.remoteAddr;
    this.ip = addr.hostname;
    this.client = addr.hostname.includes(":")
      ? `[${addr.hostname}]:${addr.port}`
      : `${addr.hostname}:${addr.port}`;
  }

  /** Aborted when the session closes: dials and slot requests give up. */
  get signal(): AbortSignal {
    return this.#left.signal;
  }

  get closed(): boolean {
    return this.#left.signal.aborted;
  }

  /** Puts the session under the timeout `kind`, passing at `deadline`. */
  until(kind: DeadlineKind, deadline: number): void {
    this.kind = kind;
    this.deadline = deadline;
  }

  /** Writes to the client, noting that the response has begun. */
  async write(p: Uint8Array): Promise<number> {
    this.sent = true;
    const n = await this.conn.write(p);
    this.bytesDown += n;
    return n;
  }

  close(): void {
    if (this.closed) return;
    this.#left.abort(CLIENT_LEFT);
    try {
      this.conn.close();
    } catch { /* already closed */ }
    this.upstream?.close();
  }
}

/** A request ready to go upstream. */
interface Outbound {
  req: RequestHead;
  /** The host key, name and port to dial. */
  key: string;
  hostname: string;
  port: number;
  /** How the request body is framed. */
  framing: Framing;
  /** The rewritten request head. */
  head: Uint8Array;
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

/** Serves the proxy port until {@linkcode ProxyServer.shutdown}. */
export class ProxyServer {
  #listener: Deno.Listener<Deno.TcpConn>;
  #rejectStatus: number;
  #timeouts: Timeouts;
  #maxHead: number;
  #logger: Logger;
  #pool: UpstreamPool;
  #clients: ClientPolicy;
  #stats: ProxyStats;
  #onAccess?: (entry: AccessEntry) => void;
  #maxClients: number;
  #maxClientsPerIp: number;
  #perIp = new Map<string, number>();
  #sessions = new Set<Session>();
  #now = Date.now();
  #closing = false;
  #drained = Promise.withResolvers<void>();
  /** Accept failures not logged yet (at most one line a second). */
  #acceptFailures = 0;
  #acceptLoggedAt = 0;

  /** Creates the engine; nothing is served until {@linkcode serve}. */
  constructor(options: ProxyServerOptions) {
    this.#listener = options.listener;
    this.#rejectStatus = options.rejectStatus;
    this.#timeouts = { ...DEFAULTS.timeouts, ...options.timeouts };
    this.#maxHead = options.maxHeadSize ?? DEFAULTS.maxHeadSize;
    this.#logger = options.logger;
    this.#clients = options.clients ?? new ClientPolicy({});
    this.#stats = options.stats ?? new ProxyStats();
    this.#onAccess = options.onAccess;
    this.#maxClients = options.maxClients ?? DEFAULTS.maxClients;
    this.#maxClientsPerIp = options.maxClientsPerIp ?? DEFAULTS.maxClientsPerIp;
    this.#pool = new UpstreamPool({
      limiter: options.limiter,
      limits: options.limits,
      destinations: options.destinations,
      stats: this.#stats,
      connectTimeout: this.#timeouts.connect,
      idleTimeout: this.#timeouts.upstreamIdle,
      queueTimeout: options.queueTimeout ?? DEFAULTS.queueTimeout,
      queueMax: options.queueMax ?? DEFAULTS.queueMax,
      maxIdlePerHost: options.maxIdlePerHost ?? DEFAULTS.maxIdlePerHost,
      logger: options.logger,
    });
  }

  /** Each upstream host this process holds connections to. */
  hosts(): Iterable<UpstreamHostView> {
    return this.#pool.hosts();
  }

  /** Whether the server still accepts connections. */
  get accepting(): boolean {
    return !this.#closing;
  }

  /** Accepts connections until shut down; resolves once all have ended. */
  async serve(): Promise<void> {
    const sweeper = setInterval(() => this.#sweep(), SWEEP_MS);
    try {
      while (!this.#closing) {
        let conn: Deno.TcpConn;
        try {
          conn = await this.#listener.accept();
        } catch (err) {
          if (this.#closing || err instanceof Deno.errors.BadResource) break;
          // Out of file descriptors, for one: wait for some to free up.
          this.#acceptFailed(err);
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        conn.setNoDelay(true);
        this.#handle(conn);
      }
      this.#closing = true;
      if (this.#sessions.size === 0) this.#drained.resolve();
      await this.#drained.promise;
    } finally {
      clearInterval(sweeper);
      this.#pool.closeIdle();
    }
  }

  /** Logs accept failures, at most one line a second. */
  #acceptFailed(err: unknown): void {
    this.#acceptFailures++;
    const now = Date.now();
    if (now - this.#acceptLoggedAt < 1000) return;
    this.#logger.warn("Accept failed {count} time(s): {error}", {
      count: this.#acceptFailures,
      error: String(err),
    });
    this.#acceptFailures = 0;
    this.#acceptLoggedAt = now;
  }

  /**
   * Stops accepting, closes idle client connections at once, lets open
   * exchanges and tunnels finish for up to `graceMs`, then closes the rest.
   */
  async shutdown(graceMs: number): Promise<void> {
    this.#closing = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    for (const s of this.#sessions) if (s.phase === "head") s.close();
    this.#pool.closeIdle();
    if (this.#sessions.size === 0) this.#drained.resolve();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const grace = new Promise<void>((r) => timer = setTimeout(r, graceMs));
    await Promise.race([this.#drained.promise, grace]);
    clearTimeout(timer);
    for (const s of this.#sessions) s.close();
    await this.#drained.promise;
  }

  #sweep(): void {
    const now = this.#now = Date.now();
    for (const s of this.#sessions) if (s.deadline <= now) this.#expire(s, now);
    this.#pool.sweep(now);
  }

  /** Runs the action of the passed deadline of `s`, by its kind. */
  #expire(s: Session, now: number): void {
    switch (s.kind) {
      case "head":
      case "keepAlive":
        if (s.reader.buffered === 0) return s.close();
        s.until("reply", now + REPLY_GRACE_MS);
        this.#fail(s, new HttpError(408, "Request head not received in time"));
        return;
      case "idle":
        if (s.phase !== "request" || s.timedOut) return s.close();
        // The exchange answers 504 (see #exchange) once the upstream is closed.
        s.timedOut = true;
        s.until("reply", now + REPLY_GRACE_MS);
        s.upstream?.close();
        return;
      case "fin":
      case "reply":
        return s.close();
    }
  }

  /** Bytes moved: the idle timeout starts again (not once a pipe is ending or a reply going). */
  #touch(s: Session): void {
    if (s.kind === "fin" || s.kind === "reply") return;
    s.until("idle", this.#now + this.#timeouts.idle);
  }

  async #handle(conn: Deno.TcpConn): Promise<void> {
    const s = new Session(conn);
    this.#sessions.add(s);
    this.#stats.onClientOpen();
    const fromIp = (this.#perIp.get(s.ip) ?? 0) + 1;
    this.#perIp.set(s.ip, fromIp);
    s.until("head", this.#now + this.#timeouts.head);
    try {
      // Refused before a byte is read: a stranger cannot hold a connection.
      const refusal = this.#refusal(s, fromIp);
      if (refusal) return await this.#fail(s, refusal);
      while (!s.closed) {
        const req = await this.#readRequest(s);
        if (req === null) return;
        if (req.method === "CONNECT") {
          await this.#tunnel(s, req);
          return;
        }
        const more = await this.#exchange(s, req);
        this.#finished(s);
        if (!more || this.#closing) return;
        s.phase = "head";
        s.sent = false; // a 408 may answer a half-sent next head
        s.until("keepAlive", this.#now + this.#timeouts.keepAlive);
      }
    } catch (err) {
      this.#logger.debug("Client connection ended: {error}", {
        error: String(err),
      });
    } finally {
      s.close();
      this.#finished(s);
      this.#sessions.delete(s);
      this.#stats.onClientClose();
      const n = this.#perIp.get(s.ip)! - 1;
      if (n === 0) this.#perIp.delete(s.ip);
      else this.#perIp.set(s.ip, n);
      if (this.#closing && this.#sessions.size === 0) this.#drained.resolve();
    }
  }

  /** Why a new client connection is refused at once, if it is. */
  #refusal(s: Session, fromIp: number): ClientRefusedError | null {
    if (!this.#clients.admitsAddress(s.ip)) {
      return new ClientRefusedError(`Client address ${s.ip} is not allowed to use this proxy`);
    }
    if (this.#maxClients > 0 && this.#sessions.size > this.#maxClients) {
      return new ClientRefusedError("Too many client connections", 503);
    }
    if (this.#maxClientsPerIp > 0 && fromIp > this.#maxClientsPerIp) {
      return new ClientRefusedError(`Too many connections from ${s.ip}`, 503);
    }
    return null;
  }

  /** Counts the bytes of an exchange or tunnel that ended and logs its access line. */
  #finished(s: Session): void {
    if (s.method === "") return;
    this.#stats.onBytes(s.bytesUp, s.bytesDown);
    this.#onAccess?.({
      client: s.client,
      method: s.method,
      host: s.key,
      status: s.status,
      bytesUp: s.bytesUp,
      bytesDown: s.bytesDown,
      durationMs: Date.now() - s.startedAt,
    });
    s.method = s.key = "";
    s.status = s.bytesUp = s.bytesDown = 0;
  }

  /** Starts accounting for a request: its kind, method and host. */
  #begin(s: Session, kind: RequestKind, method: string, key: string): void {
    this.#stats.onRequest(kind);
    s.method = method;
    s.key = key;
  }

  /** Refuses a request without valid credentials when authentication is on. */
  async #authenticate(req: RequestHead, ip: string): Promise<void> {
    if (!this.#clients.authRequired) return;
    const user = await this.#clients.authenticate(field(req, "proxy-authorization"), ip);
    if (user === null) throw new ProxyAuthRequiredError(PROXY_AUTHENTICATE);
  }

  /** Reads and parses the next request head; `null` ends the session. */
  async #readRequest(s: Session): Promise<RequestHead | null> {
    try {
      const head = await s.reader.readHead(this.#maxHead);
      if (head === null) return null;
      s.phase = "request";
      s.timedOut = false;
      s.startedAt = Date.now();
      this.#touch(s);
      const req = parseRequestHead(head);
      checkHost(req);
      await this.#authenticate(req, s.ip);
      return req;
    } catch (err) {
      const bad = err instanceof TooLargeError
        ? new HttpError(431, "Request head is too large")
        : err;
      if (
        !(bad instanceof HttpError || bad instanceof ProxyAuthRequiredError ||
          bad instanceof AuthBusyError)
      ) throw err;
      await this.#fail(s, bad);
      return null;
    }
  }

  /**
   * The one place where a failure becomes a reply: the client gets the
   * status, `Proxy-Status` and a one-line body when no byte of a response
   * was sent yet; otherwise the connection is closed. Causes are logged.
   */
  async #fail(s: Session, err: unknown): Promise<void> {
    if (err instanceof ClientGoneError) {
      // Nobody to answer and nothing failed: logged as nginx does (499).
      s.status = 499;
      this.#logger.debug("Client left before its answer");
      s.close();
      return;
    }
    const r = errorReply(err, this.#rejectStatus);
    const cause = err instanceof Error && err.cause !== undefined ? String(err.cause) : "";
    s.status = r.status;
    if (r.upstream) this.#stats.onUpstreamError(s.key || "_unknown", r.proxyError);
    else if (r.status < 500) this.#stats.onClientError(r.status);
    if (r.upstream) {
      this.#logger.info("{status} {message}", { status: r.status, message: r.message, cause });
    } else {
      this.#logger.debug("{status} {message}", { status: r.status, message: r.message, cause });
    }
    if (s.sent || s.closed) {
      s.close();
      return;
    }
    const text = r.message.replace(/[^\x20-\x7e]/g, "?");
    const body = encodeLatin1(`${text}\n`);
    const head = encodeHead(`HTTP/1.1 ${r.status} ${REASONS[r.status] ?? "Error"}`, [
      "Content-Type: text/plain; charset=utf-8",
      `Content-Length: ${body.length}`,
      `Proxy-Status: dprl; error=${r.proxyError}; details="${quoted(r.details ?? text)}"`,
      ...r.headers ?? [],
      "Connection: close",
    ]);
    const out = new Uint8Array(head.length + body.length);
    out.set(head);
    out.set(body, head.length);
    try {
      await writeAll(s, out);
    } catch { /* the client is gone */ }
    s.close();
  }

  /**
   * Watches the client for leaving while an exchange runs: a background
   * read that closes the session at end of stream. Bytes it reads
   * (pipelined requests, the request body) stay buffered for their reader.
   */
  #watchClient(s: Session): void {
    if (s.watching || s.readingBody || s.closed || s.reader.buffered >= WATCH_LIMIT) return;
    // A pipe reads the client itself.
    if (s.phase !== "request" && s.phase !== "response") return;
    s.watching = true;
    s.reader.watch().then((n) => {
      s.watching = false;
      // In a tunnel the pipe reads on and passes an end of stream on.
      if (s.phase !== "request" && s.phase !== "response") return;
      if (n === null) s.close();
      else this.#watchClient(s);
    }, () => s.close());
  }

  async #tunnel(s: Session, req: RequestHead): Promise<void> {
    let up: Upstream;
    try {
      const target = parseConnectTarget(req.target);
      this.#begin(s, "connect", "CONNECT", target.key);
      this.#watchClient(s);
      up = await this.#pool.open(target.key, target.hostname, target.port, s.signal);
    } catch (err) {
      await this.#fail(s, err);
      return;
    }
    s.upstream = up;
    if (s.closed) return up.close();
    s.status = 200;
    this.#touch(s);
    await writeAll(s, ESTABLISHED);
    s.bytesDown = 0; // tunnel bytes only
    await this.#pipe(s, up);
  }

  /**
   * Pipes both ways until both sides have ended, then closes both. The end
   * of one direction is passed on as a half-close while the other flows.
   * Bytes already buffered on either side go first. The client's bytes
   * follow once `upward` resolves (the request body relay has ended: only
   * one reader of the client at a time); a rejection closes both.
   */
  async #pipe(s: Session, up: Upstream, upward = Promise.resolve()): Promise<void> {
    s.phase = "tunnel";
    const touch = () => this.#touch(s);
    let open = 2;
    const ended = (dst: Deno.TcpConn) => {
      if (--open === 0) return s.close();
      // The other side gets the fin timeout to finish.
      s.until("fin", this.#now + this.#timeouts.fin);
      return dst.closeWrite();
    };
    const fail = () => s.close();
    await Promise.all([
      upward.then(() => pump(s.reader, s.toUpstream, touch)).then(() => ended(up.conn))
        .catch(fail),
      pump(up.reader, s, touch).then(() => ended(s.conn)).catch(fail),
    ]);
    s.close();
  }

  /**
   * Forwards one absolute-form request and its response. Resolves whether
   * the client connection may carry another request.
   */
  async #exchange(s: Session, req: RequestHead): Promise<boolean> {
    let out: Outbound;
    try {
      out = outbound(req);
    } catch (err) {
      await this.#fail(s, err);
      return false;
    }
    this.#begin(s, out.upgrading ? "upgrade" : "http", req.method, out.key);
    this.#watchClient(s);
    try {
      const { up, res, request } = await this.#roundTrip(s, out);
      s.status = res.status;
      if (res.status === 101 && out.upgrading) {
        await this.#switchProtocols(s, up, res, request);
        return false;
      }
      return await this.#relayResponse(s, up, out, { res, request });
    } catch (err) {
      s.upstream?.close();
      s.upstream = null;
      await this.#fail(s, s.timedOut && !s.sent ? new UpstreamTimeoutError(out.key) : err);
      return false;
    }
  }

  /**
   * Sends the request on a pooled or new upstream connection and waits for
   * the final response head, relaying interim 1xx responses. A reused
   * connection that closes before answering is replaced once, for a
   * replayable request only.
   */
  async #roundTrip(
    s: Session,
    out: Outbound,
  ): Promise<Answer & { up: Upstream }> {
    for (let attempt = 0;; attempt++) {
      const up = this.#pool.take(out.key) ??
        await this.#pool.open(out.key, out.hostname, out.port, s.signal, true);
      const pooled = up.reused;
      s.upstream = up;
      if (s.closed) throw CLIENT_LEFT;
      const answer = await this.#send(s, up, out);
      if (answer !== null) return { ...answer, up };
      up.close();
      if (!pooled || attempt > 0 || !out.replayable || s.timedOut) {
        throw new UpstreamClosedError(out.key);
      }
    }
  }

  /**
   * Sends the request head and body on `up` and reads the final response
   * head. Resolves `null` when the upstream closed without a byte of answer.
   */
  async #send(s: Session, up: Upstream, out: Outbound): Promise<Answer | null> {
    const request: Sending = { done: false, error: null, ended: Promise.resolve() };
    if (out.framing.kind === "none") {
      try {
        await writeAll(s.toUpstream, out.head);
      } catch {
        return null; // a reused connection that had closed: nothing was read
      }
      request.done = true;
    } else {
      // A broken request body ends the exchange; an upstream that stops
      // reading early may still answer.
      s.readingBody = true;
      const touch = () => this.#touch(s);
      request.ended = relayBody(
        s.reader,
        s.toUpstream,
        out.framing,
        out.head,
        touch,
        (m) => new HttpError(400, m),
      )
        .then(() => {
          request.done = true;
          s.readingBody = false;
          this.#watchClient(s);
        }, (err) => {
          request.error = err;
          s.readingBody = false;
          if (!(err instanceof WriteError)) up.close();
        });
    }
    for (;;) {
      let head: Uint8Array | null;
      try {
        head = await up.reader.readHead(this.#maxHead);
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
      this.#touch(s);
      if (res.status >= 200 || res.status === 101) return { res, request };
      // Interim 1xx: relay (never to an HTTP/1.0 client, RFC 9110, 15.2)
      // and keep waiting for the final response.
      if (out.req.minor === 1) await writeAll(s, encodeHead(res.statusLine, endToEndLines(res)));
    }
  }

  /**
   * Relays a 101 answer and turns the exchange into a two-way pipe. The
   * upstream may switch before it has read the request body: the client's
   * side of the pipe takes over where the body relay ends.
   */
  async #switchProtocols(
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
    await this.#pipe(s, up, bodySent);
  }

  /**
   * Relays the final response and its body; the upstream connection goes
   * back to the pool only when it is clean. Resolves whether the client
   * connection may carry another request.
   */
  async #relayResponse(
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
    const keepAlive = out.clientKeepAlive && framing.kind !== "close" && !dechunk && !this.#closing;
    const lines = endToEndLines(res, dechunk ? "transfer-encoding" : undefined);
    if (!keepAlive) lines.push("Connection: close");
    const statusLine = res.minor === 1 ? res.statusLine : `HTTP/1.1${res.statusLine.slice(8)}`;
    const head = encodeHead(statusLine, lines);
    const touch = () => this.#touch(s);
    s.phase = "response";
    if (dechunk) await relayDechunked(up.reader, s, head, touch, upstreamProtocolError);
    else await relayBody(up.reader, s, framing, head, touch, upstreamProtocolError);
    // A response complete while the client still sends its body, or after
    // a broken request body, ends the client connection too.
    const requestSent = request.done && request.error === null;
    s.upstream = null;
    // Nothing may follow the response on a pooled connection.
    if (reusable && requestSent && up.reader.buffered === 0 && !s.closed) {
      this.#pool.put(up);
    } else up.close();
    return keepAlive && requestSent;
  }
}

/** Text for a quoted `Proxy-Status` parameter: printable ASCII, escaped. */
function quoted(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, "?").replace(/["\\]/g, "\\$&");
}

function upstreamProtocolError(message: string): HttpError {
  return new HttpError(502, message, "http_response_incomplete");
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
    head: encodeHead(`${req.method} ${target.path} HTTP/1.1`, lines),
    upgrading: upgrade !== undefined,
    clientKeepAlive: req.minor === 1 && !req.connection.has("close"),
    // Judged by what is forwarded: a key the Connection field strips does not count.
    replayable: framing.kind === "none" &&
      (IDEMPOTENT.has(req.method) || lines.some((l) => IDEMPOTENCY_KEY.test(l))),
  };
}

/** A forwarded line carrying an idempotency key. */
const IDEMPOTENCY_KEY = /^(?:x-)?idempotency-key:/i;

/**
 * Refuses an HTTP/1.1 request, CONNECT included, without exactly one Host
 * field (RFC 9112, 3.2: a server answers 400). HTTP/1.0 may omit it.
 */
function checkHost(req: RequestHead): void {
  const first = req.names.indexOf("host");
  if (first !== req.names.lastIndexOf("host")) throw new HttpError(400, "More than one Host field");
  if (first < 0 && req.minor === 1) throw new HttpError(400, "Missing Host field");
}
