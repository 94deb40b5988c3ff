/**
 * One client connection of the engine: its socket and read buffer, the
 * phase it is in, the named deadline it is under and what the passing of
 * each kind does, the accounting of its current exchange or tunnel, and
 * {@linkcode Session.fail}, the one place where a failure becomes the reply
 * the client gets.
 *
 * @module
 */
import type { ClientConn } from "./client_conn.ts";
import type { Logger } from "@logtape/logtape";
import { BufferedReader, writeAll, type Writer } from "./buffered_reader.ts";
import { HttpError } from "./http_head.ts";
import { ClientGoneError, encodeErrorReply, errorReply } from "./errors.ts";
import type { Upstream } from "./upstream.ts";
import type { UpstreamPool } from "./upstream_pool.ts";
import type { ProxyStats, RequestKind } from "../metrics/proxy_stats.ts";
import type { AccessEntry } from "../log_format.ts";
import type { Timeouts } from "../defaults.ts";

/** What every session of one server shares; the server moves `now` and `closing`. */
export interface Engine {
  /** Where upstream connections come from. */
  pool: UpstreamPool;
  /** Counters the engine updates. */
  stats: ProxyStats;
  /** Where the engine logs. */
  logger: Logger;
  /** Every timeout, in milliseconds. */
  timeouts: Timeouts;
  /** Largest request or response head, in bytes. */
  maxHead: number;
  /** Status sent when a host is at its limit. */
  rejectStatus: number;
  /** Called once per finished exchange or tunnel (the access log). */
  onAccess?: (entry: AccessEntry) => void;
  /** The coarse clock (ms), advanced by the server's sweep. */
  now: number;
  /** The server is shutting down: a connection carries no further request. */
  closing: boolean;
  /** Ends a session that a pipe took over ({@linkcode Session.handedOff}): closed, logged, forgotten. */
  ended: (s: Session) => void;
}

/**
 * Where a client connection is:
 * - `head`: waiting for (or reading) a request head;
 * - `request`: a request is on its way: slot, dial, request body, and the
 *   wait for the response head;
 * - `response`: response bytes are being relayed to the client;
 * - `tunnel`: a CONNECT tunnel or switched protocol pipes raw bytes.
 */
export type Phase = "head" | "request" | "response" | "tunnel";

/**
 * Which timeout a session is under, and what its passing does
 * ({@linkcode Session.expire}):
 * - `head`: a request head is awaited (`--head-timeout`); a half-sent head
 *   gets 408, a silent connection is closed quietly;
 * - `keepAlive`: idle between requests (`--keep-alive-timeout`); like `head`;
 * - `idle`: an exchange or tunnel with no byte either way (`--idle-timeout`);
 *   a request still awaiting its answer gets 504, anything else is closed;
 * - `fin`: one side of a pipe ended and the other's time is up
 *   (`--fin-timeout`); closed, whatever still flows;
 * - `reply`: an error reply had its time to go out; closed.
 */
export type DeadlineKind = "head" | "keepAlive" | "idle" | "fin" | "reply";

/** Time an error reply of the sweep's (408, 504) has to go out before the close. */
const REPLY_GRACE_MS = 1000;
/** Client bytes read ahead (pipelined requests) while an exchange runs. */
const WATCH_LIMIT = 64 * 1024;
/** The abort reason of a closed session (a DOMException per close would cost a stack trace). */
const CLIENT_LEFT = new ClientGoneError();

/** One client connection. */
export class Session {
  /** The client's socket. */
  readonly conn: ClientConn;
  /** The client's read buffer. */
  readonly reader: BufferedReader;
  /** What the server shares with every session. */
  readonly engine: Engine;
  /** Where the connection is. */
  phase: Phase = "head";
  /** The timeout the session is under. */
  #kind: DeadlineKind = "head";
  /** When it passes (coarse clock, ms). */
  #deadline = 0;
  /** A byte of the current response reached the client. */
  sent = false;
  /** The wait for the response head ran past its deadline. */
  timedOut = false;
  /** The request body is being read (no read-ahead meanwhile). */
  readingBody = false;
  /** The upstream connection of the moment. */
  upstream: Upstream | null = null;
  /** The parent proxy the current exchange or tunnel goes through (`host:port`), for the access log. */
  via: string | undefined;
  /** The client's address (`host:port`), for the access log. */
  readonly #client: string;
  /** The client's IP. */
  readonly ip: string;
  /** Who the client is, for the access log: its certificate's name, else its proxy user. */
  user: string | undefined;
  /** The method of the current exchange or tunnel, for the access log and metrics. */
  #method = "";
  /** Its host key. */
  #key = "";
  /** Its status. */
  status = 0;
  /** Bytes sent upstream. */
  #bytesUp = 0;
  /** Bytes sent to the client. */
  bytesDown = 0;
  /** When its request head arrived (ms). */
  #startedAt = 0;
  /** A background read watches for the client leaving. */
  #watching = false;
  /** Aborted at the close; made when first asked for, let go once a pipe takes over. */
  #left: AbortController | null = null;
  #closed = false;
  /** Writes towards the upstream of the moment, counted. */
  readonly toUpstream: Writer = {
    write: (p) => this.upstream!.conn.write(p).then(this.#countUp),
  };
  readonly #countUp = (n: number): number => {
    this.#bytesUp += n;
    return n;
  };
  readonly #countDown = (n: number): number => {
    this.bytesDown += n;
    return n;
  };
  /** Bytes moved: the idle timeout starts again (not once a pipe is ending or a reply going). */
  readonly touch = (): void => {
    if (this.#kind === "fin" || this.#kind === "reply") return;
    this.#kind = "idle";
    this.#deadline = this.engine.now + this.engine.timeouts.idle;
  };

  /** Starts the session of `conn`, under the head timeout. */
  constructor(conn: ClientConn, engine: Engine) {
    this.conn = conn;
    this.user = conn.peer;
    this.engine = engine;
    this.reader = new BufferedReader(conn);
    const addr = conn.remoteAddr;
    this.ip = addr.hostname;
    this.#client = addr.hostname.includes(":")
      ? `[${addr.hostname}]:${addr.port}`
      : `${addr.hostname}:${addr.port}`;
    this.until("head");
  }

  /** Aborted when the session closes: dials and slot requests give up. */
  get signal(): AbortSignal {
    if (!this.#left) {
      this.#left = new AbortController();
      if (this.#closed) this.#left.abort(CLIENT_LEFT);
    }
    return this.#left.signal;
  }

  /**
   * Whether a pipe (a CONNECT tunnel, a switched protocol) took the
   * connection over: it ends the session through `engine.ended`, and the
   * connection's loop, which no longer waits for it, must not.
   */
  get handedOff(): boolean {
    return this.phase === "tunnel";
  }

  /** Whether the session has closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /** When the timeout the session is under passes (coarse clock, ms). */
  get deadline(): number {
    return this.#deadline;
  }

  /** Puts the session under the timeout `kind`, from now on. */
  until(kind: DeadlineKind): void {
    const t = this.engine.timeouts;
    this.#kind = kind;
    this.#deadline = this.engine.now + (kind === "reply" ? REPLY_GRACE_MS : t[kind]);
  }

  /**
   * A pipe takes the connection over (phase `tunnel`): slots and dials are
   * done, so the abort signal is let go (an idle tunnel may last hours).
   */
  pipeTakesOver(): void {
    this.phase = "tunnel";
    this.#left = null;
  }

  /** A request head arrived: the request phase begins. */
  startRequest(): void {
    this.phase = "request";
    this.timedOut = false;
    this.#startedAt = Date.now();
    this.touch();
  }

  /** The exchange ended and the connection stays open: back to awaiting a head. */
  keepAlive(): void {
    this.phase = "head";
    this.sent = false; // a 408 may answer a half-sent next head
    this.until("keepAlive");
  }

  /** Runs the action of the passed deadline, by its kind. */
  expire(): void {
    switch (this.#kind) {
      case "head":
      case "keepAlive":
        if (this.reader.buffered === 0) return this.close();
        this.until("reply");
        this.fail(new HttpError(408, "Request head not received in time"));
        return;
      case "idle":
        if (this.phase !== "request" || this.timedOut) return this.close();
        // The exchange answers 504 once the upstream is closed.
        this.timedOut = true;
        this.until("reply");
        this.upstream?.close();
        return;
      case "fin":
      case "reply":
        return this.close();
    }
  }

  /** Writes to the client, noting that the response has begun. */
  write(p: Uint8Array): Promise<number> {
    this.sent = true;
    return this.conn.write(p).then(this.#countDown);
  }

  /** Closes the client connection and the upstream one of the moment. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#left?.abort(CLIENT_LEFT);
    try {
      this.conn.close();
    } catch { /* already closed */ }
    this.upstream?.close();
  }

  /**
   * Watches the client for leaving while an exchange runs: a background
   * read that closes the session at end of stream. Bytes it reads
   * (pipelined requests, the request body) stay buffered for their reader.
   */
  watchClient(): void {
    if (this.#watching || this.readingBody || this.closed) return;
    if (this.reader.buffered >= WATCH_LIMIT) return;
    // A pipe reads the client itself.
    if (this.phase !== "request" && this.phase !== "response") return;
    this.#watching = true;
    this.reader.watch().then((n) => {
      this.#watching = false;
      // In a tunnel the pipe reads on and passes an end of stream on.
      if (this.phase !== "request" && this.phase !== "response") return;
      if (n === null) this.close();
      else this.watchClient();
    }, () => this.close());
  }

  /** Starts accounting for a request: its kind, method and host. */
  begin(kind: RequestKind, method: string, key: string): void {
    this.engine.stats.onRequest(kind);
    this.#method = method;
    this.#key = key;
  }

  /** Counts the bytes of an exchange or tunnel that ended and logs its access line. */
  finish(): void {
    if (this.#method === "") return;
    this.engine.stats.onBytes(this.#bytesUp, this.bytesDown);
    const onAccess = this.engine.onAccess;
    if (onAccess) {
      const entry: AccessEntry = {
        client: this.#client,
        method: this.#method,
        host: this.#key,
        status: this.status,
        bytesUp: this.#bytesUp,
        bytesDown: this.bytesDown,
        durationMs: Date.now() - this.#startedAt,
      };
      if (this.via !== undefined) entry.via = this.via;
      if (this.user !== undefined) entry.user = this.user;
      onAccess(entry);
    }
    this.via = undefined;
    this.#method = this.#key = "";
    this.status = this.#bytesUp = this.bytesDown = 0;
  }

  /**
   * The one place where a failure becomes a reply: the client gets the
   * status, `Proxy-Status` and a one-line body when no byte of a response
   * was sent yet; otherwise the connection is closed. Causes are logged.
   */
  async fail(err: unknown): Promise<void> {
    const { logger, stats } = this.engine;
    if (err instanceof ClientGoneError) {
      // Nobody to answer and nothing failed: logged as nginx does (499).
      this.status = 499;
      logger.debug("Client left before its answer");
      return this.close();
    }
    const r = errorReply(err, this.engine.rejectStatus);
    const cause = err instanceof Error && err.cause !== undefined ? String(err.cause) : "";
    this.status = r.status;
    const fields = { status: r.status, message: r.message, cause };
    if (r.upstream) {
      stats.onUpstreamError(this.#key || "_unknown", r.proxyError);
      logger.info("{status} {message}", fields);
    } else {
      if (r.status < 500) stats.onClientError(r.status);
      logger.debug("{status} {message}", fields);
    }
    if (this.sent || this.closed) return this.close();
    try {
      await writeAll(this, encodeErrorReply(r));
    } catch { /* the client is gone */ }
    this.close();
  }
}
