/**
 * Runtime limit changes (the admin API's and `setFleetLimits`'s): their
 * type, the checks of one limit and one host pattern, and the changes
 * applied to a table of limits.
 *
 * @module
 */

import {
  canonicalRules,
  type HostRule,
  type LimitRules,
  normalizeRules,
  parseHostPattern,
} from "./rules/rules.ts";

/** Changes to the fleet's limit table; `null` removes an entry. */
export interface FleetLimitChanges {
  /** The default limit for hosts no rule matches; `null` removes it. */
  default?: number | null;
  /**
   * Host rules by host pattern: a limit, or a {@linkcode HostRule} with
   * settings (`rate`, `adaptive`, `retry-after-max`, queue settings);
   * `null` (or a limit of 0 or less) removes one.
   */
  hosts?: Record<string, number | HostRule | null>;
}

/** Changes checked: host patterns normalised, each removal as `null`. */
export interface CheckedChanges {
  /** The new default (0 or more), `null` to remove it; absent, it stays. */
  default?: number | null;
  /** Host pattern to its new rule (a limit above 0, or a rule with settings), or `null` to remove it. */
  hosts: Map<string, number | HostRule | null>;
}

/**
 * Returns `limit` when it is an integer; throws a TypeError (or the error
 * class given) otherwise.
 *
 * @example
 * ```ts
 * import { checkLimit } from "./limit_changes.ts";
 * checkLimit(5); // 5
 * ```
 */
export function checkLimit(
  limit: number,
  error: new (message: string) => Error = TypeError,
): number {
  if (!Number.isSafeInteger(limit)) throw new error(`Limit must be an integer, got ${limit}`);
  return limit;
}

/**
 * The normal form of a host pattern (`host`, `host:port` or `*.suffix`);
 * throws a TypeError naming it when it is none.
 *
 * @example
 * ```ts
 * import { checkHostPattern } from "./limit_changes.ts";
 * checkHostPattern("API.example.com"); // "api.example.com"
 * ```
 */
export function checkHostPattern(host: string): string {
  try {
    return parseHostPattern(host);
  } catch (err) {
    throw new TypeError(`Host ${JSON.stringify(host)} ${(err as Error).message}`);
  }
}

/**
 * Checks every entry of `changes`, in order, before anything is applied:
 * throws a TypeError on the first invalid pattern or limit. A default below
 * 0 becomes 0; a host limit of 0 or less removes the host's entry.
 *
 * @example
 * ```ts
 * import { checkChanges } from "./limit_changes.ts";
 * checkChanges({ default: -1, hosts: { "A.example": 0 } });
 * // { default: 0, hosts: Map { "a.example" => null } }
 * ```
 */
export function checkChanges(changes: FleetLimitChanges): CheckedChanges {
  const out: CheckedChanges = { hosts: new Map() };
  const def = changes.default;
  if (def !== undefined) out.default = def === null ? null : Math.max(0, checkLimit(def));
  for (const [host, rule] of Object.entries(changes.hosts ?? {})) {
    const pattern = checkHostPattern(host);
    if (rule === null || typeof rule === "number") {
      out.hosts.set(pattern, rule === null || checkLimit(rule) <= 0 ? null : rule);
      continue;
    }
    // A rule with settings, checked as the rules check it (a RulesError names the problem).
    normalizeRules({ hosts: { [pattern]: rule } });
    out.hosts.set(pattern, rule);
  }
  return out;
}

/**
 * `rules` (a default and host limits, as the fleet's table holds them) with
 * checked changes applied, in canonical form.
 *
 * @example
 * ```ts
 * import { applyChanges, checkChanges } from "./limit_changes.ts";
 * applyChanges({ hosts: { "a.example": 1 } }, checkChanges({ hosts: { "a.example": null } }));
 * // {}
 * ```
 */
export function applyChanges(rules: LimitRules, changes: CheckedChanges): LimitRules {
  const hosts = { ...canonicalRules(rules).hosts };
  for (const [pattern, rule] of changes.hosts) {
    if (rule === null) delete hosts[pattern];
    else hosts[pattern] = rule;
  }
  const next: LimitRules = { hosts };
  const def = changes.default === undefined ? rules.default : changes.default;
  if (def !== null && def !== undefined) next.default = def;
  return canonicalRules(next);
}
