/**
 * The contract every connection limiter keeps, in memory or through Redis.
 *
 * @module
 */

/** A group of hosts that share one limit, as an acquire names it. */
export interface LimitGroup {
  /** The group's name. */
  readonly name: string;
  /** The open connections all members may hold together; 0 is unlimited. */
  readonly limit: number;
}

/**
 * Counts open upstream connections per host key and grants new ones while a
 * host is under its limit (and, for a member of a group, while the group is
 * under the group's limit).
 */
export interface Limiter {
  /**
   * Takes one slot for `host` unless `limit` (when above 0) slots are already
   * taken, or `host` belongs to `group` and the group's members hold
   * `group.limit` (when above 0) slots together; both are checked and taken
   * at once. Resolves `true` when the slot is granted, `false` when the host
   * or its group is at its limit. Rejects with
   * {@linkcode LimiterUnavailableError} when the limiter cannot decide and its
   * failure mode says to refuse.
   *
   * A host keeps the group it had when it held no slot until it holds none
   * again: a change of group applies to a host's next connections once its
   * open ones are closed.
   */
  acquire(host: string, limit: number, group?: LimitGroup): Promise<boolean>;
  /** Gives back one slot of `host` (and of its group) taken by {@linkcode Limiter.acquire}. */
  release(host: string): void;
  /** The number of open connections to `host` (across the fleet). */
  count(host: string): Promise<number>;
  /** Stops the limiter and removes what it holds in shared storage. */
  close(): Promise<void>;
  /**
   * Set by the owner of idle connections: called with a host when another
   * process of the fleet was refused a slot of it, so that idle connections
   * held here give their slots up.
   */
  onPressure?: (host: string) => void;
}

/** Thrown when a limiter cannot reach its shared storage and must refuse. */
export class LimiterUnavailableError extends Error {
  /** Creates the error with a message saying what failed. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "LimiterUnavailableError";
  }
}
