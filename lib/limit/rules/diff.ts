/**
 * Differences between two rule sets, rule by rule.
 *
 * @module
 */

import {
  canonicalRules,
  type GroupRule,
  type HostRule,
  type LimitRules,
  type RuleSettings,
} from "./rules.ts";

/** One rule that differs between two rule sets. */
export interface RuleDifference {
  /** The rule: `default`, `hosts.<pattern>` or `groups.<name>`. */
  rule: string;
  /** The rule in the first set, as text; `undefined` when absent. */
  a: string | undefined;
  /** The rule in the second set, as text; `undefined` when absent. */
  b: string | undefined;
}

/** Canonical settings as text: ` (queue-timeout 30s, queue-max 50)`, or nothing. */
function settingsText(rule: RuleSettings): string {
  const parts = [];
  const names = ["queue-timeout", "queue-max", "rate", "retry-after-max", "adaptive", "via"];
  for (const name of names as (keyof RuleSettings)[]) {
    if (rule[name] !== undefined) parts.push(`${name} ${rule[name]}`);
  }
  return parts.length ? ` (${parts.join(", ")})` : "";
}

function hostText(rule: number | HostRule | undefined): string | undefined {
  if (rule === undefined || typeof rule === "number") return rule?.toString();
  return `${rule.limit ?? "default"}${settingsText(rule)}`;
}

function groupText(group: GroupRule | undefined): string | undefined {
  return group && `limit ${group.limit}${settingsText(group)} for ${group.match.join(", ")}`;
}

/**
 * The rules that differ between `a` and `b`, sorted by rule name; empty when
 * they mean the same (patterns are compared normalised, so
 * `API.example.com:443` and `api.example.com` are one rule, and `30s` and
 * `30000ms` one queue timeout). A host rule reads as its limit with its
 * queue settings in brackets (`2 (queue-timeout 30s, queue-max 50)`).
 * Throws a `RulesError` when either set is invalid.
 *
 * @example
 * ```ts
 * import { diffRules } from "./diff.ts";
 * diffRules({ default: 25, hosts: { "a.example": 5 } }, { default: 25 });
 * // [{ rule: "hosts.a.example", a: "5", b: undefined }]
 * ```
 */
export function diffRules(a: LimitRules, b: LimitRules): RuleDifference[] {
  return diffCanonicalRules(canonicalRules(a), canonicalRules(b));
}

/**
 * {@linkcode diffRules} of two rule sets already in canonical form (as
 * `canonicalRules` and `layerRules` return them), without putting them in
 * that form again.
 */
export function diffCanonicalRules(ca: LimitRules, cb: LimitRules): RuleDifference[] {
  const out: RuleDifference[] = [];
  const add = (rule: string, x: string | undefined, y: string | undefined) => {
    if (x !== y) out.push({ rule, a: x, b: y });
  };
  add("default", hostText(ca.default), hostText(cb.default));
  const hosts = new Set([...Object.keys(ca.hosts ?? {}), ...Object.keys(cb.hosts ?? {})]);
  for (const host of hosts) {
    add(`hosts.${host}`, hostText(ca.hosts?.[host]), hostText(cb.hosts?.[host]));
  }
  const ga = new Map((ca.groups ?? []).map((g) => [g.name, g]));
  const gb = new Map((cb.groups ?? []).map((g) => [g.name, g]));
  for (const name of new Set([...ga.keys(), ...gb.keys()])) {
    add(`groups.${name}`, groupText(ga.get(name)), groupText(gb.get(name)));
  }
  return out.sort((x, y) => x.rule < y.rule ? -1 : x.rule > y.rule ? 1 : 0);
}
