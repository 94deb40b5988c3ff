/**
 * Limits out of rules and into them: the host limits and the default limit
 * rules set, and the rules that limits given as options or flags stand for.
 *
 * @module
 */

import { type HostRule, type LimitRules, parseHostPattern } from "./rules.ts";

/**
 * The limit of each host rule, by pattern as written (the queue settings
 * left out).
 *
 * @example
 * ```ts
 * import { hostLimits } from "./rule_limits.ts";
 * hostLimits({ hosts: { "a.example": 2, "b.example": { limit: 3, "queue-timeout": "5s" } } });
 * // { "a.example": 2, "b.example": 3 }
 * ```
 */
export function hostLimits(rules: LimitRules): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [pattern, rule] of Object.entries(rules.hosts ?? {})) {
    const limit = typeof rule === "number" ? rule : rule.limit;
    if (limit !== undefined) out[pattern] = limit;
  }
  return out;
}

/**
 * The default limit of rules, whether `default` is written as a number or
 * as a mapping; `undefined` when they set none.
 */
export function defaultLimit(rules: LimitRules): number | undefined {
  const rule = rules.default;
  return typeof rule === "object" ? rule.limit : rule;
}

/**
 * The rules that a default limit and per-host limits given as options or
 * flags stand for: there, 0 or less means unlimited for the default and "no
 * override" for a host, so a default below 0 becomes 0 and such hosts are
 * left out.
 *
 * @example
 * ```ts
 * import { rulesFromLimits } from "./rule_limits.ts";
 * rulesFromLimits({ defaultLimit: -1, hostLimits: { "a.example": 2, "b.example": 0 } });
 * // { default: 0, hosts: { "a.example": 2 } }
 * ```
 */
export function rulesFromLimits(
  options: {
    defaultLimit?: number;
    hostLimits?: Record<string, number>;
    hostRates?: Record<string, string>;
  },
): LimitRules {
  const rules: LimitRules = {};
  if (options.defaultLimit !== undefined) rules.default = Math.max(0, options.defaultLimit);
  const hosts: Record<string, number | HostRule> = Object.fromEntries(
    Object.entries(options.hostLimits ?? {}).filter(([, limit]) => limit > 0),
  );
  for (const [host, rate] of Object.entries(options.hostRates ?? {})) {
    // The same host may be spelt otherwise by its limit.
    const key = Object.keys(hosts).find((h) => parseHostPattern(h) === parseHostPattern(host));
    const limit = key === undefined ? undefined : hosts[key] as number;
    hosts[key ?? host] = limit === undefined ? { rate } : { limit, rate };
  }
  if (Object.keys(hosts).length) rules.hosts = hosts;
  return rules;
}
