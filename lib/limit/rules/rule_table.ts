/**
 * Compiled limit rules: the limit, group and queue settings of a host in
 * O(labels).
 *
 * @module
 */

import { HostIndex } from "./host_index.ts";
import { canonicalRules, type LimitRules, type NormalGroup, normalizeRules } from "./rules.ts";

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
  /**
   * Time a request over the limit waits for a slot, in milliseconds, when a
   * host rule or the group sets `queue-timeout`; else the process's setting
   * applies.
   */
  queueTimeout?: number;
  /**
   * Requests that may wait for this host in this process, when a host rule
   * or the group sets `queue-max`; else the process's setting applies.
   */
  queueMax?: number;
}

/**
 * Limit rules compiled for lookups: a map for exact patterns and a trie of
 * labels for wildcards, each pattern resolved in advance to its limit and
 * group, so a lookup is one walk of at most one map access per label of the
 * host, allocates nothing, and costs the same however many rules there are.
 * Immutable: to change the rules, compile a new table and swap it in.
 *
 * Precedence, for the host limit, each queue setting and (separately) for
 * the group: the exact `host:port`, then the exact host (any port), then the
 * longest matching wildcard suffix (`*.example.org` matches `a.example.org`
 * and `a.b.example.org`, not `example.org`), then the default (no group).
 * A queue setting no host rule gives comes from the host's group, if it
 * gives it; otherwise the lookup leaves it out (the process's applies).
 *
 * @example
 * ```ts
 * import { RuleTable } from "./rule_table.ts";
 *
 * const table = new RuleTable({
 *   default: 25,
 *   hosts: { "*.example.org": 10, "slow.example.org": { limit: 2, "queue-timeout": "30s" } },
 *   groups: [{ name: "storage", match: ["*.s3.amazonaws.com"], limit: 100, "queue-max": 50 }],
 * });
 * table.lookup("a.example.org"); // { limit: 10, group: undefined }
 * table.lookup("slow.example.org"); // { limit: 2, group: undefined, queueTimeout: 30000 }
 * table.lookup("example.org"); // { limit: 25, group: undefined }
 * table.lookup("b.s3.amazonaws.com");
 * // { limit: 25, group: { name: "storage", limit: 100 }, queueMax: 50 }
 * ```
 */
export class RuleTable {
  #rules: LimitRules;
  #default: Readonly<RuleMatch>;
  #index = new HostIndex<Readonly<RuleMatch>>();

  /**
   * Compiles rules. Throws a `RulesError` naming the first invalid rule.
   */
  constructor(rules: LimitRules = {}) {
    const n = normalizeRules(rules);
    this.#rules = canonicalRules(n);
    const limit = n.default ?? 0;
    this.#default = Object.freeze({ limit, group: undefined });
    const limits = new HostIndex<number>();
    const timeouts = new HostIndex<number>();
    const maxes = new HostIndex<number>();
    const groups = new HostIndex<[GroupMatch, NormalGroup]>();
    for (const [pattern, rule] of n.hosts) {
      limits.set(pattern, rule.limit);
      if (rule.queueTimeout !== undefined) timeouts.set(pattern, rule.queueTimeout);
      if (rule.queueMax !== undefined) maxes.set(pattern, rule.queueMax);
    }
    for (const group of n.groups) {
      const match: GroupMatch = Object.freeze({ name: group.name, limit: group.limit });
      for (const pattern of group.match) groups.set(pattern, [match, group]);
    }
    // Resolve every pattern once: a host whose most specific pattern is P
    // gets what a lookup of P itself finds (a wildcard `*.s` is looked up as
    // the key `*.s`, which only wildcards can match). One walk per lookup
    // then finds the limit, the group and the queue settings, with nothing
    // to allocate.
    for (const pattern of new Set([...n.hosts.keys(), ...n.groups.flatMap((g) => g.match)])) {
      const [group, groupRule] = groups.match(pattern) ?? [];
      const match: RuleMatch = { limit: limits.match(pattern) ?? limit, group };
      const queueTimeout = timeouts.match(pattern) ?? groupRule?.queueTimeout;
      if (queueTimeout !== undefined) match.queueTimeout = queueTimeout;
      const queueMax = maxes.match(pattern) ?? groupRule?.queueMax;
      if (queueMax !== undefined) match.queueMax = queueMax;
      this.#index.set(pattern, Object.freeze(match));
    }
  }

  /** The rules in canonical form (patterns normalised and sorted). */
  get rules(): LimitRules {
    return structuredClone(this.#rules);
  }

  /** The default limit; 0 is unlimited. */
  get defaultLimit(): number {
    return this.#default.limit;
  }

  /** The limit, group and queue settings of a host key (see `hostKey`). */
  lookup(key: string): Readonly<RuleMatch> {
    return this.#index.match(key) ?? this.#default;
  }
}
