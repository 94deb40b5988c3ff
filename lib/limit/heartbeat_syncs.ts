/**
 * {@linkcode HeartbeatSyncs}: what a heartbeat of the Redis limiter sends,
 * every third of a lease: this worker's lease of every slot where it holds a
 * host, and the syncs of the hosts that need one (changed behind Redis's
 * back, holding nothing, due to renew their keys' expiry, or checked in
 * turn).
 *
 * @module
 */

import type { LimiterContext } from "./limiter_context.ts";
import {
  queueScript,
  runScript,
  SYNC,
  type SyncHost,
  type SyncInput,
  type SyncReply,
} from "./redis_script_codec.ts";
import { groupBySlot, type PreparedSync, splitBatches, type SyncSender } from "./sync_pipeline.ts";

/** How many leases an idle host's keys outlive their last write. */
export const TTL_LEASES = 12;

/**
 * Every held host is synced in full (its count checked, its keys' expiry
 * renewed) about once in this many leases: each heartbeat syncs the hosts
 * synced longest ago, as many as that takes, and at least
 * {@linkcode CHECK_HOSTS}. A host not synced for `TTL_LEASES - 2` leases
 * (after a burst of new hosts) is synced at the next heartbeat whatever the
 * count.
 */
const RENEW_LEASES = 6;

/** The fewest held hosts a heartbeat syncs in full: with up to this many, every heartbeat checks every count. */
const CHECK_HOSTS = 256;

/** Options of {@linkcode HeartbeatSyncs}. */
export interface HeartbeatSyncsOptions extends LimiterContext {
  /** Sends the prepared syncs in pipelines. */
  sender: SyncSender;
  /** Hosts whose field this worker may hold (a sync adds its hosts). */
  touched: Set<string>;
  /** Forgets a host that holds nothing and that Redis agrees on. */
  collect: (host: string) => void;
  /** Sends what `host` held back while it was synced. */
  resume: (host: string) => void;
}

/** Prepares and sends the syncs of one heartbeat. */
export class HeartbeatSyncs {
  #o: HeartbeatSyncsOptions;
  /** When (ms since epoch) the last answered sync renewing this worker's lease of a slot was sent, by epoch key. */
  #leasedAt = new Map<string, number>();

  /** Creates the heartbeat's syncs. */
  constructor(options: HeartbeatSyncsOptions) {
    this.#o = options;
  }

  /** Sends this heartbeat's leases and syncs; each sync's counts are taken when it is written. */
  send(): void {
    this.#o.sender.send(
      this.#dueBatches(),
      (e, hosts) => hosts.length === 0 ? this.#prepareLease(e) : this.#prepareSync(e, hosts),
    );
  }

  /** Syncs `host` alone, now: it was due while its calls were in flight. */
  syncNow(host: string): void {
    const e = this.#o.keys.epoch(host);
    this.#o.sender.send([[e, [host]]], (e, hosts) => this.#prepareSync(e, hosts));
  }

  /** Forgets the leases known: after a restart they would report the same loss again. */
  forgetLeases(): void {
    this.#leasedAt.clear();
  }

  /**
   * The calls that end this worker's leases and delete its fields of
   * `hosts` (closing), one per slot, sent at once on `client`.
   */
  leave(hosts: string[]): Promise<SyncReply>[] {
    const leave = (host: string): SyncHost => ({
      host,
      n: this.#o.keys.key(host, "n"),
      count: 0,
      floor: 0,
      trusted: false,
    });
    return groupBySlot(hosts, (host) => this.#o.keys.epoch(host)).map(([e, batch]) =>
      runScript(this.#o.client, SYNC, this.input(e, "leave", batch.map(leave)))
    );
  }

  /** What {@linkcode SYNC} is sent for `hosts` in the slot of epoch key `e`. */
  input(e: string, held: SyncInput["held"], hosts: SyncHost[]): SyncInput {
    const { keys, recovery } = this.#o;
    return {
      epoch: e,
      leases: keys.leases(e),
      worker: this.#o.worker,
      lease: this.#o.lease,
      ttl: this.#o.ttl,
      known: recovery.known(e),
      fresh: recovery.fresh,
      held,
      hosts,
    };
  }

  /**
   * For every slot in which this worker holds a host, the hosts that need a
   * sync and the others synced longest ago, as many as it takes to sync each
   * about every {@linkcode RENEW_LEASES} leases and at least
   * {@linkcode CHECK_HOSTS}; in batches of one slot.
   */
  #dueBatches(): [string, string[]][] {
    const { ledger, keys, lease } = this.#o;
    const now = Date.now();
    const overdue = now - lease * (TTL_LEASES - 2);
    const slots = new Map<string, string[]>();
    let rest: [string, number, string][] = [];
    for (const [host, s] of ledger.entries()) {
      const e = keys.epoch(host);
      let due = slots.get(e);
      if (!due) slots.set(e, due = []);
      const needed = s.dirty || s.counted <= 0 || s.renewedAt <= overdue ||
        !this.#leaseHeld(e, now);
      // A host with calls in flight is synced once they are answered.
      if (!ledger.canSync(host)) {
        if (needed) ledger.wantSync(host);
      } else if (needed) due.push(host);
      else rest.push([host, s.renewedAt, e]);
    }
    const share = Math.max(CHECK_HOSTS, Math.ceil(ledger.size / 3 / RENEW_LEASES));
    if (rest.length > share) rest = rest.sort((a, b) => a[1] - b[1]).slice(0, share);
    for (const [host, , e] of rest) slots.get(e)!.push(host);
    return splitBatches(slots);
  }

  /**
   * Renews this worker's lease of the slot of epoch key `e`, where no host
   * needs a sync: a `ZADD` with a deadline from Redis's time and a
   * `PEXPIRE`, no script. A lease found missing while it cannot have passed
   * means the lease set was lost.
   */
  #prepareLease(e: string): PreparedSync {
    const key = this.#o.keys.leases(e);
    const now = Date.now();
    const held = this.#leaseHeld(e, now);
    return {
      queue: (pipeline, redisNow) => {
        pipeline.zadd(key, redisNow + this.#o.lease, this.#o.worker);
        pipeline.pexpire(key, this.#o.ttl);
        return 2;
      },
      answered: ([added]) => {
        this.#leasedAt.set(e, now);
        if (Number(added) === 1 && held) this.#o.recovery.leaseLost(false);
      },
      failed: () => {},
    };
  }

  /**
   * The script call that renews this worker's lease of the slot of epoch key
   * `e` and syncs `hosts` (keys in that slot) as the ledger counts them now,
   * and what to do with its answer.
   */
  #prepareSync(e: string, names: string[]): PreparedSync {
    const { ledger, keys, recovery, fleet } = this.#o;
    const hosts = names.filter((host) => {
      // Busy since it was found due: synced once its calls are answered.
      if (ledger.canSync(host)) return true;
      ledger.wantSync(host);
      return false;
    });
    const synced = hosts.map((host) => ledger.sync(host));
    for (const host of hosts) this.#o.touched.add(host);
    const now = Date.now();
    const input = this.input(
      e,
      this.#leaseHeld(e, now),
      hosts.map((host, i) => ({
        host,
        n: keys.key(host, "n"),
        count: synced[i].count,
        floor: synced[i].floor,
        trusted: synced[i].trusted,
      })),
    );
    return {
      queue: (pipeline) => {
        queueScript(pipeline, SYNC, input);
        return 1;
      },
      answered: ([answer]) => {
        const reply = SYNC.decode(answer, input);
        this.#leasedAt.set(e, now);
        const healed = recovery.healed(reply.healed);
        recovery.noteEpoch(e, reply.lost, reply.epoch, "", healed);
        if (reply.lost === 1) recovery.leaseLost(healed.has(keys.leases(e)));
        hosts.forEach((host, i) => {
          if (ledger.synced(host, synced[i], now)) this.#o.resume(host);
          fleet.set(host, reply.hosts[i].total);
          if (reply.hosts[i].lost) recovery.hostLost(host, healed);
          this.#o.collect(host);
        });
      },
      failed: () => {
        for (const host of hosts) if (ledger.syncFailed(host)) this.#o.resume(host);
      },
    };
  }

  /** Whether this worker's lease of the slot of epoch key `e` cannot have passed. */
  #leaseHeld(e: string, now: number): boolean {
    return now - (this.#leasedAt.get(e) ?? -Infinity) < this.#o.lease / 2;
  }
}
