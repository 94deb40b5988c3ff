/**
 * The ways a Redis call of the limiter fails, each a class with a `code`,
 * and the one place that reads what an ioredis error is.
 *
 * @module
 */

/** The `code` of every {@linkcode RedisError}. */
export type RedisErrorCode =
  | "redis_timeout"
  | "redis_connection_lost"
  | "redis_counts_lost"
  | "redis_corrupted_key"
  | "redis_reply";

/** A Redis call of the limiter failed; `code` says how. */
export class RedisError extends Error {
  /** How the call failed. */
  readonly code: RedisErrorCode;
  /** Creates the error with its code and a message saying what failed. */
  constructor(code: RedisErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Redis did not answer within the limiter's timeout (code `redis_timeout`). */
export class RedisTimeoutError extends RedisError {
  /** The timeout that passed, in milliseconds. */
  readonly ms: number;
  /** Creates the error for a call that took longer than `ms` milliseconds. */
  constructor(ms: number) {
    super("redis_timeout", `Redis did not answer within ${ms} ms`);
    this.ms = ms;
  }
}

/**
 * The connection to Redis is down or was lost while a call was under way
 * (code `redis_connection_lost`): Redis may or may not have run the call.
 */
export class RedisConnectionLostError extends RedisError {
  /** Creates the error with a message saying what was cut off. */
  constructor(message: string, options?: ErrorOptions) {
    super("redis_connection_lost", message, options);
  }
}

/**
 * Redis lost counts (a restart, `FLUSHALL`, eviction) and the fleet is
 * re-asserting them, so a sum it answered may be partial (code
 * `redis_counts_lost`).
 */
export class RedisCountsLostError extends RedisError {
  /** Creates the error. */
  constructor() {
    super("redis_counts_lost", "Redis lost its counts and the fleet is re-asserting them");
  }
}

/**
 * A key held another type than the one dprl keeps there; a script deleted it
 * and the counts it held are re-asserted like lost ones (code
 * `redis_corrupted_key`).
 */
export class RedisCorruptedKeyError extends RedisError {
  /** The key. */
  readonly key: string;
  /** The type it held. */
  readonly type: string;
  /** What dprl keeps there. */
  readonly kind: string;
  /** Creates the error for `key`, which held a `type` where dprl keeps a `kind`. */
  constructor(key: string, type: string, kind: string) {
    super(
      "redis_corrupted_key",
      `Redis key ${key} held a ${type} where dprl keeps a ${kind}; dprl deleted it and the fleet re-asserts its counts`,
    );
    this.key = key;
    this.type = type;
    this.kind = kind;
  }
}

/** Redis answered the call with an error (code `redis_reply`): the server is up. */
export class RedisReplyError extends RedisError {
  /** Creates the error from the error ioredis reported. */
  constructor(cause: unknown) {
    super("redis_reply", describe(cause), { cause });
  }
}

/**
 * Reply codes that say the server cannot serve the call now (loading, busy,
 * failing over, refusing the client), as opposed to a call it refused.
 */
const UNAVAILABLE = new Set([
  "NOSCRIPT",
  "LOADING",
  "BUSY",
  "MASTERDOWN",
  "READONLY",
  "CLUSTERDOWN",
  "TRYAGAIN",
  "NOAUTH",
  "WRONGPASS",
]);

/**
 * The code of an error reply of Redis: its first word, as the protocol
 * defines it (`WRONGPASS`, `ERR`, ...); `undefined` for any other error.
 */
export function replyCode(error: unknown): string | undefined {
  if (!(error instanceof Error) || error.name !== "ReplyError") return undefined;
  const end = error.message.indexOf(" ");
  return end < 0 ? error.message : error.message.slice(0, end);
}

/** Whether Redis answered `error` while able to serve (a script error, say). */
export function isAnswered(error: unknown): boolean {
  const code = replyCode(error);
  return code !== undefined && !UNAVAILABLE.has(code);
}

/** Whether Redis refused the client's credentials (or wants some). */
export function isAuthError(error: unknown): boolean {
  const code = replyCode(error);
  if (code === "NOAUTH" || code === "WRONGPASS") return true;
  // Before Redis 6, a refused AUTH answered a plain `ERR`.
  const command = (error as { command?: { name?: unknown } }).command;
  return code !== undefined && command?.name === "auth";
}

/** Marks an error Redis answered as a {@linkcode RedisReplyError}. */
export function toRedisError(error: unknown): unknown {
  return isAnswered(error) ? new RedisReplyError(error) : error;
}

/** An error's message with its `code` when the message lacks it. */
export function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  if (error instanceof RedisError) return error.message;
  const code = (error as { code?: unknown }).code;
  return typeof code === "string" && !error.message.includes(code)
    ? `${error.message} (${code})`
    : error.message;
}
