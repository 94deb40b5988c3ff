/**
 * How a heartbeat's syncs travel: hosts grouped in batches of one Cluster
 * slot, each batch prepared as one script call (or a lease renewal), sent in
 * pipelines of one round trip per Redis node.
 *
 * @module
 */

import type { Cluster, Redis } from "ioredis";
import { keySlot } from "./redis_key_names.ts";
import { isAnswered, RedisConnectionLostError } from "./redis_errors.ts";

/** A pipeline of an ioredis client with dprl's scripts defined on it. */
export interface Pipeline {
  zadd(key: string, score: number, member: string): void;
  pexpire(key: string, ms: number): void;
  exec(): Promise<[Error | null, unknown][] | null>;
}

/**
 * What a heartbeat sends for one slot, ready to be queued on a pipeline:
 * prepared at the moment it is written, so the counts it carries are the
 * ledger's at that moment (see `host_ledger.ts`).
 */
export interface PreparedSync {
  /** Queues its commands, given Redis's time in ms; returns how many it queued. */
  queue: (pipeline: Pipeline, redisNow: number) => number;
  /** Takes in the answers of its commands, in order. */
  answered: (replies: unknown[]) => void;
  /** Redis did not answer: its hosts are synced again at the next heartbeat. */
  failed: () => void;
}

/** Most hosts one heartbeat script call syncs. */
export const BATCH_HOSTS = 256;

/** Most hosts the script calls of one heartbeat pipeline (one round trip) sync. */
export const PIPELINE_HOSTS = 2_048;

/**
 * Groups hosts into batches of at most {@linkcode BATCH_HOSTS} whose keys
 * share one slot (on a single Redis: any hosts), each with its epoch key.
 */
export function groupBySlot(
  hosts: Iterable<string>,
  epochOf: (host: string) => string,
): [string, string[]][] {
  const groups = new Map<string, string[]>();
  for (const host of hosts) {
    const e = epochOf(host);
    let group = groups.get(e);
    if (!group) groups.set(e, group = []);
    group.push(host);
  }
  return splitBatches(groups);
}

/**
 * Splits the hosts of each slot (by epoch key) into batches of at most
 * {@linkcode BATCH_HOSTS}; a slot without hosts is one empty batch.
 */
export function splitBatches(slots: Map<string, string[]>): [string, string[]][] {
  const out: [string, string[]][] = [];
  for (const [e, hosts] of slots) {
    for (let i = 0; i === 0 || i < hosts.length; i += BATCH_HOSTS) {
      out.push([e, hosts.slice(i, i + BATCH_HOSTS)]);
    }
  }
  return out;
}

/** Options of {@linkcode SyncSender}. */
export interface SyncSenderOptions {
  /** The client, with the scripts defined. */
  client: Redis | Cluster;
  /** Whether it is a Cluster client. */
  cluster: boolean;
  /** Runs one Redis call within the timeout (and tracks Redis's state). */
  call: <T>(op: () => Promise<T>) => Promise<T>;
}

/** Sends prepared syncs in pipelines, one per node. */
export class SyncSender {
  #o: SyncSenderOptions;

  /** Creates the sender. */
  constructor(options: SyncSenderOptions) {
    this.#o = options;
  }

  /**
   * Syncs batches of hosts (each: keys in one slot, with its epoch key), one
   * script call per batch (a batch without hosts: a lease renewal, which
   * needs the node's time first), sent in pipelines of up to
   * {@linkcode PIPELINE_HOSTS} hosts to one node: a single Redis, or one
   * master of a Cluster. Each pipeline is one round trip. `prepare` runs
   * when its pipeline is written.
   */
  send(batches: [string, string[]][], prepare: (e: string, hosts: string[]) => PreparedSync): void {
    const byNode = new Map<string, [string, string[]][]>();
    for (const batch of batches) {
      const node = this.#o.cluster
        ? (this.#o.client as Cluster).slots[keySlot(batch[0])]?.[0] ?? ""
        : "";
      let list = byNode.get(node);
      if (!list) byNode.set(node, list = []);
      list.push(batch);
    }
    for (const [node, list] of byNode) {
      let chunk: [string, string[]][] = [];
      let size = 0;
      for (const batch of list) {
        chunk.push(batch);
        size += Math.max(1, batch[1].length);
        if (size >= PIPELINE_HOSTS) {
          this.#send(node, chunk, prepare);
          chunk = [];
          size = 0;
        }
      }
      if (chunk.length > 0) this.#send(node, chunk, prepare);
    }
  }

  /**
   * Sends what a heartbeat has for one node (`""`: the single Redis) as one
   * pipeline, after asking the node's time when a lease needs it.
   */
  #send(
    node: string,
    batches: [string, string[]][],
    prepare: (e: string, hosts: string[]) => PreparedSync,
  ): void {
    const counts: number[] = [];
    let syncs: PreparedSync[] = [];
    const time = batches.some(([, hosts]) => hosts.length === 0)
      ? this.#o.call(() => this.#redisTime(node))
      : Promise.resolve(0);
    time.then((redisNow) =>
      this.#o.call(async () => {
        syncs = batches.map(([e, hosts]) => prepare(e, hosts));
        const pipeline = this.#o.client.pipeline() as unknown as Pipeline;
        for (const sync of syncs) counts.push(sync.queue(pipeline, redisNow));
        const results = await pipeline.exec();
        // A pipeline answers every error in its results: Redis did not answer these.
        const unanswered = results?.find(([error]) => error && !isAnswered(error));
        if (unanswered) throw unanswered[0];
        return results ?? [];
      })
    ).then(
      (results) => {
        let at = 0;
        syncs.forEach((sync, i) => {
          const own = results.slice(at, at += counts[i]);
          if (own.length < counts[i] || own.some(([error]) => error)) sync.failed();
          else sync.answered(own.map(([, reply]) => reply));
        });
      },
      () => {
        for (const sync of syncs) sync.failed();
      },
    );
  }

  /** Redis's time (ms since epoch) on `node` (`""`: the single Redis). */
  async #redisTime(node: string): Promise<number> {
    const client = this.#o.cluster
      ? (this.#o.client as Cluster).nodes("master").find((n) =>
        `${n.options.host}:${n.options.port}` === node
      )
      : this.#o.client as Redis;
    if (!client) throw new RedisConnectionLostError(`No connection to Redis node ${node}`);
    const [sec, usec] = await client.time();
    return Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
  }
}
