/**
 * {@linkcode AcquireCalls}: how the Redis limiter's acquires and releases
 * travel. The acquires of one event-loop turn go as one script call per
 * slot (on a single Redis: one call), the slots given back meanwhile ride
 * along, and each answer is taken into the ledger host by host.
 *
 * @module
 */

import {
  ACQUIRE,
  type AcquiredHost,
  type AcquireInput,
  type AcquireReply,
  runScript,
} from "./redis_script_codec.ts";
import { RedisConnectionLostError, RedisCountsLostError } from "./redis_errors.ts";
import { LimiterUnavailableError, type RateLimit, RateLimitedError } from "./limiter.ts";
import type { SentHost } from "./host_ledger.ts";
import type { FleetQueue } from "./fleet_queue.ts";
import type { LimiterContext } from "./limiter_context.ts";
import { SlotBatches } from "./slot_batches.ts";
import type { FleetAdaptive } from "./fleet_adaptive.ts";

/** A request waiting for Redis's answer to its acquire. */
export interface PendingAcquire {
  /** The host's limit; 0 is none. */
  limit: number;
  /** The waiting request's ticket in the fleet's queue, or `""`. */
  ticket: string;
  /** The group's limit; -1: no group. */
  groupLimit: number;
  /** `false` for a turn under `rate` alone, without a slot (a request on an open connection). */
  slot: boolean;
  /** The rate the request is held to, if any. */
  rate?: RateLimit;
  /** Whether the host's limit adapts (its bounds are in {@linkcode FleetAdaptive}). */
  adaptive?: boolean;
  /** Settles the acquire: `false` when refused by the limit, else the ms to wait for its turn (0: now). */
  resolve: (grant: number | false) => void;
  /** Fails the acquire. */
  reject: (error: unknown) => void;
}

/** What one host carried in an acquire call. */
interface SentBatch {
  host: string;
  /** What the ledger sent; `null` for turns under a rate alone. */
  sent: SentHost | null;
  acquires: PendingAcquire[];
}

/** Options of {@linkcode AcquireCalls}. */
export interface AcquireCallsOptions extends LimiterContext {
  /** The fleet's queue (tickets, lengths), flushed before each turn's calls. */
  queue: FleetQueue;
  /** The adaptive limits: answers to send, limits answered. */
  adaptive: FleetAdaptive;
  /** Decides an acquire by the failure mode, Redis having failed with `cause`. */
  decide: (host: string, acquire: PendingAcquire, cause: unknown) => void;
  /** A request for `host` was refused. */
  refused: (host: string) => void;
  /** Forgets a host that holds nothing and that Redis agrees on. */
  collect: (host: string) => void;
  /** Syncs `host` now: it was due while its calls were in flight, and none is now. */
  syncNow: (host: string) => void;
  /** Redis says `host` is paused until `until` (ms since epoch). */
  paused: (host: string, until: number) => void;
}

/** Sends acquires and releases in batches and takes in the answers. */
export class AcquireCalls {
  #o: AcquireCallsOptions;
  /** Acquires asked and not sent yet, by host. */
  #asked = new Map<string, PendingAcquire[]>();
  /** Turns under a rate alone asked and not sent yet, by host (no ledger work). */
  #turns = new Map<string, PendingAcquire[]>();
  /** Pauses to tell the fleet with the next call, by host (ms since epoch). */
  #pauses = new Map<string, number>();
  #batches: SlotBatches;

  /** Creates the calls. */
  constructor(options: AcquireCallsOptions) {
    this.#o = options;
    this.#batches = new SlotBatches({
      slotOf: (host) => options.keys.epoch(host),
      // The queue first: a ticket joins it before it asks for a slot.
      beforeFlush: () => options.queue.flush(),
      send: (slot, hosts, answered) => this.#send(slot, hosts, answered),
    });
  }

  /**
   * Asks Redis for one slot of `host` (already counted as asked in the
   * ledger), or for a turn alone (`acquire.slot` false), with this turn's call.
   */
  ask(host: string, acquire: PendingAcquire): void {
    const map = acquire.slot ? this.#asked : this.#turns;
    let asked = map.get(host);
    if (!asked) map.set(host, asked = []);
    asked.push(acquire);
    this.#batches.add(host, true);
  }

  /**
   * Sends what the ledger has to send for `host`: this turn when someone may
   * wait for the slots it gives back, else within a few ms, with the next
   * call of its slot if one goes sooner.
   */
  send(host: string): void {
    if (this.#pauses.has(host)) this.#batches.add(host, true);
    else if (this.#o.ledger.hasWork(host)) this.#batches.add(host, this.#urgent(host));
  }

  /**
   * Whether what `host` has to send goes this turn: acquires, or slots given
   * back that may be waited for (someone queues, or the fleet is at its limit).
   */
  #urgent(host: string): boolean {
    const { ledger, queue, keys, fleet } = this.#o;
    const s = ledger.get(host);
    if (!s || s.asks > 0) return true;
    return queue.waiting(host) > 0 || queue.waitsFor(host) || keys.groupOf.has(host) ||
      (s.limit > 0 && (fleet.get(host) ?? 0) >= s.limit);
  }

  /** Sends the answers of `host` waiting for its adaptive limit within a few ms. */
  sample(host: string): void {
    this.#batches.add(host, false);
  }

  /** Tells the fleet, with this turn's call, that `host` asked for a pause until `until`. */
  pause(host: string, until: number): void {
    this.#pauses.set(host, Math.max(until, this.#pauses.get(host) ?? 0));
    this.#o.ledger.entry(host);
    this.#batches.add(host, true);
  }

  /** Runs this turn's flush (the fleet's queue changes) even when no acquire waits. */
  turn(): void {
    this.#batches.turn();
  }

  /** Writes what waits for the slot of `host` as soon as it may go; resolves once written. */
  flushHost(host: string): Promise<void> {
    return this.#batches.flushHost(host);
  }

  /** Stops: acquires not sent yet are refused (the limiter is closed); calls in flight still settle theirs. */
  close(): void {
    this.#batches.clear();
    const closed = new LimiterUnavailableError("Redis limiter is closed");
    for (const map of [this.#asked, this.#turns]) {
      for (const acquires of map.values()) {
        for (const acquire of acquires) acquire.reject(closed);
      }
      map.clear();
    }
  }

  /** Sends one acquire call for `hosts` of the slot of epoch key `slot`, written now. */
  #send(slot: string, hosts: string[], answered: () => void): boolean {
    const { ledger } = this.#o;
    const batches: SentBatch[] = [];
    for (const host of hosts) {
      const work = ledger.hasWork(host) || (this.#pauses.has(host) && ledger.canSync(host));
      const turns = this.#turns.get(host) ?? [];
      if (!work && turns.length === 0 && !this.#o.adaptive.pending(host)) continue;
      this.#turns.delete(host);
      const acquires = work ? this.#asked.get(host) ?? [] : [];
      if (work) this.#asked.delete(host);
      batches.push({
        host,
        sent: work ? ledger.send(host) : null,
        acquires: [...acquires, ...turns],
      });
    }
    if (batches.length === 0) return false;
    if (this.#o.closed()) {
      const closed = new LimiterUnavailableError("Redis limiter is closed");
      for (const { host, sent, acquires } of batches) {
        if (sent) ledger.failed(host, sent);
        for (const acquire of acquires) acquire.reject(closed);
      }
      return false;
    }
    const epoch = this.#o.conn.epoch;
    const input = this.#input(slot, batches);
    const tickets = batches.flatMap((b) => b.acquires.filter((a) => a.ticket).map((a) => a.ticket));
    const call = this.#o.call(() => runScript(this.#o.client, ACQUIRE, input));
    this.#o.queue.asking(tickets, call).then(
      (reply) => {
        answered();
        this.#answered(slot, batches, reply, epoch);
      },
      (error) => {
        answered();
        // Redis may have applied it anyway; the next sync sets the truth.
        for (const { host, sent, acquires } of batches) {
          if (sent && ledger.failed(host, sent)) this.#o.syncNow(host);
          for (const acquire of acquires) this.#o.decide(host, acquire, error);
        }
      },
    );
    return true;
  }

  /** What {@linkcode ACQUIRE} is sent for the hosts of one slot. */
  #input(slot: string, batches: SentBatch[]): AcquireInput {
    const { keys, recovery } = this.#o;
    return {
      leases: keys.leases(slot),
      epoch: slot,
      worker: this.#o.worker,
      lease: this.#o.lease,
      ttl: this.#o.ttl,
      known: recovery.known(slot),
      fresh: recovery.fresh,
      hosts: batches.map(({ host, sent, acquires }) => ({
        host,
        n: keys.key(host, "n"),
        members: keys.members(host),
        q: keys.key(host, "q"),
        qw: keys.key(host, "qw"),
        a: keys.key(host, "a"),
        ...this.#adaptiveOf(host, acquires),
        floor: sent?.floor ?? 0,
        trusted: sent?.trusted ?? false,
        releases: sent?.releases ?? 0,
        groupLimit: acquires.findLast((a) => a.slot)?.groupLimit ?? -1,
        pause: this.#takePause(host),
        rate: rateSpec(acquires.at(-1)?.rate),
        asks: acquires,
      })),
    };
  }

  /**
   * The adaptive bounds and answers an acquire call carries for `host`: it
   * adapts when its slots are asked adaptive, or, with none asked, when its
   * answers wait to be sent.
   */
  #adaptiveOf(host: string, acquires: PendingAcquire[]): { adaptive: string; samples: string } {
    const slots = acquires.filter((a) => a.slot);
    const adaptive = slots.length > 0
      ? slots.some((a) => a.adaptive)
      : this.#o.adaptive.pending(host);
    return this.#o.adaptive.take(host, adaptive);
  }

  /** The pause of `host` to tell the fleet, now sent (0: none). */
  #takePause(host: string): number {
    const until = this.#pauses.get(host) ?? 0;
    this.#pauses.delete(host);
    return until;
  }

  /** Takes in Redis's answer to an acquire call sent in connection epoch `epoch`. */
  #answered(slot: string, batches: SentBatch[], reply: AcquireReply, epoch: number): void {
    const healed = this.#o.recovery.healed(reply.healed);
    batches.forEach((batch, i) => {
      const answer = reply.hosts[i];
      if (epoch !== this.#o.conn.epoch) return this.#distrusted(batch, answer);
      const lost = reply.lost || answer.lost;
      this.#o.recovery.noteEpoch(slot, lost, reply.epoch, batch.host, healed);
      this.#answeredHost(batch, answer, lost);
    });
  }

  /**
   * Sent before a lost connection and replayed after it, maybe to a Redis
   * that restarted empty: the answer may rest on partial sums. What it
   * counted is given back, and the acquires are decided as if Redis had not
   * answered.
   */
  #distrusted({ host, sent, acquires }: SentBatch, answer: AcquiredHost): void {
    if (sent && this.#o.ledger.distrusted(host, sent, slotsGranted(acquires, answer))) {
      this.#o.syncNow(host);
    }
    const lost = new RedisConnectionLostError("Connection to Redis was lost while acquiring");
    for (const acquire of acquires) this.#o.decide(host, acquire, lost);
  }

  #answeredHost({ host, sent, acquires }: SentBatch, answer: AcquiredHost, lost: number): void {
    const { ledger, queue, fleet } = this.#o;
    // Told before the acquires settle: a refused one reads it.
    if (answer.paused > 0) this.#o.paused(host, answer.paused);
    if (answer.adaptive) this.#o.adaptive.answered(host, answer.adaptive);
    if (sent && ledger.answered(host, sent, slotsGranted(acquires, answer))) this.#o.syncNow(host);
    if (answer.total >= 0) {
      queue.note(host, answer.waiting);
      fleet.set(host, answer.total);
    } else {
      // Slots given back only: Redis took no sum.
      const known = fleet.get(host);
      if (known !== undefined) fleet.set(host, Math.max(0, known - (sent?.releases ?? 0)));
    }
    let refused = false;
    acquires.forEach((acquire, i) => {
      if (answer.granted[i]) {
        if (acquire.ticket) queue.forget(host, acquire.ticket);
        acquire.resolve(answer.waitMs[i]);
      } else if (answer.retryMs[i] > 0) {
        acquire.reject(new RateLimitedError(acquire.rate?.key ?? host, answer.retryMs[i]));
      } else if (lost > 0) {
        // The sum may be partial: decide as if Redis had not answered.
        this.#o.decide(host, acquire, new RedisCountsLostError());
      } else {
        refused = true;
        acquire.resolve(false);
      }
    });
    this.#o.collect(host);
    if (refused) this.#o.refused(host);
    // A pause asked for while this call was in flight goes with the next.
    if (this.#pauses.has(host)) this.#batches.add(host, true);
  }
}

/** The slots granted in an answer (turns alone left out). */
function slotsGranted(acquires: PendingAcquire[], answer: AcquiredHost): number {
  return acquires.filter((a, i) => a.slot && answer.granted[i]).length;
}

/** A rate as {@linkcode ACQUIRE} takes it: `"<key> <periodMs> <maxWaitMs>"`, or `""`. */
function rateSpec(rate: RateLimit | undefined): string {
  return rate
    ? `${rate.key} ${1000 / rate.perSecond} ${Math.max(0, Math.floor(rate.maxWaitMs))}`
    : "";
}
