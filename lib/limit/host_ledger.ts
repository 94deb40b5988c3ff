/**
 * {@linkcode HostLedger}: what one worker of the fleet knows about the slots
 * it holds of each host, and every change of it, with no I/O. The Redis
 * limiter asks the ledger what to send and tells it what Redis answered; the
 * ledger alone decides what this worker's field in Redis must be.
 *
 * The rule that keeps the fleet's count exact: this worker's field in Redis
 * is never below the slots its requests hold (so no other worker is granted
 * one of them), and once nothing is in flight and a sync has landed, it is
 * exactly what the ledger counts (so no slot leaks). Acquires and releases
 * travel as deltas, which Redis may apply in any order (a Cluster redirects
 * and retries calls); a sync sets the field to an absolute count, so a host
 * is synced only while none of its calls is in flight, and its new calls wait
 * for the sync's answer ({@linkcode HostLedger.canSync}). A host that is due
 * for a sync while busy is marked: its new calls wait until those in flight
 * are answered, then it is synced.
 *
 * @module
 */

/** What this worker knows about one host. */
export interface HostEntry {
  /** Slots held that Redis counts, or will count after the next sync. */
  counted: number;
  /** Slots admitted in failure mode `"open"`, never counted in Redis. */
  uncounted: number;
  /**
   * Of `counted`, slots given back here but still counted in Redis, kept for
   * this worker's next acquire of the host: until when each is kept
   * (`performance.now()`), soonest first.
   */
  kept: number[];
  /** The limit the last acquire named (0: none). */
  limit: number;
  /** Acquires asked and not answered yet, sent or not. */
  pending: number;
  /** Of `pending`, acquires not sent yet. */
  asks: number;
  /** Slots given back here (no longer in `counted`) and not yet sent to Redis. */
  releases: number;
  /** Acquire calls of the host in flight. */
  calls: number;
  /** A sync of the host is in flight: new calls wait for its answer. */
  syncing: boolean;
  /** A sync is due while calls are in flight: new calls wait, then it is synced. */
  wantSync: boolean;
  /** Redis may disagree with `counted`: keep the host and sync it. */
  dirty: boolean;
  /** Bumped whenever `dirty` is set, so a sync only clears what it saw. */
  dirtyGen: number;
  /** When (ms since epoch) a sync of the host last landed, or a time before it. */
  renewedAt: number;
}

/** What one acquire call carries for a host: see {@linkcode HostLedger.send}. */
export interface SentHost {
  /** Acquires sent, granted in order. */
  asks: number;
  /** Slots given back first. */
  releases: number;
  /** The slots this worker knows it holds, after the releases. */
  floor: number;
  /** This worker's last write of the host is known to have landed. */
  trusted: boolean;
}

/** What a sync carries for a host: see {@linkcode HostLedger.sync}. */
export interface SyncedHost {
  /** This worker's count, its own truth (0 deletes its field). */
  count: number;
  /** The slots this worker knows Redis counts for it. */
  floor: number;
  /** This worker's last write of the host is known to have landed. */
  trusted: boolean;
  /** The dirty generation the sync saw. */
  gen: number;
}

/** What {@linkcode HostLedger.release} did with a slot given back. */
export type Released =
  /** Nothing was held: nothing to do. */
  | "none"
  /** An uncounted slot: nothing to tell Redis. */
  | "uncounted"
  /** Kept for this worker's next acquire: still counted in Redis. */
  | "kept"
  /** To be given back in Redis with the next call. */
  | "queued"
  /** Redis cannot be told now: the next sync sets the count. */
  | "dirty";

/** Options of {@linkcode HostLedger.release}. */
export interface ReleaseOptions {
  /** Keep the slot for this worker's next acquire of the host. */
  keep: boolean;
  /** Redis is known to be unreachable. */
  failFast: boolean;
  /** Until when a kept slot is kept, by `performance.now()`. */
  until: number;
}

/** Per-host accounting of one worker, with no I/O. */
export class HostLedger {
  #hosts = new Map<string, HostEntry>();

  /** The entry of `host`, if the ledger holds one. */
  get(host: string): HostEntry | undefined {
    return this.#hosts.get(host);
  }

  /** Whether the ledger holds an entry for `host`. */
  has(host: string): boolean {
    return this.#hosts.has(host);
  }

  /** The entry of `host`, created when missing (`renewedAt`: now, ms since epoch). */
  entry(host: string, renewedAt: number = Date.now()): HostEntry {
    let s = this.#hosts.get(host);
    if (!s) {
      s = {
        counted: 0,
        uncounted: 0,
        kept: [],
        limit: 0,
        pending: 0,
        asks: 0,
        releases: 0,
        calls: 0,
        syncing: false,
        wantSync: false,
        dirty: false,
        dirtyGen: 0,
        renewedAt,
      };
      this.#hosts.set(host, s);
    }
    return s;
  }

  /** Every host with an entry, and its entry. */
  entries(): IterableIterator<[string, HostEntry]> {
    return this.#hosts.entries();
  }

  /** Every host with an entry. */
  hosts(): IterableIterator<string> {
    return this.#hosts.keys();
  }

  /** How many hosts have an entry. */
  get size(): number {
    return this.#hosts.size;
  }

  /** Forgets every host. */
  clear(): void {
    this.#hosts.clear();
  }

  /** The slots this worker's requests hold of `host`, counted or not. */
  held(host: string): number {
    const s = this.#hosts.get(host);
    return s ? s.counted - s.kept.length + s.uncounted : 0;
  }

  /** The slots this worker's requests hold over every host. */
  heldTotal(): number {
    let n = 0;
    for (const s of this.#hosts.values()) n += s.counted - s.kept.length + s.uncounted;
    return n;
  }

  /** Asks for one slot of `host` under `limit`, to be sent with the next call. */
  ask(host: string, limit: number): void {
    const s = this.entry(host);
    s.limit = limit;
    s.pending++;
    s.asks++;
  }

  /** Takes a kept slot of `host` (the one kept longest) for a new request; false when none is kept. */
  takeKept(host: string): boolean {
    const s = this.#hosts.get(host);
    if (!s || s.kept.length === 0) return false;
    s.kept.pop();
    return true;
  }

  /**
   * Whether `host` has anything to send now: acquires asked or slots given
   * back, and no sync in flight or waiting for its calls to be answered.
   */
  hasWork(host: string): boolean {
    const s = this.#hosts.get(host);
    return s !== undefined && (s.asks > 0 || s.releases > 0) && !s.syncing && !s.wantSync;
  }

  /** Whether `host` may be synced now: none of its calls is in flight. */
  canSync(host: string): boolean {
    const s = this.#hosts.get(host);
    return s !== undefined && s.calls === 0 && !s.syncing;
  }

  /**
   * Marks `host` as due for a sync while its calls are in flight: new calls
   * wait, and {@linkcode answered} tells when it may be synced.
   */
  wantSync(host: string): void {
    const s = this.#hosts.get(host);
    if (s && !s.syncing) s.wantSync = true;
  }

  /**
   * Takes what `host` has to send (its asked acquires and given-back slots)
   * for one call written now; call at the moment the call is written.
   */
  send(host: string): SentHost {
    const s = this.entry(host);
    const sent = { asks: s.asks, releases: s.releases, floor: s.counted, trusted: !s.dirty };
    s.asks = 0;
    s.releases = 0;
    s.calls++;
    return sent;
  }

  /**
   * Takes in Redis's answer to a call: `granted` of its acquires were
   * granted. Returns whether the host may now be synced, as it waited to be.
   */
  answered(host: string, sent: SentHost, granted: number): boolean {
    const s = this.#answer(host, sent);
    s.counted += granted;
    return s.wantSync && s.calls === 0;
  }

  /**
   * Takes in an answer that cannot be trusted (sent before a lost
   * connection and replayed after it): nothing it granted is held, and what
   * Redis may count of it is given back with the next call (and set by the
   * next sync, since a lost first run may have counted too). Returns
   * whether the host may now be synced.
   */
  distrusted(host: string, sent: SentHost, granted: number): boolean {
    const s = this.#answer(host, sent);
    s.releases += granted;
    this.markDirty(host);
    return s.calls === 0;
  }

  /**
   * A call got no answer: Redis may have applied it or not, so nothing it
   * asked is held and the next sync sets the truth. Returns whether the
   * host may now be synced.
   */
  failed(host: string, sent: SentHost): boolean {
    const s = this.#answer(host, sent);
    this.markDirty(host);
    return s.calls === 0;
  }

  #answer(host: string, sent: SentHost): HostEntry {
    const s = this.entry(host);
    s.pending -= sent.asks;
    s.calls--;
    return s;
  }

  /**
   * What a sync of `host` written now carries, the host's queued releases
   * included; call only when {@linkcode canSync} holds. The host's new
   * calls wait until {@linkcode synced} or {@linkcode syncFailed}.
   */
  sync(host: string): SyncedHost {
    const s = this.entry(host);
    const synced = {
      count: this.syncCount(host),
      floor: s.counted + s.releases,
      trusted: !s.dirty,
      gen: s.dirtyGen,
    };
    s.releases = 0;
    s.syncing = true;
    s.wantSync = false;
    return synced;
  }

  /** The count a sync of `host` would set: the slots held, kept or given back but not yet sent. */
  syncCount(host: string): number {
    return this.#hosts.get(host)?.counted ?? 0;
  }

  /**
   * A sync of `host` landed: what it saw is in Redis (`now`: ms since
   * epoch). Returns whether the host has calls that waited for it.
   */
  synced(host: string, synced: SyncedHost, now: number): boolean {
    const s = this.#hosts.get(host);
    if (!s) return false;
    s.syncing = false;
    if (s.dirtyGen === synced.gen) s.dirty = false;
    s.renewedAt = now;
    return this.hasWork(host);
  }

  /** A sync of `host` got no answer: the next one sets the truth. Returns whether calls waited for it. */
  syncFailed(host: string): boolean {
    const s = this.#hosts.get(host);
    if (!s) return false;
    s.syncing = false;
    this.markDirty(host);
    return this.hasWork(host);
  }

  /** Redis may disagree with what this worker counts for `host`: the next sync sets it. */
  markDirty(host: string): void {
    const s = this.entry(host);
    s.dirty = true;
    s.dirtyGen++;
  }

  /**
   * Gives back one slot of `host` held by a request: uncounted slots first,
   * else kept for this worker's next acquire, else given back in Redis with
   * the next call.
   */
  release(host: string, options: ReleaseOptions): Released {
    const s = this.#hosts.get(host);
    if (!s) return "none";
    if (s.uncounted > 0) {
      s.uncounted--;
      return "uncounted";
    }
    if (s.counted - s.kept.length <= 0) return "none";
    if (options.keep) {
      let i = s.kept.length;
      while (i > 0 && s.kept[i - 1] > options.until) i--;
      s.kept.splice(i, 0, options.until);
      return "kept";
    }
    s.counted--;
    if (options.failFast) {
      this.markDirty(host);
      return "dirty";
    }
    s.releases++;
    return "queued";
  }

  /**
   * Gives back the `n` kept slots of `host` due soonest (default: all) in Redis
   * (or, when `failFast`, by the next sync); returns how many.
   */
  giveBackKept(host: string, n: number, failFast: boolean): number {
    const s = this.#hosts.get(host);
    const back = s?.kept.splice(0, n).length ?? 0;
    if (!s || back === 0) return 0;
    s.counted -= back;
    if (failFast) this.markDirty(host);
    else s.releases += back;
    return back;
  }

  /** Admits an uncounted slot of `host` (failure mode `"open"`). */
  admitUncounted(host: string): void {
    this.entry(host).uncounted++;
  }

  /**
   * Admits a slot of `host` that Redis will count from the next sync, unless
   * this worker holds `limit` (when above 0) already (failure mode
   * `"local"`); returns whether it was admitted.
   */
  admitLocal(host: string, limit: number): boolean {
    const s = this.entry(host);
    if (limit > 0 && this.localCount((h) => h === host) >= limit) return false;
    s.counted++;
    this.markDirty(host);
    return true;
  }

  /** The slots this worker holds or has asked for of the hosts `which` picks, for failure mode `"local"`. */
  localCount(which: (host: string) => boolean): number {
    let n = 0;
    for (const [host, s] of this.#hosts) if (which(host)) n += s.counted + s.uncounted + s.pending;
    return n;
  }

  /**
   * Forgets `host` when it holds nothing, has nothing to send or in flight
   * and Redis agrees with it; returns whether it was forgotten.
   */
  collect(host: string): boolean {
    const s = this.#hosts.get(host);
    if (
      !s || s.counted !== 0 || s.uncounted !== 0 || s.pending !== 0 || s.releases !== 0 ||
      s.calls !== 0 || s.syncing || s.dirty
    ) return false;
    this.#hosts.delete(host);
    return true;
  }
}
