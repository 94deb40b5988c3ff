/**
 * Compiled limit rules: the limit and group of a host in O(labels).
 *
 * @module
 */

import { HostIndex } from "./host_index.ts";
import { canonicalRules, type LimitRules, normalizeRules } from "./rules.ts";

/** The group a host belongs to, as a lookup returns it. */
export interface GroupMatch {
  /** The group's name. */
  readonly name: string;
  /** The open connections all members may hold together; 0 is unlimited. */
  readonly limit: number;
}

/** What the rules say about one host. */
export interface RuleMatch {
  /** The host's own limit; 0 is unlimited. */
  limit: number;
  /** The group the host belongs to, if any. */
  group?: GroupMatch;
}

/**
 * Limit rules compiled for lookups: a map for exact patterns and a map of
 * wildcard suffixes, so a lookup costs one map access per label of the host
 * however many rules there are. Immutable: to change the rules, compile a
 * new table and swap it in.
 *
 * Precedence, for the host limit and (separately) for the group: the exact
 * `host:port`, then the exact host (any port), then the longest matching
 * wildcard suffix (`*.example.org` matches `a.example.org` and
 * `a.b.example.org`, not `example.org`), then the default (no group).
 *
 * @example
 * ```ts
 * import { RuleTable } from "./rule_table.ts";
 *
 * const table = new RuleTable({
 *   default: 25,
 *   hosts: { "*.example.org": 10 },
 *   groups: [{ name: "storage", match: ["*.s3.amazonaws.com"], limit: 100 }],
 * });
 * table.lookup("a.example.org"); // { limit: 10, group: undefined }
 * table.lookup("b.s3.amazonaws.com"); // { limit: 25, group: { name: "storage", limit: 100 } }
 * ```
 */
export class RuleTable {
  #rules: LimitRules;
  #default: number;
  #hosts = new HostIndex<number>();
  #groups = new HostIndex<GroupMatch>();

  /**
   * Compiles rules. Throws a `RulesError` naming the first invalid rule.
   */
  constructor(rules: LimitRules = {}) {
    const n = normalizeRules(rules);
    this.#rules = canonicalRules(n);
    this.#default = n.default ?? 0;
    for (const [pattern, limit] of n.hosts) this.#hosts.set(pattern, limit);
    for (const group of n.groups) {
      const match: GroupMatch = Object.freeze({ name: group.name, limit: group.limit });
      for (const pattern of group.match) this.#groups.set(pattern, match);
    }
  }

  /** The rules in canonical form (patterns normalised and sorted). */
  get rules(): LimitRules {
    return structuredClone(this.#rules);
  }

  /** The default limit; 0 is unlimited. */
  get defaultLimit(): number {
    return this.#default;
  }

  /** The limit of the most specific host rule matching `key`, if any. */
  hostLimit(key: string): number | undefined {
    return this.#hosts.match(key);
  }

  /** The group of the most specific group pattern matching `key`, if any. */
  group(key: string): GroupMatch | undefined {
    return this.#groups.match(key);
  }

  /** The limit and group of a host key (see `hostKey`). */
  lookup(key: string): RuleMatch {
    return {
      limit: this.#hosts.match(key) ?? this.#default,
      group: this.#groups.size ? this.#groups.match(key) : undefined,
    };
  }
}
