/**
 * {@linkcode Heartbeat}: what the Redis limiter does every third of a lease,
 * and at once after a reconnect: renews this worker's lease of every slot
 * where it holds a host, syncs the hosts that need it (changed behind
 * Redis's back, holding nothing, due to renew their keys' expiry, or checked
 * in turn), renews its tickets in the fleet's queues and its entry in the
 * worker registry, and refreshes the fleet's counts of the hosts it knows.
 *
 * @module
 */

import type { Cluster, Redis } from "ioredis";
import type { Logger } from "@logtape/logtape";
import type { FleetQueue } from "./fleet_queue.ts";
import type { FleetChannels } from "./fleet_channels.ts";
import type { FleetCounts } from "./fleet_counts.ts";
import type { WorkerRegistry } from "./worker_registry.ts";
import { warnIfEvicting } from "./redis_client.ts";

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

/** Options of {@linkcode Heartbeat}. */
export interface HeartbeatOptions extends LimiterContext {
  /** Sends the prepared syncs in pipelines. */
  sender: SyncSender;
  /** Hosts whose field this worker may hold (a sync adds its hosts). */
  touched: Set<string>;
  /** Forgets a host that holds nothing and that Redis agrees on. */
  collect: (host: string) => void;
  /** Sends what `host` held back while it was synced. */
  resume: (host: string) => void;
  /** The fleet's queues (renewed each beat). */
  queue: FleetQueue;
  /** The fleet's channels (pressure tidied each beat). */
  channels: FleetChannels;
  /** The fleet's counts (refreshed each beat). */
  counts: FleetCounts;
  /** The worker registry (renewed each beat). */
  registry: WorkerRegistry;
  /** Where an evicting Redis is warned of. */
  logger: Logger;
}

/** The Redis limiter's heartbeat. */
export class Heartbeat {
  #o: HeartbeatOptions;
  #timer: ReturnType<typeof setInterval> | null = null;
  /** When (ms since epoch) the last answered sync renewing this worker's lease of a slot was sent, by epoch key. */
  #leasedAt = new Map<string, number>();

  /** Creates the heartbeat; it beats from {@linkcode start}. */
  constructor(options: HeartbeatOptions) {
    this.#o = options;
  }

  /** Whether the heartbeat runs. */
  get started(): boolean {
    return this.#timer !== null;
  }

  /** Starts beating every third of a lease, and registers this worker at once. */
  start(): void {
    if (this.#timer !== null || this.#o.closed()) return;
    this.#timer = setInterval(() => this.beat(), Math.max(1, Math.floor(this.#o.lease / 3)));
    Deno.unrefTimer(this.#timer);
    this.register();
  }

  /** Stops beating. */
  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  /**
   * Syncs every host this worker holds or may disagree with Redis on,
   * refreshes the fleet counts of the other hosts it knows of (forgetting
   * those at 0) and renews this worker's entries in the queues and registry.
   */
  beat(): void {
    const { closed, conn, keys, ledger, fleet, queue } = this.#o;
    if (closed() || conn.failFast()) return;
    this.#o.channels.tidy();
    this.#sendSyncs();
    queue.renew();
    for (const host of keys.groupOf.keys()) {
      if (!ledger.has(host) && !fleet.has(host) && !queue.waitsFor(host)) keys.groupOf.delete(host);
    }
    this.#o.counts.refresh((host) => ledger.has(host));
    this.register();
  }

  /** Renews this worker's entry in the worker registry, with its open connections. */
  register(): void {
    if (this.#o.closed() || this.#o.conn.failFast()) return;
    this.#o.registry.register(this.#o.ledger.heldTotal());
  }

  /**
   * The client is ready: at first, warns of a Redis that may evict dprl's
   * keys; after a reconnect, finds out whether Redis restarted, and
   * re-asserts every count.
   */
  ready(reconnect: boolean): void {
    const { conn, recovery } = this.#o;
    if (this.#o.closed()) return;
    const { client, cluster } = conn;
    if (!reconnect) {
      const masters = cluster ? (client as Cluster).nodes("master") : [client];
      warnIfEvicting(masters, (call) => conn.bounded(call), this.#o.logger);
    }
    if (!cluster) {
      const info = () => conn.bounded((client as Redis).info("server"));
      recovery.checkRestart(info).then((restarted) => {
        // Leases known from before a restart would report the same loss again.
        if (restarted) this.#leasedAt.clear();
      });
    }
    // markUp() beats when it ends an outage; a quiet reconnect beats here.
    if (!conn.markUp() && reconnect) this.beat();
  }

  /** Sends this heartbeat's leases and syncs; each sync's counts are taken when it is written. */
  #sendSyncs(): void {
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
