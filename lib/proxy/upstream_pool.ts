/** Upstream sockets: slots, dialing with a bound, and the idle pool. */
import type { Logger } from "@logtape/logtape";
import type { Limiter } from "../limit/limiter.ts";
import type { LimitTable } from "../limit/limit_table.ts";
import type { RuleMatch } from "../limit/rules/rule_table.ts";
import { ConnectError, LimitReachedError, ParentError } from "./errors.ts";
import type { ParentProxies } from "./parent_proxy.ts";
import { LimiterUnavailableError, RateLimitedError, type Slot } from "../limit/limiter.ts";
import { HostGates } from "./host_gates.ts";
import { abortableDelay } from "./abortable_delay.ts";
import type { DestinationPolicy } from "../access/destination_policy.ts";
import type { ProxyStats } from "../metrics/proxy_stats.ts";
import type { UpstreamHostView } from "../metrics/host_summary.ts";
import { type Grant, type Waiter, WaitQueue } from "./wait_queue.ts";
import { Upstream, type UpstreamOptions } from "./upstream.ts";
import { resolveHost } from "../access/resolve.ts";

const IP_LITERAL = /^(?:[0-9.]+|.*:.*)$/;

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
  /**
   * Time a request may wait for a slot, in milliseconds; 0 refuses at once.
   * A host's rule may set its own (`RuleMatch.queueTimeout`).
   */
  queueTimeout: number;
  /**
   * Requests that may wait per host; beyond it, refused at once. A host's
   * rule may set its own (`RuleMatch.queueMax`).
   */
  queueMax: number;
  /** Idle sockets kept per host. */
  maxIdlePerHost: number;
  /**
   * Longest pause a host's `Retry-After` (on a 429 or 503) may ask for, in
   * ms; 0 honours none. A host's rule may set its own (`RuleMatch.retryAfterMax`).
   */
  retryAfterMax: number;
  /**
   * New upstream requests or tunnels per second each host may be sent; 0:
   * no rate. A host's rule may set its own (`RuleMatch.rate`).
   */
  maxRate?: number;
  /**
   * Whether each host's limit adapts to what it serves, between
   * `adaptiveMin` and its limit. A host's rule may say otherwise
   * (`RuleMatch.adaptive`).
   */
  adaptive?: boolean;
  /** The floor of an adaptive limit; default 1. */
  adaptiveMin?: number;
  /** Where upstream opens and closes are logged (debug). */
  logger: Logger;
  /**
   * The parent proxies hosts go through (`--upstream-proxy`, a rule's
   * `via`); without it, every host is dialed directly.
   */
  parents?: ParentProxies;
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
  /** Requests waiting for a slot, per host. */
  #queue = new WaitQueue();
  /** Waiters offered an idle socket while the limiter answers. */
  #swapping = new Set<Waiter>();
  /** Hosts whose line is being served now, and whether a slot came free meanwhile. */
  #waking = new Map<string, boolean>();
  /** Average time a slot is held, per host (ms), for Retry-After. */
  #holdMs = new Map<string, number>();
  /** The hosts' own signals: their pauses, request rates and adaptive limits. */
  readonly gates: HostGates;

  constructor(options: UpstreamPoolOptions) {
    this.#o = options;
    this.gates = new HostGates({
      ...options,
      maxRate: options.maxRate ?? 0,
      adaptive: options.adaptive ?? false,
      adaptiveMin: options.adaptiveMin ?? 1,
      busy: (key) => (this.#open.get(key) ?? 0) - (this.#idle.get(key)?.length ?? 0),
    });
    // A host at its limit elsewhere in the fleet: idle sockets give way.
    options.limiter.onPressure = (key) => {
      this.#closeIdleOf(key);
    };
    // A slot came free elsewhere in the fleet: the line asks at once.
    options.limiter.onWake = (key) => {
      if (this.#queue.length(key) > 0) this.#wake(key);
    };
    // A host asked another proxy of the fleet for a pause: it holds here too.
    options.limiter.onPause = (key, until) => {
      this.gates.pausedByFleet(key, until);
      this.#closeIdleOf(key);
    };
    this.#release = (up) => {
      const n = (this.#open.get(up.key) ?? 1) - 1;
      if (n === 0) this.#open.delete(up.key);
      else this.#open.set(up.key, n);
      this.#removeIdle(up);
      const held = this.#now - up.openedAt;
      // Kept while the host is in use: forgotten hosts cost nothing.
      if (n === 0 && this.#queue.length(up.key) === 0) this.#holdMs.delete(up.key);
      else this.#holdMs.set(up.key, 0.8 * (this.#holdMs.get(up.key) ?? held) + 0.2 * held);
      if (this.#queue.length(up.key) > 0) this.#wake(up.key);
      this.#o.logger.debug(
        "Upstream connection to {host} closed ({count} open here)",
        { host: up.key, count: n },
      );
    };
  }

  /**
   * Takes an idle socket to `key` for a plain-HTTP request, with a turn
   * under the host's rate when it has one (waited for; the socket waits
   * out of the pool). Throws `RateLimitedError` when no turn comes in time.
   */
  reuse(key: string, signal?: AbortSignal): Promise<Upstream | undefined> {
    const up = this.take(key);
    const turn = up && this.gates.turn(key, signal);
    if (!turn) return Promise.resolve(up);
    return turn.then(() => up, (err) => this.#putBack(up!, err));
  }

  /** Takes an idle socket to `key` for reuse, if one is pooled and the host is not paused. */
  take(key: string): Upstream | undefined {
    if (this.gates.isPaused(key)) return undefined;
    // Over a limit that came down: idle sockets close, none is reused.
    if (this.#over(key)) {
      this.#closeIdleOf(key);
      return undefined;
    }
    // A list emptied here stays until the sweep: the next put() of a busy host refills it.
    return this.#idle.get(key)?.pop();
  }

  /** Pools `up` again and throws `err`. */
  #putBack(up: Upstream, err: unknown): never {
    this.put(up);
    throw err;
  }

  /** Gives an idle socket to a waiting plain-HTTP request, or its slot to the line. */
  #handOff(up: Upstream): boolean {
    if (this.#queue.length(up.key) === 0) return false;
    if (this.#o.limiter.enqueue) {
      const waiter = this.#queue.firstHttp(up.key, (w) => this.#swapping.has(w));
      if (!waiter) up.close(); // its slot goes to the fleet's line
      else this.#swap(up, waiter);
      return true;
    }
    const waiter = this.#queue.takeHttp(up.key);
    if (waiter) {
      this.#o.stats.onAdmitted(up.key);
      waiter.grant(up);
    } else up.close(); // its slot goes to the first in line
    return true;
  }

  /**
   * In a fleet, the line decides who uses a freed slot, even one whose
   * socket is idle here: the slot goes back and is asked for again with
   * `waiter`'s ticket in the same limiter call. Granted, the waiter gets the
   * socket; refused (an earlier ticket elsewhere gets the slot), the socket
   * closes.
   */
  async #swap(up: Upstream, waiter: Waiter): Promise<void> {
    this.#swapping.add(waiter);
    up.slot.release();
    let granted: Slot | null = null;
    try {
      const match = this.#o.limits.lookup(up.key);
      granted = await this.#o.limiter.acquire(up.key, match.limit, {
        group: match.group,
        ticket: waiter.ticket,
        adaptive: this.gates.adaptiveOf(match),
      });
    } catch {
      // The limiter cannot decide: the socket closes, the line is asked again.
    }
    this.#swapping.delete(waiter);
    if (!granted || up.closed) {
      granted?.release();
      up.close();
      return;
    }
    up.slot = granted;
    if (this.#queue.has(up.key, waiter)) {
      this.#queue.remove(up.key, waiter);
      this.#o.stats.onAdmitted(up.key);
      waiter.grant(up);
    } else this.put(up); // it left meanwhile: the next one, or the pool
  }

  /** Whether this process holds more sockets to `key` than the limit in force (adaptive ones come down). */
  #over(key: string): boolean {
    const match = this.#o.limits.lookup(key);
    if (!this.gates.adaptiveOf(match)) return false;
    return (this.#open.get(key) ?? 0) > this.gates.limitOf(key, match);
  }

  /** Pools a socket whose exchange ended cleanly, or closes it. */
  put(up: Upstream): void {
    if (up.closed) return;
    if (this.#over(up.key)) {
      up.close();
      return;
    }
    up.reused = true;
    if (this.#handOff(up)) return;
    const list = this.#idle.get(up.key) ?? [];
    if (list.length >= this.#o.maxIdlePerHost || this.#o.idleTimeout <= 0) {
      up.close();
      return;
    }
    if (list.length === 0) this.#idle.set(up.key, list);
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
    http = false,
  ): Promise<Upstream> {
    await this.gates.waitOutPause(key, signal);
    const parents = this.#o.parents?.route(this.#o.limits.lookup(key).via) ?? [];
    const addresses = await this.#addresses(hostname, port, parents.length > 0);
    const taken = await this.#slot(key, signal, http);
    if (taken instanceof Upstream) {
      // A waiting request handed an idle socket takes its turn under the rate.
      await this.gates.turn(key, signal)?.catch((err) => this.#putBack(taken, err));
      return taken;
    }
    if (taken.waitMs > 0) {
      // The slot's turn under the rate comes later: wait for it, slot held.
      await abortableDelay(taken.waitMs, signal).catch((err) => {
        taken.release();
        throw err;
      });
    }
    // The sweep aborts dials past their deadline (no timer per dial).
    const deadline = new AbortController();
    this.#dials.set(deadline, this.#now + this.#o.connectTimeout);
    // The client leaving aborts the dial too (a listener, not AbortSignal.any,
    // whose joined signal would live as long as the client's).
    const leave = () => deadline.abort();
    signal?.addEventListener("abort", leave, { once: true });
    const dialSignal = deadline.signal;
    const started = performance.now();
    let dialed: Pick<UpstreamOptions, "conn" | "reader" | "parent">;
    try {
      dialed = parents.length === 0
        ? { conn: await dialAddresses(addresses, port, dialSignal) }
        : await this.#o.parents!.connect(parents, {
          key,
          authority: hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`,
          tunnel: !http,
          signal: dialSignal,
          timedOut: () => dialSignal.aborted && !signal?.aborted,
        });
    } catch (err) {
      taken.release();
      // The client left: nothing failed upstream.
      if (signal?.aborted) throw signal.reason;
      this.gates.observe(key, performance.now() - started, true);
      if (err instanceof ParentError) throw err;
      throw connectError(key, err, deadline.signal.aborted);
    } finally {
      this.#dials.delete(deadline);
      signal?.removeEventListener("abort", leave);
    }
    const connectMs = performance.now() - started;
    this.#o.stats.onConnectDuration(connectMs);
    const n = (this.#open.get(key) ?? 0) + 1;
    this.#open.set(key, n);
    // A tunnel's lifetime says nothing of the host: its connect time does.
    if (!http) this.gates.observe(key, connectMs, false);
    this.#o.logger.debug(
      "Upstream connection to {host} opened ({count} open here){via}",
      { host: key, count: n, via: dialed.parent ? ` via ${dialed.parent.url.origin}` : "" },
    );
    const up = new Upstream({ key, slot: taken, onClose: this.#release, ...dialed });
    up.openedAt = this.#now;
    if (signal?.aborted) up.close();
    return up;
  }

  /**
   * The addresses to dial for `hostname:port`, checked by the destination
   * policy. A name the policy did not need resolved is resolved before a
   * slot is taken: one that does not resolve fails as dns_error, and costs
   * no slot. Through a parent, the name is checked as it is (the parent
   * resolves it).
   */
  async #addresses(hostname: string, port: number, viaParent: boolean): Promise<string[]> {
    const d = this.#o.destinations;
    const addresses = d ? await d.check(hostname, port, { resolve: !viaParent }) : [hostname];
    if (viaParent || addresses.length !== 1 || IP_LITERAL.test(addresses[0])) return addresses;
    return await resolveHost(addresses[0], this.#o.connectTimeout);
  }

  /**
   * Takes a slot of `key`, or waits in line for one (up to the queue
   * timeout, the host's rule's or the process's); a waiting plain-HTTP
   * request may be handed an idle socket instead. Returns the slot or the
   * socket.
   * Throws {@linkcode LimitReachedError} when refused and
   * `LimiterUnavailableError` when the limiter cannot decide.
   */
  async #slot(key: string, signal?: AbortSignal, http = false): Promise<Grant> {
    const match = this.#o.limits.lookup(key);
    // The limit in force: an adaptive host's own, for the message and the estimate.
    const limit = this.gates.limitOf(key, match);
    // No overtaking: while others wait, a newcomer joins the line.
    const slot = this.#queue.length(key) === 0 ? await this.#tryAcquire(key, match) : null;
    if (slot) {
      this.#o.stats.onAdmitted(key);
      return slot;
    }
    if (this.gates.isPaused(key)) {
      // Refused because the fleet learnt of a pause: wait it out, or say so.
      await this.gates.waitOutPause(key, signal);
      return await this.#slot(key, signal, http);
    }
    const ahead = this.#queue.length(key);
    const refuse = (reason: "limit" | "queue_full") => {
      this.#o.stats.onRefused(key, reason);
      return new LimitReachedError(key, limit, {
        reason,
        retryAfter: this.#estimate(key, limit, ahead),
      });
    };
    // A rule's queue settings win over the process's.
    const timeout = match.queueTimeout ?? this.#o.queueTimeout;
    if (timeout <= 0) throw refuse("limit");
    if (ahead >= (match.queueMax ?? this.#o.queueMax)) throw refuse("queue_full");
    // In a fleet, the request also takes its place in the fleet's line.
    const ticket = this.#o.limiter.enqueue?.(key);
    const since = performance.now();
    const waiting = this.#queue.wait(key, {
      http,
      timeout,
      signal,
      ticket,
      expired: (waitedMs) => {
        this.#o.stats.onRefused(key, "queue_timeout");
        const limit = this.gates.limitOf(key, this.#o.limits.lookup(key));
        return new LimitReachedError(key, limit, {
          reason: "queue_timeout",
          waitedMs,
          retryAfter: this.#estimate(key, limit, this.#queue.length(key)),
        });
      },
    });
    this.#wake(key); // a slot may have come free meanwhile
    let got: Grant;
    try {
      got = await waiting;
    } finally {
      // Granted, handed a connection, timed out or gone: out of the line.
      if (ticket !== undefined) this.#o.limiter.dequeue?.(key, ticket);
    }
    this.#o.stats.onQueueWait(performance.now() - since);
    return got;
  }

  /**
   * Asks the limiter for a slot within the host's limit and its group's,
   * closing idle pooled sockets of `key` while that is what it takes. Counts
   * a refusal by an unavailable limiter.
   */
  async #tryAcquire(
    key: string,
    match: Readonly<RuleMatch>,
    ticket?: string,
  ): Promise<Slot | null> {
    try {
      const options = {
        group: match.group,
        ticket,
        rate: this.gates.rateOf(key, match),
        adaptive: this.gates.adaptiveOf(match),
      };
      for (;;) {
        const slot = await this.#o.limiter.acquire(key, match.limit, options);
        if (slot) return slot;
        const idle = this.take(key);
        if (!idle) return null;
        idle.close();
      }
    } catch (err) {
      if (err instanceof LimiterUnavailableError) {
        this.#o.stats.onRefused(key, "limiter_unavailable");
      }
      throw this.gates.refused(key, err);
    }
  }

  /** Grants slots to the line of `key`, first come first served, while there are any. */
  async #wake(key: string): Promise<void> {
    if (this.#waking.has(key)) {
      this.#waking.set(key, true);
      return;
    }
    this.#waking.set(key, false);
    try {
      for (let waiter = this.#queue.head(key); waiter; waiter = this.#queue.head(key)) {
        let granted: Slot | null;
        try {
          // Looked up each time: a reload applies to the line at once.
          granted = await this.#tryAcquire(key, this.#o.limits.lookup(key), waiter.ticket);
        } catch (err) {
          if (err instanceof RateLimitedError) {
            // No turn under the rate within the waiter's time: it alone is told.
            if (this.#queue.head(key) === waiter) this.#queue.remove(key, waiter);
            waiter.fail(err);
            continue;
          }
          // The limiter cannot decide: the failure mode answers the line.
          for (let w = this.#queue.head(key); w; w = this.#queue.head(key)) {
            this.#queue.remove(key, w);
            w.fail(err);
          }
          return;
        }
        if (!granted) {
          // A slot freed while the limiter answered: ask once more.
          if (!this.#waking.get(key)) return;
          this.#waking.set(key, false);
          continue;
        }
        if (this.#queue.head(key) !== waiter) {
          // It left (timed out or gone) while the limiter answered.
          granted.release();
          continue;
        }
        this.#queue.remove(key, waiter);
        this.#o.stats.onAdmitted(key);
        waiter.grant(granted);
      }
    } finally {
      this.#waking.delete(key);
    }
  }

  /** Seconds until a slot is likely free for the request `ahead` places back. */
  #estimate(key: string, limit: number, ahead: number): number {
    const hold = this.#holdMs.get(key) ?? 1000;
    // In a fleet, the line is the fleet's.
    const waiting = Math.max(ahead, this.#o.limiter.waiting?.(key) ?? 0);
    return (hold * (waiting + 1)) / Math.max(1, limit) / 1000;
  }

  /** Whether this process holds connections to `key` or has requests waiting for it. */
  inUse(key: string): boolean {
    return this.#open.has(key) || this.#queue.length(key) > 0;
  }

  /**
   * Each host this process holds connections to or has requests waiting
   * for: open (idle included), idle and waiting.
   */
  *hosts(): Iterable<UpstreamHostView> {
    const pauses = this.gates.running();
    const keys = new Set([
      ...this.#open.keys(),
      ...this.#queue.keys(),
      ...pauses.keys(),
      ...this.#o.limiter.adaptive.hosts(),
    ]);
    for (const host of keys) {
      const match = this.#o.limits.lookup(host);
      const adaptive = this.gates.adaptiveOf(match) && this.#o.limiter.adaptive.view(host);
      yield {
        host,
        open: this.#open.get(host) ?? 0,
        idle: this.#idle.get(host)?.length ?? 0,
        queued: this.#queue.length(host),
        pausedUntil: pauses.get(host)?.until,
        adaptive: adaptive ? { limit: adaptive.limit, reason: adaptive.reason } : undefined,
        rate: this.gates.rateOf(host, match)?.perSecond,
      };
    }
  }

  /**
   * Advances the clock; aborts late dials, closes sockets idle too long and
   * asks again for the slots of every host with a line (a slot freed
   * elsewhere in the fleet).
   */
  sweep(now: number): void {
    this.#now = now;
    this.#o.limiter.adaptive.sweep?.(now);
    for (const key of [...this.#queue.keys()]) this.#wake(key);
    for (const [abort, deadline] of this.#dials) {
      if (deadline <= now) abort.abort();
    }
    for (const [key, list] of this.#idle) {
      if (list.length === 0) this.#idle.delete(key);
      else for (const up of list.filter((u) => u.idleUntil <= now)) up.close();
    }
  }

  /** Closes every pooled socket. */
  closeIdle(): void {
    for (const list of [...this.#idle.values()]) {
      for (const up of [...list]) up.close();
    }
  }

  /** Closes the pooled sockets of `key`. */
  #closeIdleOf(key: string): void {
    for (const up of [...this.#idle.get(key) ?? []]) up.close();
  }

  #removeIdle(up: Upstream): void {
    const list = this.#idle.get(up.key);
    if (!list) return;
    const i = list.indexOf(up);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.#idle.delete(up.key);
  }
}

/** Dials the checked addresses in order, the next while time is left. */
async function dialAddresses(
  addresses: string[],
  port: number,
  signal: AbortSignal,
): Promise<Deno.TcpConn> {
  for (let i = 0;; i++) {
    try {
      signal.throwIfAborted();
      const conn = await Deno.connect({ hostname: addresses[i], port, signal });
      conn.setNoDelay(true);
      return conn;
    } catch (err) {
      if (i + 1 >= addresses.length || signal.aborted) throw err;
    }
  }
}

function connectError(key: string, err: unknown, timedOut: boolean): ConnectError {
  if (timedOut) return new ConnectError(key, "timeout", err);
  if (err instanceof Deno.errors.ConnectionRefused) {
    return new ConnectError(key, "refused", err);
  }
  return new ConnectError(key, "unavailable", err);
}
