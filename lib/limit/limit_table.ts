import { hostKey } from "./host_key.ts";

/**
 * The per-host connection limits of one proxy: a default and per-host
 * overrides, keyed by {@linkcode hostKey}. A limit of 0 or less means
 * unlimited.
 */
export class LimitTable {
  #default: number;
  #hosts = new Map<string, number>();

  /** Creates a table with a default limit and optional overrides. */
  constructor(defaultLimit = 0, hosts: Record<string, number> = {}) {
    this.#default = defaultLimit;
    this.replace(hosts);
  }

  /** The limit for hosts without an override. */
  get defaultLimit(): number {
    return this.#default;
  }

  set defaultLimit(limit: number) {
    this.#default = checkLimit(limit);
  }

  /** Sets one host's override; a limit of 0 or less removes it. */
  set(host: string, limit: number): void {
    checkLimit(limit);
    if (limit > 0) this.#hosts.set(hostKey(host), limit);
    else this.#hosts.delete(hostKey(host));
  }

  /** Removes one host's override. */
  delete(host: string): void {
    this.#hosts.delete(hostKey(host));
  }

  /** Replaces all overrides; entries of 0 or less are ignored. */
  replace(hosts: Record<string, number>): void {
    const next = new Map<string, number>();
    for (const [host, limit] of Object.entries(hosts)) {
      checkLimit(limit);
      if (limit > 0) next.set(hostKey(host), limit);
    }
    this.#hosts = next;
  }

  /** The limit that applies to an already normalised host key. */
  limitFor(key: string): number {
    return this.#hosts.get(key) ?? this.#default;
  }

  /** The overrides, by host key. */
  entries(): Record<string, number> {
    return Object.fromEntries(this.#hosts);
  }
}

function checkLimit(limit: number): number {
  if (!Number.isSafeInteger(limit)) {
    throw new RangeError(`Limit must be an integer, got ${limit}`);
  }
  return limit;
}
