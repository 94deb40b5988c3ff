/**
 * {@linkcode RedisConnection}: the Redis limiter's connection and what it
 * knows of Redis's state: reachable or not, the epoch of the connection
 * (bumped by every loss), every call bounded by the timeout, and one log line
 * per outage.
 *
 * @module
 */

import type { Cluster, Redis } from "ioredis";
import type { Logger } from "@logtape/logtape";
import type { FailureMode, RedisConfig } from "./redis_config.ts";
import { createClient, guardStreams } from "./redis_client.ts";
import {
  describe,
  isAuthError,
  RedisConnectionLostError,
  RedisReplyError,
  RedisTimeoutError,
  toRedisError,
} from "./redis_errors.ts";
import { withTimeout } from "../with_timeout.ts";

/** How long the log line of an outage waits for the errors that come with it, in ms. */
const OUTAGE_GATHER_MS = 250;

/** Options of {@linkcode RedisConnection}. */
export interface RedisConnectionOptions {
  /** Where Redis is. */
  redis: RedisConfig;
  /** How long one call may take, in ms. */
  timeout: number;
  /** The failure mode, named in the outage's log line. */
  mode: FailureMode;
  /** Where the outage is logged. */
  logger: Logger;
  /** Called when the client is ready: at first (`reconnect` false) and after every reconnect. */
  onReady: (reconnect: boolean) => void;
  /** Called when Redis answers again after an outage. */
  onUp: () => void;
}

/** The limiter's Redis connection and its state. */
export class RedisConnection {
  /** The ioredis client. */
  readonly client: Redis | Cluster;
  /** Whether the client is a Cluster client. */
  readonly cluster: boolean;
  #own: boolean;
  #o: RedisConnectionOptions;
  #available = true;
  #everReady = false;
  /** The connection closed and no 'ready' has been handled since. */
  #awaitingReady = false;
  #epoch = 0;
  #closed = false;
  /** The last error the client reported, told when the connection closes. */
  #lastError: unknown = null;
  /** The errors of an outage whose log line is yet to be written. */
  #gathered: unknown[] | null = null;
  #onReady = (): void => {
    if (this.#closed) return;
    const reconnect = this.#everReady;
    this.#everReady = true;
    this.#awaitingReady = false;
    this.#lastError = null;
    this.#o.onReady(reconnect);
  };
  #onClose = (): void => {
    if (this.#closed) return;
    this.#awaitingReady = true;
    this.#epoch++;
    const cause = this.#lastError ?? new RedisConnectionLostError("Connection to Redis closed");
    this.#lastError = null;
    this.#down(cause);
  };
  #onError = (error: unknown): void => {
    this.#lastError = error;
    this.#gathered?.push(error);
    this.#o.logger.debug("Redis client error: {error}", { error });
  };

  /** Creates the client (connected on first use) and listens to its state. */
  constructor(options: RedisConnectionOptions) {
    this.#o = options;
    const { client, own } = createClient(options.redis);
    this.client = client;
    this.#own = own;
    this.cluster = (client as { isCluster?: boolean }).isCluster === true;
    client.on("ready", this.#onReady);
    client.on("close", this.#onClose);
    if (own) {
      client.on("error", this.#onError);
      guardStreams(client);
    }
  }

  /** Bumped at every lost connection: a reply from another epoch is distrusted. */
  get epoch(): number {
    return this.#epoch;
  }

  /** Whether Redis is reachable: false from a loss or a failed call until it answers again. */
  get up(): boolean {
    return this.#available && !this.#awaitingReady && !this.#closed;
  }

  /**
   * Redis is known to be down and the client is not connected, or it has
   * just reconnected and the limiter has not re-asserted its counts yet.
   */
  failFast(): boolean {
    return this.#awaitingReady || (!this.#available && this.client.status !== "ready");
  }

  /**
   * Settles as `call` does within the timeout, else rejects with
   * {@linkcode RedisTimeoutError}; an error Redis answered becomes a
   * {@linkcode RedisReplyError}.
   */
  bounded<T>(call: Promise<T>): Promise<T> {
    const ms = this.#o.timeout;
    const marked = call.catch((error) => Promise.reject(toRedisError(error)));
    return withTimeout(marked, ms, () => new RedisTimeoutError(ms));
  }

  /**
   * Runs one Redis call within the timeout and tracks Redis's state; `op`
   * runs at once, so what it writes goes on the connection before anything
   * written after this call returns. `onDone` gets its duration in ms.
   */
  async call<T>(op: () => Promise<T>, onDone?: (ms: number) => void): Promise<T> {
    const epoch = this.#epoch;
    const started = performance.now();
    let result: T;
    try {
      result = await this.bounded(op());
      onDone?.(performance.now() - started);
    } catch (error) {
      onDone?.(performance.now() - started);
      // A call cut off by a lost connection tells nothing new.
      if (!(error instanceof RedisReplyError) && epoch === this.#epoch) this.#down(error);
      throw error;
    }
    this.markUp();
    return result;
  }

  /** Stops listening and, when this connection opened the client, closes it. */
  async close(): Promise<void> {
    this.#closed = true;
    const client = this.client;
    client.off("ready", this.#onReady);
    client.off("close", this.#onClose);
    if (!this.#own) return;
    if (client.status !== "wait" && client.status !== "end") {
      await this.bounded(client.quit()).catch(() => {});
    }
    client.disconnect();
    client.off("error", this.#onError);
  }

  /** Records that Redis answered; returns whether that ended an outage (then `onUp` ran). */
  markUp(): boolean {
    if (this.#available || this.#closed) return false;
    this.#tellOutage();
    this.#available = true;
    this.#o.logger.info("Redis is reachable again; re-asserting this worker's counts");
    this.#o.onUp();
    return true;
  }

  /**
   * An outage begins (or goes on): its log line waits
   * {@linkcode OUTAGE_GATHER_MS} for the errors that come with it, so that
   * it names the telling one (a refused certificate, say) whichever arrives
   * first.
   */
  #down(error: unknown): void {
    if (this.#closed) return;
    if (this.#gathered) {
      this.#gathered.push(error);
      return;
    }
    if (!this.#available) return;
    this.#available = false;
    this.#gathered = [error];
    Deno.unrefTimer(setTimeout(() => this.#tellOutage(), OUTAGE_GATHER_MS));
  }

  /** Logs the outage once, with the distinct errors gathered. */
  #tellOutage(): void {
    const errors = this.#gathered;
    this.#gathered = null;
    if (!errors || this.#closed) return;
    const mode = this.#o.mode;
    const auth = errors.find(isAuthError);
    if (auth !== undefined) {
      this.#o.logger.warn(
        "Redis refused the credentials ({error}); check the Redis user name and password. Failure mode {mode} applies until Redis accepts them",
        { error: describe(auth), mode },
      );
      return;
    }
    const error = [...new Set(errors.map(describe))].slice(0, 3).join("; ");
    this.#o.logger.warn(
      "Redis is unreachable ({error}); failure mode {mode} applies until it is back",
      { error, mode },
    );
  }
}
