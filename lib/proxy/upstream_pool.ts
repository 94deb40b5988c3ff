/** Upstream sockets: slots, dialing with a bound, and the idle pool. */
import type { Logger } from "@logtape/logtape";
import type { Limiter } from "../limit/limiter.ts";
import type { LimitTable } from "../limit/limit_table.ts";
import { BufferedReader } from "./buffered_reader.ts";
import { ConnectError, LimitReachedError } from "./errors.ts";
import { LimiterUnavailableError } from "../limit/limiter.ts";
import type { DestinationPolicy } from "../access/destination_policy.ts";
import type { ProxyStats } from "../metrics/proxy_stats.ts";
import type { UpstreamHostView } from "../metrics/host_summary.ts";

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
  /** Where slots are counted. */
  limiter: Limiter;
  /** The limits to apply. */
  limits: LimitTable;
  /** Where the proxy may connect; checked before a slot is taken. */
  destinations?: DestinationPolicy;
  /** Counters of admissions, refusals and connect times. */
  stats: ProxyStats;
  /** Time a dial may take, in milliseconds. */
  connectTimeout: number;
  /** Time an idle socket stays pooled, in milliseconds. */
  idleTimeout: number;
  /** Idle sockets kept per host. */
  maxIdlePerHost: number;
  /** Where upstream opens and closes are logged (debug). */
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
   * then dials within the connect timeout. `signal` aborts the whole step
   * (the client left) and gives the slot back. Throws
   * {@linkcode LimitReachedError}, `LimiterUnavailableError` or
   * {@linkcode ConnectError}.
   */
  async open(
    key: string,
    hostname: string,
    port: number,
    signal?: AbortSignal,
  ): Promise<Upstream> {
    const addresses = this.#o.destinations
      ? await this.#o.destinations.check(hostname, port)
      : [hostname];
    await this.#acquire(key);
    // The sweep aborts dials past their deadline (no timer per dial).
    const deadline = new AbortController();
    this.#dials.set(deadline, this.#now + this.#o.connectTimeout);
    const dialSignal = signal ? AbortSignal.any([deadline.signal, signal]) : deadline.signal;
    const started = performance.now();
    let conn: Deno.TcpConn | undefined;
    try {
      for (let i = 0; !conn; i++) {
        try {
          dialSignal.throwIfAborted();
          conn = await Deno.connect({
            hostname: addresses[i],
            port,
            signal: dialSignal,
            // Happy Eyeballs only where a name may resolve to both families.
            autoSelectFamily: !IP_LITERAL.test(addresses[i]),
          });
        } catch (err) {
          // The next checked address, while time is left.
          if (i + 1 >= addresses.length || dialSignal.aborted) throw err;
        }
      }
    } catch (err) {
      this.#o.limiter.release(key);
      throw connectError(key, err, deadline.signal.aborted);
    } finally {
      this.#dials.delete(deadline);
    }
    this.#o.stats.onConnectDuration(performance.now() - started);
    conn.setNoDelay(true);
    const n = (this.#open.get(key) ?? 0) + 1;
    this.#open.set(key, n);
    this.#o.logger.debug(
      "Upstream connection to {host} opened ({count} open here)",
      { host: key, count: n },
    );
    const up = new Upstream(key, conn, this.#release);
    if (signal?.aborted) up.close();
    return up;
  }

  /**
   * Takes a slot of `key`, closing an idle pooled socket of it when that is
   * what it takes; throws {@linkcode LimitReachedError} at the limit.
   */
  async #acquire(key: string): Promise<void> {
    const limit = this.#o.limits.limitFor(key);
    try {
      while (!await this.#o.limiter.acquire(key, limit)) {
        const idle = this.take(key);
        if (!idle) {
          this.#o.stats.onRefused(key, "limit");
          throw new LimitReachedError(key, limit);
        }
        idle.close();
      }
    } catch (err) {
      if (err instanceof LimiterUnavailableError) {
        this.#o.stats.onRefused(key, "limiter_unavailable");
      }
      throw err;
    }
    this.#o.stats.onAdmitted(key);
  }

  /** Each host this process holds connections to: open (idle included) and idle. */
  *hosts(): Iterable<UpstreamHostView> {
    for (const [host, open] of this.#open) {
      yield { host, open, idle: this.#idle.get(host)?.length ?? 0 };
    }
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

function connectError(key: string, err: unknown, timedOut: boolean): ConnectError {
  if (timedOut) return new ConnectError(key, "timeout", err);
  if (err instanceof Deno.errors.ConnectionRefused) {
    return new ConnectError(key, "refused", err);
  }
  const message = err instanceof Error ? err.message : String(err);
  if (
    /lookup|resolve|dns|name or service|FQDN/i.test(message) ||
    err instanceof Deno.errors.NotFound || err instanceof URIError
  ) {
    return new ConnectError(key, "not_found", err);
  }
  return new ConnectError(key, "unavailable", err);
}
