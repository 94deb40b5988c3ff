/**
 * Limit rules as a typed object (the schema of the config file) and their
 * validation.
 *
 * @module
 */

import { hostKey, splitHostPort } from "../host_key.ts";

/**
 * A group: hosts that share one limit on their open connections together,
 * on top of each host's own limit.
 */
export interface GroupRule {
  /** The group's name: letters, digits, `.`, `_` or `-`. */
  name: string;
  /** Host patterns of the members: `host`, `host:port` or `*.suffix`. */
  match: string[];
  /** The open connections all members may hold together; 0 is unlimited. */
  limit: number;
}

/**
 * The limit rules: the same schema as the config file.
 *
 * @example
 * ```ts
 * import type { LimitRules } from "./rules.ts";
 *
 * const rules: LimitRules = {
 *   default: 25,
 *   hosts: { "api.example.com": 5, "*.example.org": 10, "cdn.example.net:8443": 2 },
 *   groups: [{ name: "storage", match: ["*.s3.amazonaws.com", "s3.amazonaws.com"], limit: 100 }],
 * };
 * ```
 */
export interface LimitRules {
  /** The limit of hosts no other rule matches; 0 (the default) is unlimited. */
  default?: number;
  /** Per-host limits by pattern (`host`, `host:port` or `*.suffix`); 0 is unlimited. */
  hosts?: Record<string, number>;
  /** Groups of hosts with a shared limit; a host belongs to at most one. */
  groups?: GroupRule[];
}

/** One step of the path to a value inside {@linkcode LimitRules}. */
export type RulePath = (string | number)[];

/**
 * Invalid limit rules. The message names the rule and the problem, as in
 * `hosts.api.example.com must be an integer >= 0`.
 */
export class RulesError extends TypeError {
  /** Where the problem is, such as `["hosts", "api.example.com"]`. */
  readonly path: RulePath;
  /** The problem is in a mapping key (a host pattern), not in its value. */
  readonly inKey: boolean;
  /** The message without the path. */
  readonly problem: string;

  /** Creates an error for the value at `path`. */
  constructor(path: RulePath, problem: string, options: { inKey?: boolean } = {}) {
    super(`${path.length ? formatRulePath(path) : "the rules"} ${problem}`);
    this.name = "RulesError";
    this.path = path;
    this.problem = problem;
    this.inKey = options.inKey ?? false;
  }
}

/**
 * Writes a rule path as `hosts.api.example.com` or `groups[0].match[1]`.
 */
export function formatRulePath(path: RulePath): string {
  let out = "";
  for (const step of path) {
    if (typeof step === "number") out += `[${step}]`;
    else {
      const name = /^[^\s"'[\]]+$/.test(step) ? step : JSON.stringify(step);
      out += out ? `.${name}` : name;
    }
  }
  return out;
}

const NAME = /^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$/;
const IPV6 = /^[0-9a-f:.]+$/;
const GROUP_NAME = /^[A-Za-z0-9._-]+$/;
const PATTERN_HELP = "must be a host, host:port or *.suffix (such as api.example.com, " +
  "cdn.example.net:8443 or *.example.org)";

/**
 * Normalises a host pattern: an exact `host` or `host:port` becomes its
 * host key (lower-case, port 80 or 443 dropped, IPv6 in brackets); a
 * wildcard becomes `*.suffix` in lower case. Throws a `TypeError` whose
 * message is the problem (`must be ...`, without the pattern) otherwise.
 *
 * @example
 * ```ts
 * import { parseHostPattern } from "./rules.ts";
 * parseHostPattern("API.example.com:443"); // "api.example.com"
 * parseHostPattern("*.Example.org"); // "*.example.org"
 * ```
 */
export function parseHostPattern(pattern: string): string {
  const text = pattern.trim().toLowerCase().replace(/\.$/, "");
  if (text.startsWith("*.")) {
    const suffix = text.slice(2);
    if (suffix.includes(":")) throw new TypeError("is a wildcard, which takes no port");
    if (!NAME.test(suffix)) throw new TypeError(PATTERN_HELP);
    return `*.${suffix}`;
  }
  if (text === "*") throw new TypeError("matches every host: set default instead");
  if (text.includes("*")) {
    throw new TypeError("must have its wildcard as a whole first label, as in *.example.org");
  }
  const { hostname, port } = splitHostPort(text);
  const ipv6 = hostname.includes(":");
  if (!ipv6 && text.includes(":") && !/^[0-9]{1,5}$/.test(port)) throw new TypeError(PATTERN_HELP);
  if (port !== "" && (!/^[0-9]{1,5}$/.test(port) || +port < 1 || +port > 65535)) {
    throw new TypeError("must have a port between 1 and 65535");
  }
  const name = hostname.replace(/\.$/, "");
  if (ipv6 ? !IPV6.test(name) : !NAME.test(name)) throw new TypeError(PATTERN_HELP);
  return hostKey(text);
}

/** Validated rules with normalised patterns. */
export interface NormalRules {
  /** The default limit. */
  default: number | undefined;
  /** Limits by normalised pattern. */
  hosts: Map<string, number>;
  /** Groups, their patterns normalised. */
  groups: GroupRule[];
}

const RULE_FIELDS = ["default", "hosts", "groups"];
const GROUP_FIELDS = ["name", "match", "limit"];

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return value.length ? "a list" : "an empty list";
  if (value === null) return "nothing";
  if (typeof value === "object") return "a mapping";
  return String(value);
}

function checkLimit(value: unknown, path: RulePath): number {
  if (!Number.isSafeInteger(value) || (value as number) < 0) {
    throw new RulesError(path, `must be an integer >= 0, got ${describe(value)}`);
  }
  return value as number;
}

/**
 * Checks rules and normalises their patterns. Throws a
 * {@linkcode RulesError} naming the first problem.
 */
export function normalizeRules(value: unknown): NormalRules {
  if (!isRecord(value)) {
    throw new RulesError([], `must be a mapping, got ${describe(value)}`);
  }
  for (const field of Object.keys(value)) {
    if (!RULE_FIELDS.includes(field)) {
      throw new RulesError([field], `is not a rule field (${RULE_FIELDS.join(", ")})`, {
        inKey: true,
      });
    }
  }
  const out: NormalRules = { default: undefined, hosts: new Map(), groups: [] };
  if (value.default !== undefined) out.default = checkLimit(value.default, ["default"]);

  if (value.hosts !== undefined) {
    if (!isRecord(value.hosts)) {
      throw new RulesError(
        ["hosts"],
        `must be a mapping of host to limit, got ${describe(value.hosts)}`,
      );
    }
    const seen = new Map<string, string>();
    for (const [pattern, limit] of Object.entries(value.hosts)) {
      const path = ["hosts", pattern];
      const key = checkPattern(pattern, path);
      const first = seen.get(key);
      if (first !== undefined) {
        throw new RulesError(path, `is the same rule as hosts.${first}`, { inKey: true });
      }
      seen.set(key, pattern);
      out.hosts.set(key, checkLimit(limit, path));
    }
  }

  if (value.groups !== undefined) {
    if (!Array.isArray(value.groups)) {
      throw new RulesError(["groups"], `must be a list of groups, got ${describe(value.groups)}`);
    }
    const names = new Map<string, number>();
    const members = new Map<string, string>();
    value.groups.forEach((group: unknown, i: number) => {
      const at = ["groups", i];
      if (!isRecord(group)) {
        throw new RulesError(at, `must be a mapping with name, match and limit`);
      }
      for (const field of Object.keys(group)) {
        if (!GROUP_FIELDS.includes(field)) {
          throw new RulesError(
            [...at, field],
            `is not a group field (${GROUP_FIELDS.join(", ")})`,
            {
              inKey: true,
            },
          );
        }
      }
      const { name, match, limit } = group;
      if (typeof name !== "string" || !GROUP_NAME.test(name)) {
        throw new RulesError(
          [...at, "name"],
          `must be a name of letters, digits, '.', '_' or '-', got ${describe(name)}`,
        );
      }
      const twin = names.get(name);
      if (twin !== undefined) {
        throw new RulesError([...at, "name"], `is ${name}, already the name of groups[${twin}]`);
      }
      names.set(name, i);
      if (!Array.isArray(match) || match.length === 0) {
        throw new RulesError(
          [...at, "match"],
          `must be a non-empty list of host patterns, got ${describe(match)}`,
        );
      }
      const patterns = match.map((pattern: unknown, j: number) => {
        const path = [...at, "match", j];
        if (typeof pattern !== "string") {
          throw new RulesError(path, `must be a host pattern, got ${describe(pattern)}`);
        }
        const key = checkPattern(pattern, path);
        const owner = members.get(key);
        if (owner !== undefined) {
          throw new RulesError(
            path,
            `is ${key}, already matched by group ${owner}: a host belongs to one group at most`,
          );
        }
        members.set(key, name);
        return key;
      });
      out.groups.push({ name, match: patterns, limit: checkLimit(limit, [...at, "limit"]) });
    });
  }
  return out;
}

function checkPattern(pattern: string, path: RulePath): string {
  try {
    return parseHostPattern(pattern);
  } catch (err) {
    throw new RulesError(path, (err as Error).message, { inKey: path[0] === "hosts" });
  }
}

/**
 * Checks that a value is valid {@linkcode LimitRules}; returns it typed.
 * Throws a {@linkcode RulesError} naming the first problem.
 *
 * @example
 * ```ts
 * import { validateRules } from "./rules.ts";
 * validateRules({ default: 25, hosts: { "api.example.com": 5 } });
 * ```
 */
export function validateRules(value: unknown): LimitRules {
  normalizeRules(value);
  return value as LimitRules;
}

/**
 * The rules in canonical form: patterns normalised, hosts and group members
 * sorted, groups sorted by name. Two rule sets that mean the same have the
 * same canonical form (and the same `JSON.stringify`).
 */
export function canonicalRules(rules: LimitRules | NormalRules): LimitRules {
  const n = rules.hosts instanceof Map ? rules as NormalRules : normalizeRules(rules);
  const out: LimitRules = {};
  if (n.default !== undefined) out.default = n.default;
  if (n.hosts.size) {
    out.hosts = Object.fromEntries([...n.hosts].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0));
  }
  if (n.groups.length) {
    out.groups = [...n.groups]
      .sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
      .map((g) => ({ name: g.name, match: [...g.match].sort(), limit: g.limit }));
  }
  return out;
}

/**
 * Layers rule sets, lowest first: a higher layer replaces a lower one's
 * default, its limit for the same host pattern, and (when it has groups)
 * all groups. Patterns are compared normalised. The result is canonical.
 *
 * @example
 * ```ts
 * import { layerRules } from "./rules.ts";
 * const flags = { default: 10, hosts: { "a.example": 1 } };
 * const file = { hosts: { "A.example:443": 2 } };
 * layerRules(flags, file); // { default: 10, hosts: { "a.example": 2 } }
 * ```
 */
export function layerRules(...layers: LimitRules[]): LimitRules {
  const out: NormalRules = { default: undefined, hosts: new Map(), groups: [] };
  for (const layer of layers) {
    const n = normalizeRules(layer);
    if (n.default !== undefined) out.default = n.default;
    for (const [key, limit] of n.hosts) out.hosts.set(key, limit);
    if (layer.groups !== undefined) out.groups = n.groups;
  }
  return canonicalRules(out);
}

/**
 * The rules that a default limit and per-host limits given as options or
 * flags stand for: there, 0 or less means unlimited for the default and "no
 * override" for a host, so a default below 0 becomes 0 and such hosts are
 * left out.
 *
 * @example
 * ```ts
 * import { rulesFromLimits } from "./rules.ts";
 * rulesFromLimits({ defaultLimit: -1, hostLimits: { "a.example": 2, "b.example": 0 } });
 * // { default: 0, hosts: { "a.example": 2 } }
 * ```
 */
export function rulesFromLimits(
  options: { defaultLimit?: number; hostLimits?: Record<string, number> },
): LimitRules {
  const rules: LimitRules = {};
  if (options.defaultLimit !== undefined) rules.default = Math.max(0, options.defaultLimit);
  const hosts = Object.entries(options.hostLimits ?? {}).filter(([, limit]) => limit > 0);
  if (hosts.length) rules.hosts = Object.fromEntries(hosts);
  return rules;
}
