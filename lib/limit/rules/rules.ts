/**
 * Limit rules as a typed object (the schema of the config file) and their
 * validation.
 *
 * @module
 */

import { formatDuration, parseDuration } from "../../duration.ts";
import { formatRate, parseRate } from "../gcra.ts";
import { hostKey, splitHostPort } from "../host_key.ts";
import { parseVia } from "../../proxy/parent_url.ts";

/**
 * The settings a rule may give the hosts it matches besides their limit,
 * under the names of the flags they override (`--queue-timeout`,
 * `--queue-max`, `--max-rate`, `--retry-after-max`).
 */
export interface RuleSettings {
  /**
   * Time a request over the limit waits for a slot: a duration as the flag
   * takes it (`500ms`, `10s`, `2m`; a bare number is seconds); 0 refuses at
   * once.
   */
  "queue-timeout"?: string | number;
  /** Requests that may wait per host in each process, from 0 to 1000000. */
  "queue-max"?: number;
  /**
   * New upstream requests (plain HTTP) and tunnels (CONNECT) per unit of
   * time, across the fleet: `10/s`, `600/m` or `3600/h`. A host rule's rate
   * is each matching host's own; a group's is shared by its members.
   */
  rate?: string;
  /**
   * The longest pause a host's `Retry-After` (on a 429 or 503) may ask for,
   * a duration; 0 honours none.
   */
  "retry-after-max"?: string | number;
  /**
   * Whether the hosts' limit adapts to what they serve (`--adaptive`): it
   * moves between `--adaptive-min` and the rule's limit, the ceiling.
   */
  adaptive?: boolean;
  /**
   * The parent proxy or proxies the hosts' connections go through: `direct`
   * (none), or `http://` or `https://` URLs without credentials (a parent
   * given with credentials by `--upstream-proxy` uses them). Left out, the
   * `--upstream-proxy` parents, if any.
   */
  via?: string | string[];
}

/**
 * A host rule in full: its limit and the settings for the hosts it
 * matches. A plain number is a rule with a limit alone.
 */
export interface HostRule extends RuleSettings {
  /**
   * The open connections each matching host may hold; 0 is unlimited. Left
   * out, the limit comes from a lower layer's rule or the default.
   */
  limit?: number;
}

/** The default rule in full: the limit and settings of hosts no other rule matches. */
export interface DefaultRule extends RuleSettings {
  /** The limit; 0 (the default) is unlimited. */
  limit?: number;
}

/**
 * A group: hosts that share one limit on their open connections together,
 * on top of each host's own limit.
 */
export interface GroupRule extends RuleSettings {
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
 *   hosts: {
 *     "api.example.com": 5,
 *     "*.example.org": 10,
 *     "cdn.example.net:8443": 2,
 *     "slow.example.com": { limit: 2, "queue-timeout": "30s", "queue-max": 50 },
 *   },
 *   groups: [{ name: "storage", match: ["*.s3.amazonaws.com", "s3.amazonaws.com"], limit: 100 }],
 * };
 * ```
 */
export interface LimitRules {
  /**
   * The limit of hosts no other rule matches (0, the default, is
   * unlimited), or a {@linkcode DefaultRule} with settings too.
   */
  default?: number | DefaultRule;
  /**
   * Per-host rules by pattern (`host`, `host:port` or `*.suffix`): a limit
   * (0 is unlimited), or a {@linkcode HostRule} with queue settings too.
   */
  hosts?: Record<string, number | HostRule>;
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

/** Settings a rule gives, validated. */
export interface NormalSettings {
  /** Time a request waits for a slot, in milliseconds. */
  queueTimeout?: number;
  /** Requests that may wait per host in each process. */
  queueMax?: number;
  /** New requests or tunnels per second. */
  rate?: number;
  /** The longest pause a `Retry-After` may ask for, in milliseconds. */
  retryAfterMax?: number;
  /** Whether the limit adapts. */
  adaptive?: boolean;
  /** `direct`, or the parents' origins joined by commas. */
  via?: string;
}

/** A validated host rule. */
export interface NormalHostRule extends NormalSettings {
  /** The limit; 0 is unlimited; `undefined`: the default's. */
  limit?: number;
}

/** A validated group, its patterns normalised. */
export interface NormalGroup extends NormalSettings {
  /** The group's name. */
  name: string;
  /** Normalised patterns of the members. */
  match: string[];
  /** The limit of all members together; 0 is unlimited. */
  limit: number;
}

/** Validated rules with normalised patterns. */
export interface NormalRules {
  /** The default limit. */
  default: number | undefined;
  /** The default's settings. */
  defaults: NormalSettings;
  /** Host rules by normalised pattern. */
  hosts: Map<string, NormalHostRule>;
  /** Groups, their patterns normalised. */
  groups: NormalGroup[];
}

const RULE_FIELDS = ["default", "hosts", "groups"];
const SETTING_FIELDS = [
  "queue-timeout",
  "queue-max",
  "rate",
  "retry-after-max",
  "adaptive",
  "via",
];
const HOST_FIELDS = ["limit", ...SETTING_FIELDS];
const GROUP_FIELDS = ["name", "match", "limit", ...SETTING_FIELDS];
/** The largest `queue-max`, as for the flag. */
const QUEUE_MAX = 1_000_000;

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

/** Reads the duration of setting `field` at `path`, in milliseconds. */
function checkDuration(value: unknown, path: RulePath): number {
  let ms = NaN;
  if (typeof value === "string" || typeof value === "number") {
    try {
      ms = parseDuration(String(value));
    } catch {
      // Reported below.
    }
  }
  if (!Number.isSafeInteger(ms)) {
    throw new RulesError(
      path,
      `must be a duration such as 500ms, 10s or 2m, got ${describe(value)}`,
    );
  }
  return ms;
}

/** Checks the settings of a rule or group at `path`. */
function checkSettings(rule: Record<string, unknown>, path: RulePath): NormalSettings {
  const out: NormalSettings = {};
  const timeout = rule["queue-timeout"];
  if (timeout !== undefined) out.queueTimeout = checkDuration(timeout, [...path, "queue-timeout"]);
  const max = rule["queue-max"];
  if (max !== undefined) {
    if (!Number.isSafeInteger(max) || (max as number) < 0 || (max as number) > QUEUE_MAX) {
      throw new RulesError(
        [...path, "queue-max"],
        `must be an integer between 0 and ${QUEUE_MAX}, got ${describe(max)}`,
      );
    }
    out.queueMax = max as number;
  }
  const rate = rule.rate;
  if (rate !== undefined) {
    try {
      if (typeof rate !== "string") throw new TypeError();
      out.rate = parseRate(rate);
    } catch {
      throw new RulesError(
        [...path, "rate"],
        `must be a rate such as 10/s, 600/m or 3600/h, got ${describe(rate)}`,
      );
    }
  }
  const pause = rule["retry-after-max"];
  if (pause !== undefined) out.retryAfterMax = checkDuration(pause, [...path, "retry-after-max"]);
  const adaptive = rule.adaptive;
  if (adaptive !== undefined) {
    if (typeof adaptive !== "boolean") {
      throw new RulesError(
        [...path, "adaptive"],
        `must be true or false, got ${describe(adaptive)}`,
      );
    }
    out.adaptive = adaptive;
  }
  if (rule.via !== undefined) out.via = checkVia(rule.via, [...path, "via"]);
  return out;
}

/** Checks a `via` ({@linkcode parseVia}); returns it normalised. */
function checkVia(value: unknown, path: RulePath): string {
  try {
    return parseVia(value);
  } catch (err) {
    throw new RulesError(path, (err as Error).message);
  }
}

/** Checks that `value` has only `fields`, naming them as a `what` field. */
function checkFields(
  value: Record<string, unknown>,
  fields: string[],
  what: string,
  path: RulePath,
) {
  for (const field of Object.keys(value)) {
    if (!fields.includes(field)) {
      throw new RulesError(
        [...path, field],
        `is not a ${what} field (${fields.join(", ")})`,
        { inKey: true },
      );
    }
  }
}

/**
 * Checks a host rule or the default: a limit, or a mapping of a limit
 * (which a host rule with settings may leave out) and settings.
 */
function checkHostRule(value: unknown, path: RulePath): NormalHostRule {
  if (!isRecord(value)) return { limit: checkLimit(value, path) };
  checkFields(value, HOST_FIELDS, path[0] === "default" ? "default" : "host rule", path);
  const out = checkSettings(value, path);
  if (value.limit === undefined && Object.keys(out).length === 0) {
    throw new RulesError([...path, "limit"], "must be an integer >= 0, got nothing");
  }
  return value.limit === undefined
    ? out
    : { limit: checkLimit(value.limit, [...path, "limit"]), ...out };
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
  const out: NormalRules = { default: undefined, defaults: {}, hosts: new Map(), groups: [] };
  if (value.default !== undefined) {
    const { limit, ...settings } = checkHostRule(value.default, ["default"]);
    out.default = limit;
    out.defaults = settings;
  }

  if (value.hosts !== undefined) checkHosts(value.hosts, out.hosts);
  if (value.groups !== undefined) checkGroups(value.groups, out.groups);
  return out;
}

/** Checks the `hosts` rules into `out`, keyed by normalised pattern. */
function checkHosts(raw: unknown, out: NormalRules["hosts"]): void {
  if (!isRecord(raw)) {
    throw new RulesError(
      ["hosts"],
      `must be a mapping of host to limit, got ${describe(raw)}`,
    );
  }
  const hosts = raw;
  for (const pattern of Object.keys(hosts)) {
    const path = ["hosts", pattern];
    const key = checkPattern(pattern, path);
    if (out.has(key)) {
      // The first spelling of the same rule, looked for only on this error.
      const first = Object.keys(hosts).find((p) => parseHostPattern(p) === key);
      throw new RulesError(path, `is the same rule as hosts.${first}`, { inKey: true });
    }
    out.set(key, checkHostRule(hosts[pattern], path));
  }
}

/** Checks the `groups` rules into `out`. */
function checkGroups(raw: unknown, out: NormalRules["groups"]): void {
  if (!Array.isArray(raw)) {
    throw new RulesError(["groups"], `must be a list of groups, got ${describe(raw)}`);
  }
  const names = new Map<string, number>();
  const members = new Map<string, string>();
  raw.forEach((group: unknown, i: number) => {
    const at = ["groups", i];
    if (!isRecord(group)) {
      throw new RulesError(at, `must be a mapping with name, match and limit`);
    }
    checkFields(group, GROUP_FIELDS, "group", at);
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
    out.push({
      name,
      match: patterns,
      limit: checkLimit(limit, [...at, "limit"]),
      ...checkSettings(group, at),
    });
  });
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

/** Settings as the rules write them: durations and rates in their shortest form. */
function settingFields(q: NormalSettings): RuleSettings {
  const out: RuleSettings = {};
  if (q.queueTimeout !== undefined) out["queue-timeout"] = formatDuration(q.queueTimeout);
  if (q.queueMax !== undefined) out["queue-max"] = q.queueMax;
  if (q.rate !== undefined) out.rate = formatRate(q.rate);
  if (q.retryAfterMax !== undefined) out["retry-after-max"] = formatDuration(q.retryAfterMax);
  if (q.adaptive !== undefined) out.adaptive = q.adaptive;
  if (q.via !== undefined) out.via = q.via.includes(",") ? q.via.split(",") : q.via;
  return out;
}

/** A host rule or the default as the rules write it: a number when it is a limit alone. */
function ruleField(rule: NormalHostRule): number | HostRule {
  const settings = settingFields(rule);
  if (Object.keys(settings).length === 0 && rule.limit !== undefined) return rule.limit;
  return rule.limit === undefined ? settings : { limit: rule.limit, ...settings };
}

/**
 * The rules in canonical form: patterns normalised, hosts and group members
 * sorted, groups sorted by name, a host rule without queue settings written
 * as its limit and `queue-timeout` as the shortest duration (`30s`). Two
 * rule sets that mean the same have the same canonical form (and the same
 * `JSON.stringify`).
 */
export function canonicalRules(rules: LimitRules | NormalRules): LimitRules {
  const n = rules.hosts instanceof Map ? rules as NormalRules : normalizeRules(rules);
  const out: LimitRules = {};
  if (n.default !== undefined || Object.keys(n.defaults).length) {
    out.default = ruleField({ limit: n.default, ...n.defaults });
  }
  if (n.hosts.size) {
    out.hosts = Object.fromEntries(
      [...n.hosts]
        .sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
        .map(([pattern, rule]) => [pattern, ruleField(rule)]),
    );
  }
  if (n.groups.length) {
    out.groups = [...n.groups]
      .sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
      .map((g) => ({
        name: g.name,
        match: [...g.match].sort(),
        limit: g.limit,
        ...settingFields(g),
      }));
  }
  return out;
}

/**
 * Layers rule sets, lowest first: a higher layer replaces a lower one's
 * default, its limit for the same host pattern (and each queue setting the
 * higher rule sets, the others kept), and (when it has groups) all groups.
 * Patterns are compared normalised. The result is canonical.
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
  const out: NormalRules = { default: undefined, defaults: {}, hosts: new Map(), groups: [] };
  for (const layer of layers) {
    const n = normalizeRules(layer);
    if (n.default !== undefined) out.default = n.default;
    out.defaults = { ...out.defaults, ...n.defaults };
    for (const [key, rule] of n.hosts) out.hosts.set(key, { ...out.hosts.get(key), ...rule });
    if (layer.groups !== undefined) out.groups = n.groups;
  }
  return canonicalRules(out);
}
