/** Upstream sockets: slots, dialing with a bound, and the idle pool. */
import type { Logger } from "@logtape/logtape";
import type { Limiter } from "../limit/limiter.ts";
import { LimiterUnavailableError } from "../limit/limiter.ts";
import type { LimitTable } from "../limit/limit_table.ts";
import { BufferedReader } from "./buffered_reader.ts";
import { HttpError } from "./http_head.ts";

const IP_LITERAL = /^(?:[0-9.]+|.*:.*)$/;

/** One open upstream socket; it holds one slot of its host until closed. */
export class Upstream {
  readonly key: string;
  readonly conn: Deno.TcpConn;
  readonly reader: BufferedReader;
  /** When an idle pooled socket is closed (coarse clock, ms). */
  idleUntil = 0;
  #onClose: (up: Upstream) => void;
  #closed = false;

  constructor(
    key: string,
    conn: Deno.TcpConn,
    onClose: (up: Upstream) => void,
  ) {
    this.key = key;
    this.conn = conn;
    this.reader = new BufferedReader(conn);
    this.#onClose = onClose;
  }

  /** Whether {@linkcode Upstream.close} ran. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the socket and gives its slot back, exactly once. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch { /* already closed by the peer */ }
    this.#onClose(this);
  }
}

/** Options of {@linkcode UpstreamPool}. */
export interface UpstreamPoolOptions {
  limiter: Limiter;
  limits: LimitTable;
  connectTimeout: number;
  idleTimeout: number;
  maxIdlePerHost: number;
  rejectStatus: number;
  logger: Logger;
}

/** Opens upstream sockets within their host's limit and keeps idle ones. */
export class UpstreamPool {
  #o: UpstreamPoolOptions;
  #idle = new Map<string, Upstream[]>();
  #open = new Map<string, number>();
  #release: (up: Upstream) => void;
  /** Dials under way, with their deadlines. */
  #dials = new Map<AbortController, number>();
  /** The coarse clock, advanced by {@linkcode UpstreamPool.sweep}. */
  #now = Date.now();

  constructor(options: UpstreamPoolOptions) {
    this.#o = options;
    // A host at its limit elsewhere in the fleet: idle sockets give way.
    options.limiter.onPressure = (key) => {
      for (const up of [...this.#idle.get(key) ?? []]) up.close();
    };
    this.#release = (up) => {
      const n = (this.#open.get(up.key) ?? 1) - 1;
      if (n === 0) this.#open.delete(up.key);
      else this.#open.set(up.key, n);
      this.#removeIdle(up);
      this.#o.limiter.release(up.key);
      this.#o.logger.debug(
        "Upstream connection to {host} closed ({count} open here)",
        { host: up.key, count: n },
      );
    };
  }

  /** Takes an idle socket to `key` for reuse, if one is pooled. */
  take(key: string): Upstream | undefined {
    const list = this.#idle.get(key);
    const up = list?.pop();
    if (list?.length === 0) this.#idle.delete(key);
    return up;
  }

  /** Pools a socket whose exchange ended cleanly, or closes it. */
  put(up: Upstream): void {
    if (up.closed) return;
    const list = this.#idle.get(up.key) ?? [];
    if (list.length >= this.#o.maxIdlePerHost || this.#o.idleTimeout <= 0) {
      up.close();
      return;
    }
    this.#idle.set(up.key, list);
    up.idleUntil = this.#now + this.#o.idleTimeout;
    list.push(up);
    // A pooled socket that speaks or closes is of no further use.
    up.reader.watch().then(
      () => list.includes(up) && up.close(),
      () => up.close(),
    );
  }

  /**
   * Opens a socket to `hostname:port` counted under `key`: takes a slot
   * (closing an idle pooled socket of this host if that is what it takes),
   * then dials within the connect timeout.
   */
  async open(key: string, hostname: string, port: number): Promise<Upstream> {
    const limit = this.#o.limits.limitFor(key);
    let granted: boolean;
    try {
      granted = await this.#o.limiter.acquire(key, limit);
      while (!granted) {
        const idle = this.take(key);
        if (!idle) break;
        idle.close();
        granted = await this.#o.limiter.acquire(key, limit);
      }
    } catch (err) {
      if (err instanceof LimiterUnavailableError) {
        throw new HttpError(
          503,
          `Connection limiter unavailable: ${err.message}`,
          "proxy_internal_error",
        );
      }
      throw err;
    }
    if (!granted) {
      throw new HttpError(
        this.#o.rejectStatus,
        `Connection limit reached for ${key} (limit ${limit})`,
        "connection_limit_reached",
      );
    }
    let conn: Deno.TcpConn;
    // The sweep aborts dials past their deadline (no timer per dial).
    const abort = new AbortController();
    this.#dials.set(abort, this.#now + this.#o.connectTimeout);
    try {
      conn = await Deno.connect({
        hostname,
        port,
        signal: abort.signal,
        // Happy Eyeballs only where a name may resolve to both families.
        autoSelectFamily: !IP_LITERAL.test(hostname),
      });
    } catch (err) {
      this.#o.limiter.release(key);
      throw connectError(key, err, abort.signal.aborted);
    } finally {
      this.#dials.delete(abort);
    }
    conn.setNoDelay(true);
    const n = (this.#open.get(key) ?? 0) + 1;
    this.#open.set(key, n);
    this.#o.logger.debug(
      "Upstream connection to {host} opened ({count} open here)",
      { host: key, count: n },
    );
    return new Upstream(key, conn, this.#release);
  }

  /** Advances the clock; aborts late dials and closes sockets idle too long. */
  sweep(now: number): void {
    this.#now = now;
    for (const [abort, deadline] of this.#dials) {
      if (deadline <= now) abort.abort();
    }
    for (const list of this.#idle.values()) {
      for (const up of list.filter((u) => u.idleUntil <= now)) up.close();
    }
  }

  /** Closes every pooled socket. */
  closeIdle(): void {
    for (const list of [...this.#idle.values()]) {
      for (const up of [...list]) up.close();
    }
  }

  #removeIdle(up: Upstream): void {
    const list = this.#idle.get(up.key);
    if (!list) return;
    const i = list.indexOf(up);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.#idle.delete(up.key);
  }
}

function connectError(key: string, err: unknown, timedOut: boolean): HttpError {
  if (timedOut) {
    return new HttpError(
      504,
      `Connecting to ${key} timed out`,
      "connection_timeout",
    );
  }
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof Deno.errors.ConnectionRefused) {
    return new HttpError(
      502,
      `Connection to ${key} refused`,
      "connection_refused",
    );
  }
  if (
    /lookup|resolve|dns|name or service/i.test(message) ||
    err instanceof Deno.errors.NotFound
  ) {
    return new HttpError(502, `Cannot resolve ${key}`, "destination_not_found");
  }
  return new HttpError(
    502,
    `Cannot connect to ${key}: ${message}`,
    "destination_unavailable",
  );
}
