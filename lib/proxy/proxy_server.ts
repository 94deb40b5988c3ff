/**
 * The proxy engine: accepts client connections on a `Deno.Listener`, frames
 * HTTP/1.1 by hand, forwards absolute-form requests and CONNECT tunnels to
 * upstream sockets opened within each host's limit.
 *
 * This module holds the listener, the client caps, the sweep of deadlines
 * and each connection's sequence of requests. One client connection is a
 * `Session` (session.ts) that moves through named phases and is always
 * under one named deadline; a request is a plain-HTTP exchange (exchange.ts)
 * or a CONNECT tunnel (tunnel.ts). Every failure is an error named where it
 * happens and turned into a reply in one place, `Session.fail`.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { Limiter } from "../limit/limiter.ts";
import type { LimitTable } from "../limit/limit_table.ts";
import { TooLargeError } from "./buffered_reader.ts";
import { field, HttpError, parseRequestHead, type RequestHead } from "./http_head.ts";
import { ClientRefusedError, ProxyAuthRequiredError } from "./errors.ts";
import { AuthBusyError, ClientPolicy, PROXY_AUTHENTICATE } from "../access/client_policy.ts";
import type { DestinationPolicy } from "../access/destination_policy.ts";
import { ProxyStats } from "../metrics/proxy_stats.ts";
import type { UpstreamHostView } from "../metrics/host_summary.ts";
import type { AccessEntry } from "../log_format.ts";
import { UpstreamPool } from "./upstream_pool.ts";
import type { ParentProxies } from "./parent_proxy.ts";
import { type Engine, Session } from "./session.ts";
import { exchange } from "./exchange.ts";
import { tunnel } from "./tunnel.ts";
import { DEFAULTS, type Timeouts } from "../defaults.ts";
import type { ClientConn, ClientListener } from "./client_conn.ts";
import { fullCollection, heapUsed, IdleCollector } from "../idle_collector.ts";

/** Options of {@linkcode ProxyServer}. */
export interface ProxyServerOptions {
  /** The bound proxy port: plain TCP ({@linkcode tcpClients}) or TLS. */
  listener: ClientListener;
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
  /** Longest pause a host's `Retry-After` may ask for (ms); 0 honours none. */
  retryAfterMax?: number;
  /** New requests or tunnels per second each host may be sent; 0 or absent: no rate. */
  maxRate?: number;
  /** Whether hosts' limits adapt unless their rule says otherwise. */
  adaptive?: boolean;
  /** The floor of an adaptive limit. */
  adaptiveMin?: number;
  /** The parent proxies hosts go through; without it, every host is dialed directly. */
  parents?: ParentProxies;
  /** Collects garbage once the server falls quiet ({@linkcode IdleCollector}). */
  collectWhenIdle?: boolean;
}

const SWEEP_MS = 250;

/** Serves the proxy port until {@linkcode ProxyServer.shutdown}. */
export class ProxyServer {
  #listener: ClientListener;
  #engine: Engine;
  #clients: ClientPolicy;
  #maxClients: number;
  #maxClientsPerIp: number;
  #perIp = new Map<string, number>();
  #sessions = new Set<Session>();
  #drained = Promise.withResolvers<void>();
  /** Accept failures not logged yet (at most one line a second). */
  #acceptFailures = 0;
  #acceptLoggedAt = 0;
  #collector: IdleCollector | null = null;

  /** Creates the engine; nothing is served until {@linkcode serve}. */
  constructor(options: ProxyServerOptions) {
    this.#listener = options.listener;
    this.#clients = options.clients ?? new ClientPolicy({});
    this.#maxClients = options.maxClients ?? DEFAULTS.maxClients;
    this.#maxClientsPerIp = options.maxClientsPerIp ?? DEFAULTS.maxClientsPerIp;
    const timeouts = { ...DEFAULTS.timeouts, ...options.timeouts };
    const stats = options.stats ?? new ProxyStats();
    const pool = new UpstreamPool({
      limiter: options.limiter,
      limits: options.limits,
      destinations: options.destinations,
      stats,
      connectTimeout: timeouts.connect,
      idleTimeout: timeouts.upstreamIdle,
      queueTimeout: options.queueTimeout ?? DEFAULTS.queueTimeout,
      queueMax: options.queueMax ?? DEFAULTS.queueMax,
      retryAfterMax: options.retryAfterMax ?? DEFAULTS.retryAfterMax,
      maxRate: options.maxRate,
      adaptive: options.adaptive,
      adaptiveMin: options.adaptiveMin ?? DEFAULTS.adaptiveMin,
      maxIdlePerHost: options.maxIdlePerHost ?? DEFAULTS.maxIdlePerHost,
      logger: options.logger,
      parents: options.parents,
    });
    const collect = options.collectWhenIdle ? fullCollection() : null;
    if (collect) this.#collector = new IdleCollector({ collect, heapUsed });
    const parents = options.parents?.defaults.map((p) => p.url.origin).join(", ");
    if (parents) options.logger.info("Going out through {parents}", { parents });
    this.#engine = {
      pool,
      stats,
      logger: options.logger,
      timeouts,
      maxHead: options.maxHeadSize ?? DEFAULTS.maxHeadSize,
      rejectStatus: options.rejectStatus,
      onAccess: options.onAccess,
      now: Date.now(),
      closing: false,
      ended: (s) => this.#ended(s),
    };
  }

  /** Each upstream host this process holds connections to. */
  hosts(): Iterable<UpstreamHostView> {
    return this.#engine.pool.hosts();
  }

  /** Whether the server still accepts connections. */
  get accepting(): boolean {
    return !this.#engine.closing;
  }

  /** Accepts connections until shut down; resolves once all have ended. */
  async serve(): Promise<void> {
    const engine = this.#engine;
    const sweeper = setInterval(() => this.#sweep(), SWEEP_MS);
    try {
      while (!engine.closing) {
        let conn: ClientConn;
        try {
          conn = await this.#listener.accept();
        } catch (err) {
          if (engine.closing || err instanceof Deno.errors.BadResource) break;
          // Out of file descriptors, for one: wait for some to free up.
          this.#acceptFailed(err);
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        this.#handle(conn);
      }
      engine.closing = true;
      if (this.#sessions.size === 0) this.#drained.resolve();
      await this.#drained.promise;
    } finally {
      clearInterval(sweeper);
      engine.pool.closeIdle();
    }
  }

  /** Logs accept failures, at most one line a second. */
  #acceptFailed(err: unknown): void {
    this.#acceptFailures++;
    const now = Date.now();
    if (now - this.#acceptLoggedAt < 1000) return;
    this.#engine.logger.warn("Accept failed {count} time(s): {error}", {
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
    this.#engine.closing = true;
    this.#listener.close();
    for (const s of this.#sessions) if (s.phase === "head") s.close();
    this.#engine.pool.closeIdle();
    if (this.#sessions.size === 0) this.#drained.resolve();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const grace = new Promise<void>((r) => timer = setTimeout(r, graceMs));
    await Promise.race([this.#drained.promise, grace]);
    clearTimeout(timer);
    for (const s of this.#sessions) s.close();
    await this.#drained.promise;
  }

  /** Advances the coarse clock and runs the action of every passed deadline. */
  #sweep(): void {
    const now = this.#engine.now = Date.now();
    // forEach, not for-of: no iterator result per session until the loop is optimized.
    this.#sessions.forEach((s) => {
      if (s.deadline <= now) s.expire();
    });
    this.#engine.pool.sweep(now);
    this.#engine.stats.forgetIdle((key) => this.#engine.pool.inUse(key));
    const { http, connect, upgrade } = this.#engine.stats.requests;
    if (this.#collector?.tick(now, http + connect + upgrade)) this.#engine.stats.onIdleCollection();
  }

  /**
   * Serves one client connection: request after request, until it ends or
   * a pipe (a CONNECT tunnel, a switched protocol) takes it over; the pipe
   * then ends it ({@linkcode Session.handedOff}), and no frame of this loop
   * waits meanwhile.
   */
  async #handle(conn: ClientConn): Promise<void> {
    const s = new Session(conn, this.#engine);
    this.#sessions.add(s);
    this.#engine.stats.onClientOpen();
    const fromIp = (this.#perIp.get(s.ip) ?? 0) + 1;
    this.#perIp.set(s.ip, fromIp);
    try {
      // Refused before a byte is read: a stranger cannot hold a connection.
      const refusal = this.#refusal(s, fromIp);
      if (refusal) return await s.fail(refusal);
      while (!s.closed) {
        const req = await this.#readRequest(s);
        if (req === null) return;
        if (req.method === "CONNECT") return await tunnel(s, req);
        const more = await exchange(s, req);
        if (s.handedOff) return;
        s.finish();
        if (!more || this.#engine.closing) return;
        s.keepAlive();
      }
    } catch (err) {
      this.#broke(err);
    } finally {
      if (!s.handedOff) this.#ended(s);
    }
  }

  /** Logs what ended a client connection unexpectedly. */
  #broke(err: unknown): void {
    this.#engine.logger.debug("Client connection ended: {error}", { error: String(err) });
  }

  /** Closes a session and forgets it. */
  #ended(s: Session): void {
    s.close();
    s.finish();
    this.#sessions.delete(s);
    this.#engine.stats.onClientClose();
    const n = this.#perIp.get(s.ip)! - 1;
    if (n === 0) this.#perIp.delete(s.ip);
    else this.#perIp.set(s.ip, n);
    if (this.#engine.closing && this.#sessions.size === 0) this.#drained.resolve();
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

  /** Reads and parses the next request head; `null` ends the session. */
  async #readRequest(s: Session): Promise<RequestHead | null> {
    try {
      const head = await s.reader.readHead(this.#engine.maxHead);
      if (head === null) return null;
      s.startRequest();
      const req = parseRequestHead(head);
      checkHost(req);
      if (this.#clients.authRequired) await this.#authenticate(req, s);
      return req;
    } catch (err) {
      const bad = err instanceof TooLargeError
        ? new HttpError(431, "Request head is too large")
        : err;
      if (
        !(bad instanceof HttpError || bad instanceof ProxyAuthRequiredError ||
          bad instanceof AuthBusyError)
      ) throw err;
      await s.fail(bad);
      return null;
    }
  }

  /** Refuses a request without valid credentials (authentication is on). */
  async #authenticate(req: RequestHead, s: Session): Promise<void> {
    const user = await this.#clients.authenticate(field(req, "proxy-authorization"), s.ip);
    if (user === null) throw new ProxyAuthRequiredError(PROXY_AUTHENTICATE);
    s.user = s.conn.peer ?? user;
  }
}

/**
 * Refuses an HTTP/1.1 request, CONNECT included, without exactly one Host
 * field (RFC 9112, 3.2: a server answers 400). HTTP/1.0 may omit it.
 */
function checkHost(req: RequestHead): void {
  const first = req.names.indexOf("host");
  if (first !== req.names.lastIndexOf("host")) throw new HttpError(400, "More than one Host field");
  if (first < 0 && req.minor === 1) throw new HttpError(400, "Missing Host field");
}
