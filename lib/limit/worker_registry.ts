/**
 * {@linkcode WorkerRegistry}: the fleet's list of live workers in Redis,
 * `<prefix>:workers` (sorted set: worker id -> lease deadline) and what each
 * tells about itself in `<prefix>:worker:<id>` (hash, expiring).
 *
 * @module
 */

import type { Cluster, Redis } from "ioredis";
import type { RedisKeyNames } from "./redis_key_names.ts";
import { REGISTER, type RegisterInput, runScript } from "./redis_script_codec.ts";
import type { WorkerInfo } from "./fleet.ts";
export type { WorkerInfo } from "./fleet.ts";

/**
 * What the parts of the Redis limiter share: the client, the key names,
 * this worker's id and lease, and the call that bounds a Redis call in time.
 */
export interface WorkerContext {
  /** The client, with the scripts defined. */
  client: Redis | Cluster;
  /** The names of the keys. */
  keys: RedisKeyNames;
  /** This worker's id. */
  worker: string;
  /** The lease, in ms: a worker that stops renewing it counts no more. */
  lease: number;
  /** The expiry of an idle host's keys (and of this worker's entry), in ms. */
  ttl: number;
  /** Runs one Redis call within the timeout (and tracks Redis's state). */
  call: <T>(op: () => Promise<T>) => Promise<T>;
}

/** This worker's entry in the fleet's worker registry, and the list of all. */
export class WorkerRegistry {
  #options: WorkerContext;
  #info: Omit<WorkerInfo, "id" | "connections">;

  /** Creates the entry; nothing is written until {@linkcode register}. */
  constructor(options: WorkerContext) {
    this.#options = options;
    this.#info = {
      hostname: hostname(),
      pid: Deno.pid,
      version: "",
      adminUrl: "",
      proxyUrl: "",
      started: new Date().toISOString(),
    };
  }

  /** Sets what this worker tells the fleet about itself, from its next registration. */
  setInfo(info: Partial<Omit<WorkerInfo, "id" | "connections">>): void {
    this.#info = { ...this.#info, ...info };
  }

  /** Renews this worker's lease and entry, with its `connections`; failures are ignored. */
  register(connections: number): void {
    const { client, keys, worker, ttl, call } = this.#options;
    const key = keys.worker(worker);
    call(() => runScript(client, REGISTER, this.#input("add"))).catch(() => {});
    call(async () => {
      await client.hset(key, {
        id: worker,
        ...this.#info,
        pid: String(this.#info.pid),
        connections: String(connections),
      });
      await client.pexpire(key, ttl);
    }).catch(() => {});
  }

  /** The calls that remove this worker's entry, sent at once (to be bounded by the caller). */
  unregister(): Promise<unknown>[] {
    const { client, keys, worker } = this.#options;
    return [runScript(client, REGISTER, this.#input("del")), client.del(keys.worker(worker))];
  }

  /**
   * Every live worker of the fleet (its lease not passed), with its open
   * connections as of its last heartbeat. Rejects when Redis cannot answer.
   */
  async workers(): Promise<WorkerInfo[]> {
    const { client, keys, call } = this.#options;
    const ids = await call(() =>
      runScript(client, REGISTER, { ...this.#input("list"), worker: "" })
    );
    const hashes = await Promise.all(
      ids.map((id) => call(() => client.hgetall(keys.worker(id)))),
    );
    return ids.map((id, i) => {
      const h = hashes[i];
      return {
        id,
        hostname: h.hostname ?? "",
        pid: Number(h.pid ?? 0) || 0,
        version: h.version ?? "",
        adminUrl: h.adminUrl ?? "",
        proxyUrl: h.proxyUrl ?? "",
        started: h.started ?? "",
        connections: Number(h.connections ?? 0) || 0,
      };
    });
  }

  #input(op: RegisterInput["op"]): RegisterInput {
    const { keys, worker, lease } = this.#options;
    return { workers: keys.workers, worker, lease, op };
  }
}

/** This machine's host name, or `""` when it may not be read (never prompts). */
function hostname(): string {
  try {
    if (Deno.permissions.querySync({ name: "sys", kind: "hostname" }).state !== "granted") {
      return "";
    }
    return Deno.hostname();
  } catch {
    return "";
  }
}
