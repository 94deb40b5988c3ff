/**
 * {@linkcode LimiterContext}: what the parts of the Redis limiter share.
 *
 * @module
 */

import type { WorkerContext } from "./worker_registry.ts";
import type { RedisConnection } from "./redis_connection.ts";
import type { HostLedger } from "./host_ledger.ts";
import type { LossRecovery } from "./loss_recovery.ts";

/**
 * What the parts of the Redis limiter share beyond {@linkcode WorkerContext}:
 * the connection, this worker's accounting, loss recovery and the fleet's
 * counts as last learnt.
 */
export interface LimiterContext extends WorkerContext {
  /** The connection and Redis's state. */
  conn: RedisConnection;
  /** This worker's accounting. */
  ledger: HostLedger;
  /** Loss detection and recovery. */
  recovery: LossRecovery;
  /** The fleet's open connections by host, as last learnt. */
  fleet: Map<string, number>;
  /** Whether the limiter is closed. */
  closed: () => boolean;
}
