/**
 * {@linkcode loadLimiter}: the limiter a proxy's options ask for, in memory
 * or through Redis (whose client is imported only then).
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import type { Limiter } from "./limiter.ts";
import { LocalLimiter } from "./local_limiter.ts";
import type { FailureMode, RedisConfig } from "./redis_config.ts";
import type { Fleet } from "./fleet.ts";
import type { RedisLimiter } from "./redis_limiter.ts";

/** The limiter a proxy's options ask for, and its fleet in distributed mode. */
export interface LoadedLimiter {
  /** The limiter. */
  readonly limiter: Limiter;
  /** The same limiter's fleet side in Redis mode; `null` in memory. */
  readonly fleet: RedisFleet | null;
}

/** The fleet side of the Redis limiter, with its client. */
export type RedisFleet = Fleet<RedisLimiter["client"]>;

/** Options of {@linkcode loadLimiter}. */
export interface LoadLimiterOptions {
  /** Where the counters are shared; without it they live in memory. */
  redis?: RedisConfig;
  /** Prefix of the Redis keys. */
  prefix: string;
  /** This worker's lease in Redis, in milliseconds. */
  lease: number;
  /** How long a Redis call may take, in milliseconds. */
  timeout: number;
  /** What to do while Redis is unreachable. */
  failureMode: FailureMode;
  /** Where the Redis limiter logs. */
  logger: Logger;
}

/**
 * A {@linkcode LocalLimiter} without `redis` (no fleet); otherwise imports
 * the Redis limiter and makes one, which is its own fleet. Throws a
 * `NotCapable` error saying which flag to add when the Redis client cannot load for want of environment access.
 */
export async function loadLimiter(options: LoadLimiterOptions): Promise<LoadedLimiter> {
  const { redis, ...rest } = options;
  if (redis === undefined) return { limiter: new LocalLimiter(), fleet: null };
  let module;
  try {
    module = await import("./redis_limiter.ts");
  } catch (err) {
    if (err instanceof Deno.errors.NotCapable) {
      throw new Deno.errors.NotCapable(
        "Redis mode needs environment access because the Redis client lists the environment " +
          "as it loads: run with --ignore-env or --allow-env",
        { cause: err },
      );
    }
    throw err;
  }
  const limiter = new module.RedisLimiter({ redis, ...rest });
  return { limiter, fleet: limiter };
}
