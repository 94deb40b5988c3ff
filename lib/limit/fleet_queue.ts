/**
 * {@linkcode FleetQueue}: this worker's tickets in the fleet's queues of
 * waiting requests (one queue per host, in Redis), and the changes of them
 * sent once per event-loop turn.
 *
 * @module
 */

import type { WorkerContext } from "./worker_registry.ts";
import { type HealedKey, QUEUE, type QueueInput, runScript } from "./redis_script_codec.ts";

/** What the queue of one host is to be told in this event-loop turn. */
interface QueueOps {
  /** Tickets joining the queue, in order. */
  adds: string[];
  /** Tickets leaving it. */
  removes: string[];
  /** This worker has no ticket of the host left: its waiting lease ends. */
  leave: boolean;
}

/** Options of {@linkcode FleetQueue}. */
export interface FleetQueueOptions extends WorkerContext {
  /** Whether calls may be sent now (not closed, Redis not known down). */
  canSend: () => boolean;
  /** Called when the first change of a turn is queued: {@linkcode FleetQueue.flush} is due. */
  schedule: () => void;
  /** Starts (or stops) listening for the wake-ups of the queue of a host. */
  watch: (host: string, on: boolean) => void;
  /** Takes in the keys a script found of another type and deleted. */
  healed: (keys: HealedKey[]) => void;
}

/**
 * The fleet's queues as this worker takes part in them: its tickets by host,
 * this turn's changes, the tickets whose acquire is under way, and the
 * lengths of the queues as last answered.
 */
export class FleetQueue {
  #o: FleetQueueOptions;
  /** This worker's tickets, by host, in order. */
  #tickets = new Map<string, Set<string>>();
  /** This turn's changes, by host, until {@linkcode flush} sends them. */
  #ops = new Map<string, QueueOps>();
  /** Tickets whose acquire is on its way to Redis. */
  #asking = new Set<string>();
  /** Tickets issued so far (their ids are this number, padded, so they sort). */
  #seq = 0;
  /** Lengths of the queues, by host, as last answered (hosts with none left out). */
  #lengths = new Map<string, number>();

  /** Creates the queue; nothing is sent until a ticket joins. */
  constructor(options: FleetQueueOptions) {
    this.#o = options;
  }

  /** A new ticket of this worker: `<worker>|<sequence>`, sorting in issue order. */
  ticket(): string {
    return `${this.#o.worker}|${(this.#seq++).toString(36).padStart(11, "0")}`;
  }

  /** Puts `ticket` at the end of the queue of `host` (sent with this turn's changes). */
  add(host: string, ticket: string): void {
    let tickets = this.#tickets.get(host);
    if (!tickets) {
      this.#tickets.set(host, tickets = new Set());
      this.#o.watch(host, true);
    }
    tickets.add(ticket);
    const ops = this.#op(host);
    ops.adds.push(ticket);
    ops.leave = false;
  }

  /** Takes `ticket` out of the queue of `host` (no-op once granted or gone). */
  remove(host: string, ticket: string): void {
    if (!this.holds(host, ticket)) return;
    this.forget(host, ticket);
    const ops = this.#op(host);
    const i = ops.adds.indexOf(ticket);
    if (i >= 0) ops.adds.splice(i, 1);
    else ops.removes.push(ticket);
  }

  /** Forgets a ticket that is no longer queued; the last one of a host ends the wait. */
  forget(host: string, ticket: string): void {
    const tickets = this.#tickets.get(host);
    if (!tickets?.delete(ticket) || tickets.size > 0) return;
    this.#tickets.delete(host);
    this.#o.watch(host, false);
    this.#op(host).leave = true;
  }

  /** Whether this worker holds `ticket` in the queue of `host`. */
  holds(host: string, ticket: string): boolean {
    return this.#tickets.get(host)?.has(ticket) ?? false;
  }

  /** Whether this worker waits in the queue of `host`. */
  waitsFor(host: string): boolean {
    return this.#tickets.has(host);
  }

  /** The hosts whose queue this worker waits in, or knows the length of. */
  hosts(): string[] {
    return [...this.#tickets.keys(), ...this.#lengths.keys()];
  }

  /** The hosts whose queue this worker waits in. */
  waited(): Iterable<string> {
    return this.#tickets.keys();
  }

  /** Marks `tickets` as asking for a slot until `done` settles. */
  async asking<T>(tickets: string[], done: Promise<T>): Promise<T> {
    for (const t of tickets) this.#asking.add(t);
    try {
      return await done;
    } finally {
      for (const t of tickets) this.#asking.delete(t);
    }
  }

  /** Whether this turn has changes to send. */
  get pending(): boolean {
    return this.#ops.size > 0;
  }

  /** Sends this turn's changes, one script call per host. */
  flush(): void {
    const ops = this.#ops;
    this.#ops = new Map();
    for (const [host, op] of ops) this.#send(host, op, op.leave ? "leave" : "");
  }

  /**
   * Renews this worker's waiting lease and sends every ticket it waits
   * with, so that lost ones come back (heartbeat).
   */
  renew(): void {
    for (const [host, tickets] of this.#tickets) {
      // A ticket being granted right now must not come back as a ghost.
      const adds = [...tickets].filter((t) => !this.#asking.has(t));
      this.#send(host, { adds, removes: [], leave: false }, "renew");
    }
  }

  /**
   * Forgets every queue (on close) and returns the calls that leave them, to
   * be sent (and bounded) by the caller while Redis is up.
   */
  close(): (() => Promise<unknown>)[] {
    const { client } = this.#o;
    const queues = [...this.#tickets];
    this.#tickets.clear();
    this.#lengths.clear();
    return queues.map(([host, tickets]) => () =>
      runScript(client, QUEUE, this.#input(host, "leave", [], [...tickets]))
    );
  }

  /** Takes in the length of the queue of `host` as a script answered it. */
  note(host: string, length: number): void {
    if (length > 0) this.#lengths.set(host, length);
    else this.#lengths.delete(host);
  }

  /** The requests waiting for `host` in the fleet's queue, as Redis last answered. */
  waiting(host: string): number {
    return this.#lengths.get(host) ?? 0;
  }

  #op(host: string): QueueOps {
    let ops = this.#ops.get(host);
    if (!ops) {
      ops = { adds: [], removes: [], leave: false };
      if (this.#ops.size === 0) this.#o.schedule();
      this.#ops.set(host, ops);
    }
    return ops;
  }

  /** Sends changes of the queue of `host`; a failure is healed by the heartbeat. */
  #send(host: string, ops: QueueOps, op: QueueInput["op"]): void {
    if (!this.#o.canSend()) return;
    if (ops.adds.length === 0 && ops.removes.length === 0 && op === "") return;
    const { client, call, healed } = this.#o;
    call(() => runScript(client, QUEUE, this.#input(host, op, ops.adds, ops.removes)))
      .then((reply) => {
        this.note(host, reply.length);
        healed(reply.healed);
      }, () => {});
  }

  #input(host: string, op: QueueInput["op"], adds: string[], removes: string[]): QueueInput {
    const { keys, worker, lease, ttl } = this.#o;
    const [q, qw] = [keys.key(host, "q"), keys.key(host, "qw")];
    return { q, qw, worker, lease, ttl, op, host, adds, removes };
  }
}
