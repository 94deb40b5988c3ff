/**
 * The proxy engine: accepts client connections on a `Deno.Listener`, frames
 * HTTP/1.1 by hand, forwards absolute-form requests and CONNECT tunnels to
 * upstream sockets opened within each host's limit.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { Limiter } from "../limit/limiter.ts";
import type { LimitTable } from "../limit/limit_table.ts";
import { BufferedReader, TooLargeError, writeAll } from "./buffered_reader.ts";
import { pump, relayBody, WriteError } from "./body.ts";
import {
  bodyFraming,
  encodeHead,
  encodeLatin1,
  endToEndLines,
  field,
  fieldTokens,
  type Framing,
  HttpError,
  parseRequestHead,
  parseResponseHead,
  type RequestHead,
  type ResponseHead,
} from "./http_head.ts";
import { parseConnectTarget, parseTarget, type Target } from "./target.ts";
import { type Upstream, UpstreamPool } from "./upstream_pool.ts";
import { DEFAULTS, type Timeouts } from "../defaults.ts";

export type { Timeouts };

/** Options of {@linkcode ProxyServer}. */
export interface ProxyServerOptions {
  listener: Deno.Listener<Deno.TcpConn>;
  limits: LimitTable;
  limiter: Limiter;
  rejectStatus: number;
  timeouts?: Partial<Timeouts>;
  maxHeadSize?: number;
  maxIdlePerHost?: number;
  logger: Logger;
}

const SWEEP_MS = 250;
const ESTABLISHED = encodeLatin1("HTTP/1.1 200 Connection Established\r\n\r\n");
const REASONS: Record<number, string> = {
  400: "Bad Request",
  405: "Method Not Allowed",
  408: "Request Timeout",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

/** One client connection. */
class Session {
  readonly conn: Deno.TcpConn;
  deadline = 0;
  /** Inside an exchange or tunnel (not waiting for a request head). */
  busy = false;
  /** Bytes of a response were sent for the current exchange. */
  responded = false;
  timedOut = false;
  upstream: Upstream | null = null;
  #closed = false;

  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
    this.upstream?.close();
  }
}

/** Serves the proxy port until {@linkcode ProxyServer.shutdown}. */
export class ProxyServer {
  #listener: Deno.Listener<Deno.TcpConn>;
  #limiter: Limiter;
  #rejectStatus: number;
  #timeouts: Timeouts;
  #maxHead: number;
  #logger: Logger;
  #pool: UpstreamPool;
  #sessions = new Set<Session>();
  #now = Date.now();
  #closing = false;
  #drained = Promise.withResolvers<void>();

  constructor(options: ProxyServerOptions) {
    this.#listener = options.listener;
    this.#limiter = options.limiter;
    this.#rejectStatus = options.rejectStatus;
    this.#timeouts = { ...DEFAULTS.timeouts, ...options.timeouts };
    this.#maxHead = options.maxHeadSize ?? DEFAULTS.maxHeadSize;
    this.#logger = options.logger;
    this.#pool = new UpstreamPool({
      limiter: options.limiter,
      limits: options.limits,
      connectTimeout: this.#timeouts.connect,
      idleTimeout: this.#timeouts.upstreamIdle,
      maxIdlePerHost: options.maxIdlePerHost ?? DEFAULTS.maxIdlePerHost,
      rejectStatus: options.rejectStatus,
      logger: options.logger,
    });
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
          this.#logger.warn("Accept failed: {error}", { error: String(err) });
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

  /**
   * Stops accepting, closes idle client connections at once, lets open
   * exchanges and tunnels finish for up to `graceMs`, then closes the rest.
   */
  async shutdown(graceMs: number): Promise<void> {
    this.#closing = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    for (const s of this.#sessions) if (!s.busy) s.close();
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
    for (const s of this.#sessions) {
      if (s.deadline > now) continue;
      if (s.busy && s.upstream && !s.responded && !s.timedOut) {
        // Let the exchange answer 504, then close if it still hangs.
        s.timedOut = true;
        s.deadline = now + 1000;
        s.upstream.close();
      } else {
        s.timedOut = true;
        s.close();
      }
    }
    this.#pool.sweep(now);
  }

  async #handle(conn: Deno.TcpConn): Promise<void> {
    const s = new Session(conn);
    this.#sessions.add(s);
    s.deadline = this.#now + this.#timeouts.head;
    const reader = new BufferedReader(conn);
    try {
      while (!s.closed) {
        let head: Uint8Array | null;
        try {
          head = await reader.readHead(this.#maxHead);
        } catch (err) {
          if (err instanceof TooLargeError) {
            await this.#reject(
              s,
              new HttpError(431, "Request head is too large"),
              true,
            );
          }
          return;
        }
        if (head === null) return;
        s.busy = true;
        s.responded = false;
        s.timedOut = false;
        this.#touch(s);
        let req: RequestHead;
        try {
          req = parseRequestHead(head);
        } catch (err) {
          if (err instanceof HttpError) await this.#reject(s, err, true);
          return;
        }
        if (req.method === "CONNECT") {
          await this.#tunnel(s, reader, req);
          return;
        }
        if (!await this.#exchange(s, reader, req) || this.#closing) return;
        s.busy = false;
        s.deadline = this.#now + this.#timeouts.keepAlive;
      }
    } catch (err) {
      this.#logger.debug("Client connection ended: {error}", {
        error: String(err),
      });
    } finally {
      s.close();
      this.#sessions.delete(s);
      if (this.#closing && this.#sessions.size === 0) this.#drained.resolve();
    }
  }

  #touch(s: Session): void {
    s.deadline = this.#now + this.#timeouts.idle;
  }

  /** Sends an error response; `close` ends the connection after it. */
  async #reject(s: Session, err: HttpError, close: boolean): Promise<void> {
    if (s.responded || s.closed) return;
    s.responded = true;
    if (err.status >= 500 && err.proxyError !== "connection_limit_reached") {
      this.#logger.info("{status} {message}", {
        status: err.status,
        message: err.message,
      });
    } else {
      this.#logger.debug("{status} {message}", {
        status: err.status,
        message: err.message,
      });
    }
    const body = encodeLatin1(`${err.message.replace(/[^\x20-\x7e]/g, "?")}\n`);
    const details = err.message.replace(/[^\x20-\x7e]/g, "?").replace(
      /["\\]/g,
      "\\$&",
    );
    const lines = [
      "Content-Type: text/plain; charset=utf-8",
      `Content-Length: ${body.length}`,
      `Proxy-Status: dprl; error=${err.proxyError}; details="${details}"`,
    ];
    if (close || this.#closing) lines.push("Connection: close");
    const head = encodeHead(
      `HTTP/1.1 ${err.status} ${REASONS[err.status] ?? "Error"}`,
      lines,
    );
    const out = new Uint8Array(head.length + body.length);
    out.set(head);
    out.set(body, head.length);
    try {
      await writeAll(s.conn, out);
    } catch { /* the client is gone */ }
  }

  async #tunnel(
    s: Session,
    reader: BufferedReader,
    req: RequestHead,
  ): Promise<void> {
    let up: Upstream;
    try {
      const target = parseConnectTarget(req.target);
      up = await this.#pool.open(target.key, target.hostname, target.port);
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      await this.#reject(s, err, true);
      return;
    }
    if (s.closed) {
      up.close();
      return;
    }
    s.upstream = up;
    s.responded = true;
    this.#touch(s);
    await writeAll(s.conn, ESTABLISHED);
    const early = reader.takeBuffered();
    if (early.length > 0) await writeAll(up.conn, early);
    await this.#pipe(s, up);
  }

  /**
   * Pipes both ways until both sides have ended, then closes both. The end
   * of one direction is passed on as a half-close while the other flows.
   */
  async #pipe(s: Session, up: Upstream): Promise<void> {
    const touch = () => this.#touch(s);
    let open = 2;
    const ended = (dst: Deno.TcpConn) => --open === 0 ? s.close() : dst.closeWrite();
    const fail = () => s.close();
    await Promise.all([
      pump(s.conn, up.conn, touch).then(() => ended(up.conn)).catch(fail),
      pump(up.conn, s.conn, touch).then(() => ended(s.conn)).catch(fail),
    ]);
    s.close();
  }

  /**
   * Forwards one absolute-form request and its response. Resolves whether
   * the client connection may carry another request.
   */
  async #exchange(
    s: Session,
    reader: BufferedReader,
    req: RequestHead,
  ): Promise<boolean> {
    const bad = (msg: string) => new HttpError(400, msg);
    let target: Target;
    let framing: Framing;
    try {
      target = parseTarget(req.target);
      framing = bodyFraming(req, bad, true);
      if (req.names.indexOf("host") !== req.names.lastIndexOf("host")) {
        throw bad("More than one Host field");
      }
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      await this.#reject(s, err, true);
      return false;
    }
    const connection = fieldTokens(req, "connection");
    const clientKeepAlive = req.minor === 1 && !connection.includes("close");
    const upgrade = connection.includes("upgrade") ? field(req, "upgrade") : undefined;
    const lines = endToEndLines(req);
    const hostAt = lines.findIndex((l) => /^host:/i.test(l));
    const hostLine = `Host: ${target.authority}`;
    if (hostAt < 0) lines.unshift(hostLine);
    else if (
      field(req, "host")!.toLowerCase() !== target.authority.toLowerCase()
    ) {
      lines[hostAt] = hostLine;
    }
    if (upgrade !== undefined) {
      lines.push("Connection: Upgrade", `Upgrade: ${upgrade}`);
    }
    const out: Outbound = {
      req,
      framing,
      head: encodeHead(`${req.method} ${target.path} HTTP/1.1`, lines),
      upgrading: upgrade !== undefined,
      clientKeepAlive,
    };

    for (let attempt = 0;; attempt++) {
      let up = this.#pool.take(target.key);
      const reused = up !== undefined;
      if (!up) {
        try {
          up = await this.#pool.open(target.key, target.hostname, target.port);
        } catch (err) {
          if (!(err instanceof HttpError)) throw err;
          await this.#reject(s, err, framing.kind !== "none");
          return framing.kind === "none" && clientKeepAlive;
        }
        if (s.closed) {
          up.close();
          return false;
        }
      }
      s.upstream = up;
      const result = await this.#forward(s, reader, up, out);
      if (result === "retry" && reused && attempt === 0) continue;
      if (result === "retry") {
        await this.#reject(
          s,
          new HttpError(
            502,
            `Upstream ${target.key} closed the connection`,
            "http_response_incomplete",
          ),
          true,
        );
        return false;
      }
      return result;
    }
  }

  /**
   * Sends the request on `up` and relays the response. Resolves whether the
   * client connection may go on, or `"retry"` when a reused upstream socket
   * closed before answering a request without a body.
   */
  async #forward(
    s: Session,
    reader: BufferedReader,
    up: Upstream,
    { req, framing, head, upgrading, clientKeepAlive }: Outbound,
  ): Promise<boolean | "retry"> {
    const touch = () => this.#touch(s);
    let requestDone = false;
    let requestError: unknown = null;
    let finished = false;
    // Once the request is sent, a client that closes aborts the exchange.
    const watchClient = () => {
      requestDone = true;
      if (upgrading || reader.buffered > 0) return;
      reader.watch().then(
        (n) => n === null && !finished && s.close(),
        () => !finished && s.close(),
      );
    };
    try {
      let sending: Promise<void>;
      if (framing.kind === "none") {
        await writeAll(up.conn, head);
        watchClient();
        sending = Promise.resolve();
      } else {
        sending = relayBody(reader, up.conn, framing, head, touch, (m) => new HttpError(400, m))
          .then(watchClient, (err) => {
            // A broken request body ends the exchange; an upstream that stops
            // reading early may still answer.
            requestError = err;
            if (!(err instanceof WriteError)) up.close();
          });
      }

      let res: ResponseHead;
      for (;;) {
        let resHead: Uint8Array | null;
        try {
          resHead = await up.reader.readHead(this.#maxHead);
        } catch (err) {
          if (err instanceof TooLargeError) {
            throw new HttpError(
              502,
              "Upstream response head is too large",
              "http_response_incomplete",
            );
          }
          throw err;
        }
        if (resHead === null) {
          up.close();
          if (framing.kind === "none" && !s.timedOut) {
            finished = true;
            return "retry";
          }
          throw new HttpError(
            502,
            `Upstream ${up.key} closed the connection`,
            "http_response_incomplete",
          );
        }
        res = parseResponseHead(resHead);
        touch();
        if (res.status >= 200 || res.status === 101) break;
        // Interim 1xx: relay and keep waiting for the final response.
        s.responded = true;
        await writeAll(s.conn, encodeHead(res.statusLine, endToEndLines(res)));
      }

      s.responded = true;
      if (res.status === 101) {
        if (!upgrading) {
          throw new HttpError(
            502,
            "Upstream switched protocols unasked",
            "http_protocol_error",
          );
        }
        const lines = endToEndLines(res);
        lines.push(
          "Connection: Upgrade",
          `Upgrade: ${field(res, "upgrade") ?? ""}`,
        );
        await writeAll(s.conn, encodeHead(res.statusLine, lines));
        const early = reader.takeBuffered();
        if (early.length > 0) await writeAll(up.conn, early);
        const late = up.reader.takeBuffered();
        if (late.length > 0) await writeAll(s.conn, late);
        await this.#pipe(s, up);
        return false;
      }

      const bare = req.method === "HEAD" || res.status === 204 ||
        res.status === 304;
      const resFraming: Framing = bare
        ? { kind: "none" }
        : bodyFraming(res, (m) => new HttpError(502, m, "http_protocol_error"), false);
      const resConnection = fieldTokens(res, "connection");
      const upstreamKeepAlive = resFraming.kind !== "close" &&
        (res.minor === 1 ? !resConnection.includes("close") : resConnection.includes("keep-alive"));
      const keepAlive = clientKeepAlive && resFraming.kind !== "close" &&
        !this.#closing;
      const lines = endToEndLines(res);
      if (!keepAlive) lines.push("Connection: close");
      const statusLine = res.minor === 1 ? res.statusLine : `HTTP/1.1${res.statusLine.slice(8)}`;
      await relayBody(
        up.reader,
        s.conn,
        resFraming,
        encodeHead(statusLine, lines),
        touch,
        (m) => new HttpError(502, m, "http_response_incomplete"),
      );
      finished = true;
      if (!requestDone && requestError === null) {
        // The response is complete while the client still sends its body.
        up.close();
        return false;
      }
      await sending;
      s.upstream = null;
      if (upstreamKeepAlive && requestDone && !s.closed) {
        this.#pool.put(up);
      } else up.close();
      return keepAlive && requestDone;
    } catch (caught) {
      finished = true;
      up.close();
      s.upstream = null;
      const err = requestError instanceof HttpError ? requestError : caught;
      if (s.closed) return false;
      if (s.timedOut) {
        await this.#reject(
          s,
          new HttpError(
            504,
            `Upstream ${up.key} did not answer in time`,
            "http_response_timeout",
          ),
          true,
        );
      } else if (err instanceof HttpError) {
        await this.#reject(s, err, true);
      } else {
        await this.#reject(
          s,
          new HttpError(
            502,
            `Upstream ${up.key} failed: ${err instanceof Error ? err.message : err}`,
            "http_response_incomplete",
          ),
          true,
        );
      }
      return false;
    }
  }
}

/** A request ready to go upstream. */
interface Outbound {
  req: RequestHead;
  /** How the request body is framed. */
  framing: Framing;
  /** The rewritten request head. */
  head: Uint8Array;
  /** The client asked to switch protocols (e.g. WebSocket). */
  upgrading: boolean;
  /** The client lets its connection carry further requests. */
  clientKeepAlive: boolean;
}
