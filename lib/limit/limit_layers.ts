/**
 * The limits in effect, each with the layer it comes from: what
 * `GET /api/limits` shows.
 *
 * @module
 */

import { canonicalRules, type LimitRules } from "./rules/rules.ts";
import { defaultLimit, hostLimits } from "./rules/rule_limits.ts";

/**
 * Where a limit comes from, lowest layer first: the command line's flags,
 * the config file (or the `rules` option), the runtime table (the admin API
 * and `setFleetLimits()`; the fleet's, in distributed mode) and this
 * process's overrides (`setHostLimit()` and co. of the module API).
 * `built-in` is the default limit when no layer sets one.
 */
export type LimitSource = "flag" | "file" | "runtime" | "override" | "built-in";

/** One layer of limit rules. */
export interface LimitLayer {
  /** Where the rules come from. */
  source: Exclude<LimitSource, "built-in">;
  /** The layer's own rules. */
  rules: LimitRules;
}

/** The limits in effect, each with its source, and every layer's own rules. */
export interface LimitsView {
  /** The default limit in effect; 0 is unlimited. */
  default: number;
  /** The host limits in effect, by normalised pattern; 0 is unlimited. */
  hosts: Record<string, number>;
  /** The group limits in effect, by group name. */
  groups: Record<string, number>;
  /** The layer each value in effect comes from. */
  sources: {
    /** Of the default limit. */
    default: LimitSource;
    /** Of each host limit, by pattern. */
    hosts: Record<string, LimitSource>;
    /** Of each group limit, by name. */
    groups: Record<string, LimitSource>;
  };
  /** Each layer's own rules, in canonical form, by source. */
  layers: Partial<Record<LimitSource, LimitRules>>;
}

/**
 * Layers the rules, lowest first, as the proxy does: a higher layer replaces
 * a lower one's default and its limit for the same pattern, and the highest
 * layer with groups gives all groups.
 *
 * @example
 * ```ts
 * import { limitsView } from "./limit_layers.ts";
 * const view = limitsView([
 *   { source: "file", rules: { default: 5, hosts: { "a.example": 2 } } },
 *   { source: "runtime", rules: { hosts: { "a.example": 3 } } },
 * ]);
 * // view.hosts: { "a.example": 3 }, view.sources.hosts: { "a.example": "runtime" }
 * ```
 */
export function limitsView(layers: readonly LimitLayer[]): LimitsView {
  const view: LimitsView = {
    default: 0,
    hosts: {},
    groups: {},
    sources: { default: "built-in", hosts: {}, groups: {} },
    layers: {},
  };
  for (const { source, rules } of layers) {
    const canonical = canonicalRules(rules);
    view.layers[source] = canonical;
    const limit = defaultLimit(canonical);
    if (limit !== undefined) {
      view.default = limit;
      view.sources.default = source;
    }
    for (const [pattern, limit] of Object.entries(hostLimits(canonical))) {
      view.hosts[pattern] = limit;
      view.sources.hosts[pattern] = source;
    }
    if (rules.groups !== undefined) {
      view.groups = {};
      view.sources.groups = {};
      for (const group of canonical.groups ?? []) {
        view.groups[group.name] = group.limit;
        view.sources.groups[group.name] = source;
      }
    }
  }
  view.hosts = sorted(view.hosts);
  view.sources.hosts = sorted(view.sources.hosts);
  return view;
}

function sorted<T>(record: Record<string, T>): Record<string, T> {
  return Object.fromEntries(
    Object.entries(record).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0),
  );
}
