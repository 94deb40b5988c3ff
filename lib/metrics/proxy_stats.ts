/**
 * The counters a proxy keeps about its own work: plain numbers updated in
 * O(1) on the hot path and read at scrape time by the Prometheus renderer
 * and the admin API.
 *
 * @module
 */

import { DEFAULTS } from "../defaults.ts";

/** Why a new upstream connection was refused. */
export type RefusalReason =
  | "limit"
  | "limiter_unavailable"
  | "queue_timeout"
  | "queue_full"
  | "paused"
  | "rate";

/** Every refusal reason, in the order they are reported. */
export const REFUSAL_REASONS: readonly RefusalReason[] = [
  "limit",
  "limiter_unavailable",
  "queue_timeout",
  "queue_full",
  "paused",
  "rate",
];

/** The kind of a client request: plain HTTP, a CONNECT tunnel, or an HTTP upgrade. */
export type RequestKind = "http" | "connect" | "upgrade";

/** Every request kind, in the order they are reported. */
export const REQUEST_KINDS: readonly RequestKind[] = ["http", "connect", "upgrade"];

/** Upper bounds, in seconds, of the upstream connect duration histogram. */
const CONNECT_BUCKETS: readonly number[] = [
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
];

/** Upper bounds, in seconds, of the Redis call duration histogram. */
const REDIS_BUCKETS: readonly number[] = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
];

/** Upper bounds, in seconds, of the histogram of time spent waiting for a slot. */
const QUEUE_WAIT_BUCKETS: readonly number[] = [
  0.001,
  0.005,
  0.01,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
];

/** The host key under which hosts beyond the tracked maximum are counted. */
export const OTHER_HOST = "_other";

/**
 * The counters of one upstream host. The engine may keep a reference to it
 * (for example per client connection) and update its fields directly.
 */
export class HostStats {
  /** Upstream connections admitted by the limiter. */
  admitted = 0;
  /** Upstream connections refused, by reason. */
  readonly refused: Record<RefusalReason, number> = {
    limit: 0,
    limiter_unavailable: 0,
    queue_timeout: 0,
    queue_full: 0,
    paused: 0,
    rate: 0,
  };
  /** Upstream failures, by Proxy-Status error token (RFC 9209). */
  readonly upstreamErrors: Map<string, number> = new Map();

  /** The sum of refusals over every reason. */
  get refusedTotal(): number {
    const r = this.refused;
    return r.limit + r.limiter_unavailable + r.queue_timeout + r.queue_full;
  }
}

/** How much a host was used: its admitted and refused connections. */
function activity(record: HostStats): number {
  return record.admitted + record.refusedTotal;
}

/**
 * A histogram with fixed buckets: `observe` costs a short loop over at most
 * a dozen bounds; the counts are kept per bucket and made cumulative only
 * when read.
 */
export class Histogram {
  /** Upper bounds of the buckets, in increasing order. */
  readonly bounds: readonly number[];
  #counts: number[];
  #sum = 0;

  /** Creates a histogram with the given increasing upper bounds. */
  constructor(bounds: readonly number[]) {
    this.bounds = bounds;
    this.#counts = new Array(bounds.length + 1).fill(0);
  }

  /** Records one value; a negative or non-finite value is ignored. */
  observe(value: number): void {
    if (!(value >= 0 && value < Infinity)) return;
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]) i++;
    this.#counts[i]++;
    this.#sum += value;
  }

  /**
   * The cumulative count of each bucket (the last one is `+Inf`, which is
   * also the total count) and the sum of every value.
   */
  snapshot(): { cumulative: number[]; sum: number; count: number } {
    const cumulative = new Array<number>(this.#counts.length);
    let total = 0;
    for (let i = 0; i < this.#counts.length; i++) {
      total += this.#counts[i];
      cumulative[i] = total;
    }
    return { cumulative, sum: this.#sum, count: total };
  }
}

/** Options of {@linkcode ProxyStats}. */
export interface ProxyStatsOptions {
  /**
   * Most distinct hosts given their own record; the counters of any further
   * host go to the shared record of {@linkcode OTHER_HOST}, which bounds the
   * memory that clients naming ever new hosts can take. Default
   * `DEFAULTS.statsMaxTrackedHosts` (10000).
   */
  maxTrackedHosts?: number;
  /**
   * Most hosts not in use that keep a record of their own after
   * {@linkcode ProxyStats.forgetIdle}; the others are folded into
   * {@linkcode OTHER_HOST}. Default `DEFAULTS.metricsMaxHosts` (500), the
   * per-host series that `/metrics` shows.
   */
  idleHosts?: number;
}

/**
 * The statistics of one proxy process. Every method is O(1) (the histograms
 * a loop over their dozen bounds) and allocates nothing after a host's first
 * event.
 *
 * @example
 * ```ts
 * const stats = new ProxyStats();
 * stats.onRequest("connect");
 * const host = stats.host("example.com");
 * host.admitted++; // or stats.onAdmitted("example.com")
 * stats.onConnectDuration(12.5);
 * ```
 */
export class ProxyStats {
  /** Client requests, by kind. */
  readonly requests: Record<RequestKind, number> = { http: 0, connect: 0, upgrade: 0 };
  /** Responses the proxy itself sent for bad client input, by status. */
  readonly clientErrors: Map<number, number> = new Map();
  /** Client connections open now. */
  clientConnections = 0;
  /** Body and tunnel bytes relayed towards upstreams and towards clients. */
  readonly bytesRelayed: { upstream: number; downstream: number } = {
    upstream: 0,
    downstream: 0,
  };
  /** Time to open upstream connections, in seconds. */
  readonly connectDuration: Histogram = new Histogram(CONNECT_BUCKETS);
  /** Time of limiter calls to Redis, in seconds. */
  readonly redisCallDuration: Histogram = new Histogram(REDIS_BUCKETS);
  /** Time requests waited in line before they were served, in seconds. */
  readonly queueWait: Histogram = new Histogram(QUEUE_WAIT_BUCKETS);
  /** Reloads of the limit rules from the config file, by result. */
  readonly configReloads: { ok: number; error: number } = { ok: 0, error: 0 };
  /** TLS handshakes on the proxy port that failed or took too long. */
  tlsHandshakeFailures = 0;
  /** Full garbage collections run once the proxy fell quiet. */
  idleCollections = 0;
  /** Pauses asked by hosts with `Retry-After`, by the status that asked. */
  readonly pauses: Map<number, number> = new Map();

  #hosts = new Map<string, HostStats>();
  #maxTracked: number;
  #idleHosts: number;

  /** Creates empty statistics. */
  constructor(options: ProxyStatsOptions = {}) {
    this.#maxTracked = options.maxTrackedHosts ?? DEFAULTS.statsMaxTrackedHosts;
    this.#idleHosts = options.idleHosts ?? DEFAULTS.metricsMaxHosts;
  }

  /**
   * Folds the records of hosts not in use (`inUse` says which are) into
   * {@linkcode OTHER_HOST}, the least active first, until at most
   * `idleHosts` of them keep a record of their own: the totals stay whole,
   * and memory does not grow with every host ever seen. Costs O(1) while
   * there are no more records than that.
   */
  forgetIdle(inUse: (key: string) => boolean): void {
    if (this.#hosts.size <= this.#idleHosts + 1) return;
    const idle = [...this.#hosts].filter(([key]) => key !== OTHER_HOST && !inUse(key));
    const excess = idle.length - this.#idleHosts;
    if (excess <= 0) return;
    idle.sort((a, b) => activity(a[1]) - activity(b[1]));
    const other = this.#hosts.get(OTHER_HOST) ?? new HostStats();
    this.#hosts.delete(OTHER_HOST);
    for (const [key, record] of idle.slice(0, excess)) {
      other.admitted += record.admitted;
      for (const reason of REFUSAL_REASONS) other.refused[reason] += record.refused[reason];
      for (const [token, n] of record.upstreamErrors) {
        other.upstreamErrors.set(token, (other.upstreamErrors.get(token) ?? 0) + n);
      }
      this.#hosts.delete(key);
    }
    this.#hosts.set(OTHER_HOST, other);
  }

  /**
   * The record of one host key, created on first use. Once the tracked
   * maximum is reached, new hosts share the record of
   * {@linkcode OTHER_HOST}. Callers on the hot path may keep the record.
   */
  host(key: string): HostStats {
    let record = this.#hosts.get(key);
    if (record === undefined) {
      if (this.#hosts.size >= this.#maxTracked) {
        record = this.#hosts.get(OTHER_HOST);
        if (record !== undefined) return record;
        key = OTHER_HOST;
      }
      record = new HostStats();
      this.#hosts.set(key, record);
    }
    return record;
  }

  /** The host records, by host key (including {@linkcode OTHER_HOST} once used). */
  hosts(): ReadonlyMap<string, HostStats> {
    return this.#hosts;
  }

  /** Counts a request of a kind (call once per request head read). */
  onRequest(kind: RequestKind): void {
    this.requests[kind]++;
  }

  /** Counts an upstream connection the limiter admitted to a host. */
  onAdmitted(key: string): void {
    this.host(key).admitted++;
  }

  /** Counts an upstream connection refused for a host, with the reason. */
  onRefused(key: string, reason: RefusalReason): void {
    this.host(key).refused[reason]++;
  }

  /** Counts an upstream failure for a host by its Proxy-Status error token. */
  onUpstreamError(key: string, token: string): void {
    const errors = this.host(key).upstreamErrors;
    errors.set(token, (errors.get(token) ?? 0) + 1);
  }

  /** Counts an error response the proxy sent for bad client input (400, 408, 431, ...). */
  onClientError(status: number): void {
    this.clientErrors.set(status, (this.clientErrors.get(status) ?? 0) + 1);
  }

  /** Counts a client connection accepted; pair it with {@linkcode onClientClose}. */
  onClientOpen(): void {
    this.clientConnections++;
  }

  /** Counts a client connection closed. */
  onClientClose(): void {
    this.clientConnections--;
  }

  /**
   * Adds relayed bytes: `upstream` sent towards the upstream, `downstream`
   * sent towards the client.
   */
  onBytes(upstream: number, downstream: number): void {
    this.bytesRelayed.upstream += upstream;
    this.bytesRelayed.downstream += downstream;
  }

  /** Records the time an upstream connect took, in milliseconds. */
  onConnectDuration(ms: number): void {
    this.connectDuration.observe(ms / 1000);
  }

  /** Records the time a request waited in line before it was served, in milliseconds. */
  onQueueWait(ms: number): void {
    this.queueWait.observe(ms / 1000);
  }

  /** Counts a pause a host asked for with `Retry-After` on a response of `status`. */
  onPause(status: number): void {
    this.pauses.set(status, (this.pauses.get(status) ?? 0) + 1);
  }

  /** Counts a reload of the config file: `"ok"`, or `"error"` when the old rules stayed. */
  onConfigReload(result: "ok" | "error"): void {
    this.configReloads[result]++;
  }

  /** Counts a TLS handshake on the proxy port that failed or took too long. */
  onTlsHandshakeFailure(): void {
    this.tlsHandshakeFailures++;
  }

  /** Counts a full garbage collection run once the proxy fell quiet. */
  onIdleCollection(): void {
    this.idleCollections++;
  }

  /** Records the time a limiter call to Redis took, in milliseconds. */
  onRedisCall(ms: number): void {
    this.redisCallDuration.observe(ms / 1000);
  }
}
