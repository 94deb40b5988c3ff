/**
 * The Redis limiter's Lua scripts as typed calls: for each script, one place
 * that knows its keys and arguments by name, in the order the script reads
 * them, and decodes its reply into named fields. See `redis_scripts.ts` for
 * what each script does.
 *
 * @module
 */

import {
  ACQUIRE_LUA,
  COUNT_LUA,
  forCluster,
  QUEUE_LUA,
  REGISTER_LUA,
  SYNC_LUA,
} from "./redis_scripts.ts";

/** A script's keys and arguments, ready to be sent. */
export interface ScriptArgs {
  /** `KEYS`, in order. */
  keys: string[];
  /** `ARGV`, in order. */
  args: (string | number)[];
}

/** One Lua script: how its calls are encoded and its replies decoded. */
export interface Script<Input, Reply> {
  /** The ioredis command it is defined as. */
  readonly name: string;
  /** Its source; `cluster` when it wakes on sharded channels there. */
  lua(cluster: boolean): string;
  /** Its keys and arguments for `input`. */
  encode(input: Input): ScriptArgs;
  /** Its reply to the call made with `input`, by name. */
  decode(reply: unknown, input: Input): Reply;
}

/** A key a script found holding another type than dprl keeps there, and deleted. */
export interface HealedKey {
  /** The key. */
  key: string;
  /** The type it held. */
  type: string;
  /** What dprl keeps there: `hash`, `zset` or `set`. */
  kind: string;
}

/** Whether the keys of a slot or host were lost: 0 no, 1 the slot's keys, 2 this host's keys. */
export type Lost = 0 | 1 | 2;

/** The replies of a script that ends them with its {@linkcode HealedKey}s. */
interface Healing {
  /** The keys it found of another type and deleted. */
  healed: HealedKey[];
}

function healed(entries: unknown[]): HealedKey[] {
  const keys: HealedKey[] = [];
  for (let i = 0; i + 2 < entries.length; i += 3) {
    const [key, type, kind] = entries.slice(i, i + 3).map(String);
    keys.push({ key, type, kind });
  }
  return keys;
}

function list(reply: unknown): unknown[] {
  if (!Array.isArray(reply)) throw new TypeError(`A script answered ${typeof reply}, not a list`);
  return reply;
}

function lost(value: unknown): Lost {
  const n = Number(value);
  return n === 1 || n === 2 ? n : 0;
}

function wakes(lua: string): (cluster: boolean) => string {
  return (cluster) => cluster ? forCluster(lua) : lua;
}

/** One slot asked of {@linkcode ACQUIRE}, with the waiting request's ticket if any. */
export interface Ask {
  /** The host's limit; 0 is none. */
  limit: number;
  /** The ticket in the fleet's queue, or `""`. */
  ticket: string;
  /** `false` for a turn under the host's rate alone, without a slot. */
  slot?: boolean;
}

/** What one host asks of an {@linkcode ACQUIRE} call. */
export interface AcquireHost {
  /** The host. */
  host: string;
  /** Its count key. */
  n: string;
  /** Its group's member set (unused without a group). */
  members: string;
  /** Its queue. */
  q: string;
  /** Its waiting workers. */
  qw: string;
  /** Its adaptive state. */
  a: string;
  /** The slots this worker knows it holds, after the releases. */
  floor: number;
  /** This worker's last write is known to have landed. */
  trusted: boolean;
  /** Slots to give back first. */
  releases: number;
  /** The group's limit; -1: no group. */
  groupLimit: number;
  /** A pause the host asked for with `Retry-After`, to tell the fleet (ms since epoch; 0: none). */
  pause: number;
  /**
   * The rate every ask is held to, as `"<field> <periodMs> <maxWaitMs>"`
   * (its state lives in field `r:<field>` of the epoch hash); `""`: none.
   */
  rate: string;
  /** The bounds of an adaptive limit as `"<min> <max>"`; `""`: a static limit. */
  adaptive: string;
  /**
   * Answers the worker saw, for an adaptive limit, as `"<latency> <age>
   * <dropped> <inflight>"` repeated (age: ms since the request was sent).
   */
  samples: string;
  /** The slots asked, granted in order. */
  asks: Ask[];
}

/** The input of {@linkcode ACQUIRE}: hosts whose keys live in one slot. */
export interface AcquireInput {
  /** The slot's lease set. */
  leases: string;
  /** The slot's epoch hash. */
  epoch: string;
  /** This worker's id. */
  worker: string;
  /** The lease, in ms. */
  lease: number;
  /** The keys' expiry, in ms. */
  ttl: number;
  /** The epoch token this worker knows, or `""`. */
  known: string;
  /** The token to create a missing epoch with. */
  fresh: string;
  /** The hosts, each with its releases and asks. */
  hosts: AcquireHost[];
}

/** What {@linkcode ACQUIRE} answers of one host. */
export interface AcquiredHost {
  /** The fleet's count of the host; -1 when the host only gave slots back (no sum taken). */
  total: number;
  /** Whether keys were lost: the slot's (1) or the host's (2). */
  lost: Lost;
  /** The tickets in the host's queue; -1 when the host only gave slots back. */
  waiting: number;
  /** When the host's pause ends (ms since epoch); 0: not paused. */
  paused: number;
  /** Per ask, whether it was granted. */
  granted: boolean[];
  /** Per ask, the ms a granted one waits for its turn under the rate (mostly 0). */
  waitMs: number[];
  /** Per ask, the ms after which the rate has a turn for one refused by it; else 0. */
  retryMs: number[];
  /** The host's adaptive limit, when it has one. */
  adaptive?: AcquiredAdaptive;
}

/** A host's adaptive limit as {@linkcode ACQUIRE} answers it. */
export interface AcquiredAdaptive {
  /** The limit in force. */
  limit: number;
  /** The code of the reason of its last change (`ADAPTIVE_REASONS`). */
  reason: number;
  /** The measured no-load latency, in ms. */
  noLoadMs: number;
}

/** The reply of {@linkcode ACQUIRE}. */
export interface AcquireReply extends Healing {
  /** The slot's epoch token. */
  epoch: string;
  /** Whether the slot's keys were lost. */
  lost: Lost;
  /** Per host, in the order asked. */
  hosts: AcquiredHost[];
}

/** What a call in one slot tells first: this worker, its lease, the keys' expiry and epoch tokens. */
function slotHeader(
  i: { worker: string; lease: number; ttl: number; known: string; fresh: string },
): (string | number)[] {
  return [i.worker, i.lease, i.ttl, i.known, i.fresh];
}

/** Gives back slots, then takes one per ask, for each host of one slot (`ACQUIRE_LUA`). */
export const ACQUIRE: Script<AcquireInput, AcquireReply> = {
  name: "dprlAcquire",
  lua: wakes(ACQUIRE_LUA),
  encode: (i) => ({
    keys: [i.leases, i.epoch, ...i.hosts.flatMap((h) => [h.n, h.members, h.q, h.qw, h.a])],
    args: [
      ...slotHeader(i),
      ...i.hosts.flatMap((h) => [
        h.host,
        h.floor,
        h.trusted ? 1 : 0,
        h.releases,
        h.groupLimit,
        h.pause,
        h.rate,
        h.adaptive,
        h.samples,
        h.asks.length,
        ...h.asks.map((a) =>
          a.slot === false ? "r" : a.ticket ? `${a.limit} ${a.ticket}` : a.limit
        ),
      ]),
    ],
  }),
  decode: (reply, i) => {
    const r = list(reply);
    let at = 2;
    const hosts = i.hosts.map((h): AcquiredHost => {
      const k = h.asks.length;
      const adaptive = h.adaptive === "" ? undefined : {
        limit: Number(r[at + 4]),
        reason: Number(r[at + 5]),
        noLoadMs: Number(r[at + 6]) / 1000,
      };
      const skip = adaptive ? 3 : 0;
      // Per ask: 0 refused, 1 granted, 1 + w granted after w ms, -r refused by the rate.
      const codes = r.slice(at + 4 + skip, at + 4 + skip + k).map(Number);
      const host: AcquiredHost = {
        total: Number(r[at]),
        lost: lost(r[at + 1]),
        waiting: Number(r[at + 2]),
        paused: Number(r[at + 3]),
        granted: codes.map((c) => c >= 1),
        waitMs: codes.map((c) => Math.max(0, c - 1)),
        retryMs: codes.map((c) => Math.max(0, -c)),
      };
      if (adaptive) host.adaptive = adaptive;
      at += 4 + skip + k;
      return host;
    });
    return { epoch: String(r[0]), lost: lost(r[1]), hosts, healed: healed(r.slice(at)) };
  },
};

/** One host of a {@linkcode SYNC}. */
export interface SyncHost {
  /** The host. */
  host: string;
  /** Its count key. */
  n: string;
  /** This worker's count, its own truth (0 deletes its field). */
  count: number;
  /** The slots this worker knows Redis counts for it. */
  floor: number;
  /** This worker's last write of the host is known to have landed. */
  trusted: boolean;
}

/** The input of {@linkcode SYNC}. */
export interface SyncInput {
  /** The slot's epoch hash. */
  epoch: string;
  /** The slot's lease set. */
  leases: string;
  /** This worker's id. */
  worker: string;
  /** The lease, in ms. */
  lease: number;
  /** The keys' expiry, in ms. */
  ttl: number;
  /** The epoch token this worker knows, or `""`. */
  known: string;
  /** The token to create a missing epoch with. */
  fresh: string;
  /** The lease cannot have passed (`true`), or may have; `"leave"` ends it. */
  held: boolean | "leave";
  /** The hosts of the slot to sync. */
  hosts: SyncHost[];
}

/** What {@linkcode SYNC} answers of one host. */
export interface SyncedHost {
  /** The fleet's count. */
  total: number;
  /** The host's keys were lost. */
  lost: boolean;
}

/** The reply of {@linkcode SYNC}. */
export interface SyncReply extends Healing {
  /** The slot's epoch token. */
  epoch: string;
  /** Whether keys were lost: 0 no, 1 the slot's keys. */
  lost: Lost;
  /** Per host, in the order given. */
  hosts: SyncedHost[];
}

/** Renews a worker's lease of a slot and syncs hosts in it (`SYNC_LUA`). */
export const SYNC: Script<SyncInput, SyncReply> = {
  name: "dprlSync",
  lua: () => SYNC_LUA,
  encode: (i) => ({
    keys: [i.epoch, i.leases, ...i.hosts.map((h) => h.n)],
    args: [
      ...slotHeader(i),
      i.held === "leave" ? "leave" : i.held ? 1 : 0,
      ...i.hosts.flatMap((h) => [h.count, h.floor, h.trusted ? 1 : 0, h.host]),
    ],
  }),
  decode: (reply, i) => {
    const r = list(reply);
    const k = i.hosts.length;
    return {
      epoch: String(r[0]),
      lost: lost(r[1]),
      hosts: i.hosts.map((_, h) => ({
        total: Number(r[2 + 2 * h]),
        lost: Number(r[3 + 2 * h]) === 2,
      })),
      healed: healed(r.slice(2 + 2 * k)),
    };
  },
};

/** One host of a {@linkcode COUNT}: its count key and its slot's lease set. */
export interface CountHost {
  /** The count key. */
  n: string;
  /** The lease set of its slot. */
  leases: string;
}

/** The input of {@linkcode COUNT}. */
export interface CountInput {
  /** The lease, in ms. */
  lease: number;
  /** The hosts, all in one slot. */
  hosts: CountHost[];
}

/** The reply of {@linkcode COUNT}. */
export interface CountReply extends Healing {
  /** The fleet's count of each host, in the order given. */
  totals: number[];
}

/** The fleet's counts of hosts, writing nothing (`COUNT_LUA`). */
export const COUNT: Script<CountInput, CountReply> = {
  name: "dprlCount",
  lua: () => COUNT_LUA,
  encode: (i) => ({ keys: i.hosts.flatMap((h) => [h.n, h.leases]), args: [i.lease] }),
  decode: (reply, i) => {
    const r = list(reply);
    const k = i.hosts.length;
    return { totals: r.slice(0, k).map(Number), healed: healed(r.slice(k)) };
  },
};

/** The input of {@linkcode REGISTER}. */
export interface RegisterInput {
  /** The worker registry, `<prefix>:workers`. */
  workers: string;
  /** This worker's id (`""` to list). */
  worker: string;
  /** The lease, in ms. */
  lease: number;
  /** Renew the worker's lease, remove it, or only list. */
  op: "add" | "del" | "list";
}

/** Renews, removes or lists the registry's live workers (`REGISTER_LUA`); answers their ids. */
export const REGISTER: Script<RegisterInput, string[]> = {
  name: "dprlRegister",
  lua: () => REGISTER_LUA,
  encode: (i) => ({ keys: [i.workers], args: [i.worker, i.lease, i.op] }),
  decode: (reply) => list(reply).map(String),
};

/** The input of {@linkcode QUEUE}. */
export interface QueueInput {
  /** The host's queue. */
  q: string;
  /** The host's waiting workers. */
  qw: string;
  /** This worker's id. */
  worker: string;
  /** The lease, in ms. */
  lease: number;
  /** The keys' expiry, in ms. */
  ttl: number;
  /** Also renew (`"renew"`) or end (`"leave"`) the worker's waiting lease. */
  op: "" | "renew" | "leave";
  /** The host. */
  host: string;
  /** Tickets joining the queue, in order. */
  adds: string[];
  /** Tickets leaving it. */
  removes: string[];
}

/** The reply of {@linkcode QUEUE}. */
export interface QueueReply extends Healing {
  /** The tickets in the queue. */
  length: number;
}

/** Changes the fleet's queue of one host (`QUEUE_LUA`). */
export const QUEUE: Script<QueueInput, QueueReply> = {
  name: "dprlQueue",
  lua: wakes(QUEUE_LUA),
  encode: (i) => ({
    keys: [i.q, i.qw],
    args: [i.worker, i.lease, i.ttl, i.op, i.host, i.adds.length, ...i.adds, ...i.removes],
  }),
  decode: (reply) => {
    const r = list(reply);
    return { length: Number(r[0]), healed: healed(r.slice(1)) };
  },
};

/** Every script, to define on a client. */
export const SCRIPTS: readonly Script<never, unknown>[] = [
  ACQUIRE,
  SYNC,
  COUNT,
  REGISTER,
  QUEUE,
] as Script<never, unknown>[];

/** What sends a script call: a client or a pipeline with the scripts defined. */
type Sender = Record<string, (...keysAndArgs: (string | number)[]) => unknown>;

/** Defines every script on an ioredis client (`cluster`: a Cluster client). */
export function defineScripts(
  client: { defineCommand(name: string, options: { lua: string }): void },
  cluster: boolean,
): void {
  for (const script of SCRIPTS) client.defineCommand(script.name, { lua: script.lua(cluster) });
}

/** Sends `script` with `input` on a client with the scripts defined; resolves to its decoded reply. */
export async function runScript<I, R>(client: object, script: Script<I, R>, input: I): Promise<R> {
  const { keys, args } = script.encode(input);
  const reply = await (client as Sender)[script.name](keys.length, ...keys, ...args);
  return script.decode(reply, input);
}

/** Queues `script` with `input` on a pipeline with the scripts defined. */
export function queueScript<I>(pipeline: object, script: Script<I, unknown>, input: I): void {
  const { keys, args } = script.encode(input);
  (pipeline as Sender)[script.name](keys.length, ...keys, ...args);
}
