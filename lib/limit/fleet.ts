/**
 * {@linkcode Fleet}: what the control plane asks of a limiter shared by a
 * fleet through Redis.
 *
 * @module
 */

import type { RedisNode } from "./redis_config.ts";

/**
 * What the control plane asks of a limiter shared by a fleet through Redis,
 * beyond {@linkcode Limiter}: its worker registry, Redis's state and the
 * servers it meets. `Client` is the type of its Redis client.
 */
export interface Fleet<Client = unknown> {
  /** This worker's id in Redis. */
  readonly workerId: string;
  /** Whether Redis is reachable. */
  readonly up: boolean;
  /** The Redis client (for the fleet's limit table). */
  readonly client: Client;
  /** Called with the duration in ms of every Redis call. */
  onCall?: (ms: number) => void;
  /** Every live worker of the fleet; rejects when Redis cannot answer. */
  workers(): Promise<WorkerInfo[]>;
  /** The fleet's open connections per host, as of the last heartbeat. */
  fleetCounts(): ReadonlyMap<string, number>;
  /** Sets what this worker tells the fleet about itself. */
  setWorkerInfo(info: Partial<Omit<WorkerInfo, "id" | "connections">>): void;
  /** The Redis servers the limiter talks to now. */
  nodes(): RedisNode[];
}

/** What a worker tells the fleet about itself in the worker registry. */
export interface WorkerInfo {
  /** The worker's id (its field in the host hashes). */
  id: string;
  /** Host name of its machine, or `""` when unknown. */
  hostname: string;
  /** Process id, or 0 when unknown. */
  pid: number;
  /** dprl version, or `""` when unknown. */
  version: string;
  /** URL of its admin server, or `""` when it has none. */
  adminUrl: string;
  /** URL of its proxy port, or `""` when unknown. */
  proxyUrl: string;
  /** When it started (ISO 8601). */
  started: string;
  /** Its open upstream connections, as of its last heartbeat. */
  connections: number;
}
