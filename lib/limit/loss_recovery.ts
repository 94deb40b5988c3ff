/**
 * {@linkcode LossRecovery}: how the Redis limiter finds out that Redis lost
 * its counts (keys flushed, evicted or of another type, a restart) and what
 * it does meanwhile: for a recovery window new slots follow the failure
 * mode while the fleet re-asserts its counts.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import type { FailureMode } from "./redis_config.ts";
import type { RedisKeyNames } from "./redis_key_names.ts";
import type { HealedKey } from "./redis_script_codec.ts";
import { RedisCorruptedKeyError } from "./redis_errors.ts";

/** Options of {@linkcode LossRecovery}. */
export interface LossRecoveryOptions {
  /** The names of the keys. */
  keys: RedisKeyNames;
  /** This worker's id. */
  worker: string;
  /** The lease, in ms (the recovery window follows from it). */
  lease: number;
  /** The failure mode new slots follow while counts are re-asserted. */
  mode: FailureMode;
  /** Where losses are logged. */
  logger: Logger;
  /** Whether the limiter is closed (nothing is done then). */
  closed: () => boolean;
  /** Publishes on a channel; failures are ignored. */
  publish: (channel: string, message: string) => void;
  /** Marks every held host for a sync and syncs them now. */
  reassert: () => void;
}

/**
 * The epoch tokens this worker knows, the recovery windows (of every host,
 * or of one) and Redis's run id, with the transitions between them.
 */
export class LossRecovery {
  #o: LossRecoveryOptions;
  /** The epoch token this worker knows, by epoch key. */
  #known = new Map<string, string>();
  /** The token a script sets when it finds the epoch key missing. */
  #fresh = crypto.randomUUID();
  /** Until then (ms since epoch) new slots follow the failure mode. */
  #until = 0;
  /** Until when (ms since epoch) new slots of a host whose keys were lost follow the failure mode. */
  #hostUntil = new Map<string, number>();
  /** When lost keys last made this worker re-assert its counts (ms since epoch). */
  #beatAt = 0;
  /** Until when (ms since epoch) a loss is not logged again. */
  #loggedUntil = 0;
  /** Redis's run id as last read, `null` before. */
  #runId: string | null = null;

  /** Creates the state: nothing known, no window open. */
  constructor(options: LossRecoveryOptions) {
    this.#o = options;
  }

  /** The epoch token known for epoch key `e`, or `""`. */
  known(e: string): string {
    return this.#known.get(e) ?? "";
  }

  /** The token a script sets when it finds the epoch key missing. */
  get fresh(): string {
    return this.#fresh;
  }

  /** The hosts with a recovery window of their own (perhaps passed). */
  hosts(): Iterable<string> {
    return this.#hostUntil.keys();
  }

  /** Forgets the window of `host` once it has passed. */
  forgetHost(host: string): void {
    if ((this.#hostUntil.get(host) ?? 0) <= Date.now()) this.#hostUntil.delete(host);
  }

  /** The length of a recovery window: a heartbeat (at most 1 s) and 1 s for the others. */
  get #window(): number {
    return Math.min(this.#o.lease / 3, 1_000) + 1_000;
  }

  /**
   * After a reconnect, before Redis's run id is read: new slots follow the
   * failure mode until {@linkcode restarted} tells. Returns the run id known.
   */
  checking(): string | null {
    if (this.#runId !== null) this.#until = Infinity;
    return this.#runId;
  }

  /**
   * After a reconnect, finds out whether Redis restarted (or failed over):
   * its run id (read from `info`, Redis's `INFO server`) changed. A Redis
   * that restarted empty knows nothing of the slots the fleet holds until
   * every worker has synced, so for a recovery window new slots follow the
   * failure mode instead of being granted against partial sums. Returns
   * whether it restarted.
   */
  async checkRestart(info: () => Promise<unknown>): Promise<boolean> {
    const before = this.checking();
    let runId: string | null = null;
    try {
      runId = /run_id:(\w+)/.exec(String(await info()))?.[1] ?? null;
    } catch {
      // Unknown: after a reconnect, assume the worst.
    }
    if (this.#o.closed()) return false;
    return this.restarted(before, runId);
  }

  /**
   * Takes in the run id read after a reconnect (`null`: unknown). Returns
   * whether Redis restarted or failed over since `before` (then a window
   * opens and the epoch tokens known are forgotten).
   */
  restarted(before: string | null, runId: string | null): boolean {
    if (runId !== null) this.#runId = runId;
    if (before === null) return false;
    if (runId === before) {
      this.#until = 0;
      return false;
    }
    const window = this.#window;
    this.#until = Date.now() + window;
    // This window covers the restart: epoch tokens known from before it
    // would report the same loss again at this worker's next call.
    this.#known.clear();
    this.#o.logger.warn(
      "Redis restarted or failed over; for {ms} ms new connections follow failure mode {mode} while the fleet re-asserts its counts",
      { ms: window, mode: this.#o.mode },
    );
    return true;
  }

  /**
   * Takes in the epoch token a script answered with; when it shows that Redis
   * lost keys since this worker last looked (`lost` 2: this host's keys;
   * another token than the one known: the slot's keys), starts recovery.
   */
  noteEpoch(
    key: string,
    lost: number,
    token: string,
    host: string,
    healed: Set<string> = new Set(),
  ): void {
    if (token === this.#fresh) this.#fresh = crypto.randomUUID();
    const known = this.#known.get(key);
    this.#known.set(key, token);
    if (known !== undefined && known !== token) {
      this.#recover(healed.has(key) ? null : "its keys were flushed or evicted", true, null);
    } else if (lost === 2) this.hostLost(host, healed);
  }

  /** The keys of `host` were lost; a count key the reply `healed` is named there already. */
  hostLost(host: string, healed: Set<string>): void {
    const what = healed.has(this.#o.keys.key(host, "n"))
      ? null
      : `the keys of ${host} were deleted or evicted`;
    this.#recover(what, true, host);
  }

  /**
   * Logs the keys a script found holding another type than the one dprl
   * keeps there, and deleted (`[key, type, kind]...`), one WARN each: the
   * counts they held are re-asserted like lost ones. Returns those keys.
   */
  healed(entries: HealedKey[]): Set<string> {
    const keys = new Set<string>();
    for (const { key, type, kind } of entries) {
      keys.add(key);
      const error = new RedisCorruptedKeyError(key, type, kind);
      this.#o.logger.warn(
        "Redis key {key} held a {type} where dprl keeps a {kind}; dprl deleted it and the fleet re-asserts its counts",
        { key, type, kind, code: error.code },
      );
    }
    return keys;
  }

  /** Whether new slots of `host` follow the failure mode while counts are re-asserted. */
  recovering(host: string): boolean {
    const now = Date.now();
    if (this.#until > now) return true;
    const until = this.#hostUntil.get(host);
    if (until === undefined) return false;
    if (until > now) return true;
    this.#hostUntil.delete(host);
    return false;
  }

  /**
   * Redis lost counts (of one host, or of `null`: all): for the recovery
   * window new slots of them follow the failure mode, every host is
   * re-asserted at once and, when this worker saw it first, the fleet is told
   * on `<prefix>:lost` so that every worker does so. Logged at most once a
   * window; not at all with `what` null (the cause was logged already).
   */
  #recover(what: string | null, tellFleet: boolean, host: string | null): void {
    if (this.#o.closed()) return;
    const now = Date.now();
    const window = this.#window;
    // A restart or loss of every count, already told, covers a host too.
    const announced = this.#until > now;
    const recovering = announced ||
      (host !== null && (this.#hostUntil.get(host) ?? 0) > now);
    if (host === null) this.#until = Math.max(this.#until, now + window);
    else {
      this.#hostUntil.set(
        host,
        Math.max(this.#hostUntil.get(host) ?? 0, now + window),
      );
    }
    if (!announced && now >= this.#loggedUntil && what !== null) {
      this.#loggedUntil = now + window;
      this.#o.logger.warn(
        "Redis lost dprl's counts ({what}); for {ms} ms new connections {scope} follow failure mode {mode} while the fleet re-asserts its counts",
        {
          what,
          ms: window,
          scope: host === null ? "to any host" : `to ${host}`,
          mode: this.#o.mode,
        },
      );
    }
    if (!recovering && tellFleet) {
      const notice = JSON.stringify({ from: this.#o.worker, known: [...this.#known], host });
      this.#o.publish(this.#o.keys.lost, notice);
    }
    if (recovering && now - this.#beatAt < 100) return;
    this.#beatAt = now;
    this.#o.reassert();
  }

  /** Another worker saw Redis lose keys: adopt its tokens and re-assert. */
  notice(message: string): void {
    let notice: { from?: unknown; known?: unknown; host?: unknown };
    try {
      notice = JSON.parse(message);
    } catch {
      return;
    }
    if (notice.from === this.#o.worker || !Array.isArray(notice.known)) return;
    for (const entry of notice.known) {
      if (
        Array.isArray(entry) && typeof entry[0] === "string" && typeof entry[1] === "string" &&
        this.#known.has(entry[0])
      ) {
        this.#known.set(entry[0], entry[1]);
      }
    }
    const host = typeof notice.host === "string" ? notice.host : null;
    this.#recover(`seen by worker ${String(notice.from)}`, false, host);
  }

  /**
   * A lease of this worker that cannot have passed was missing: its slot's
   * lease set was lost (or, `healed`, deleted for its type and logged so).
   */
  leaseLost(healed: boolean): void {
    this.#recover(healed ? null : "the lease set of a slot was deleted or evicted", true, null);
  }
}
