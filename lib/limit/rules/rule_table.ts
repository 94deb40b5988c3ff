/**
 * Compiled limit rules: the limit, group and queue settings of a host in
 * O(labels).
 *
 * @module
 */

import { HostIndex } from "./host_index.ts";
import { PackedIndex, type PackedIndexData, packPatterns } from "./packed_index.ts";
import {
  canonicalRules,
  type LimitRules,
  type NormalGroup,
  normalizeRules,
  type NormalSettings,
} from "./rules.ts";

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
  /** The request rate, when a host rule, the group or the default sets `rate`. */
  rate?: RateMatch;
  /**
   * The longest pause a `Retry-After` may ask for, in milliseconds, when a
   * host rule, the group or the default sets `retry-after-max`; else the
   * process's setting applies.
   */
  retryAfterMax?: number;
  /**
   * Whether the limit adapts, when a host rule, the group or the default
   * sets `adaptive`; else the process's setting applies.
   */
  adaptive?: boolean;
  /**
   * `direct`, or the origins (comma-separated) of the parent proxies the
   * host's connections go through, when a host rule, the group or the
   * default sets `via`; else the `--upstream-proxy` parents, if any.
   */
  via?: string;
}

/** A request rate as a lookup returns it. */
export interface RateMatch {
  /** New upstream requests or tunnels per second. */
  readonly perSecond: number;
  /** The group whose members share the rate; `undefined`: each host has its own. */
  readonly group?: string;
}

/**
 * What the table holds for a pattern: the match of a lookup, and the host
 * rule the limit comes from (its limit and how specific it is), for the
 * runtime overrides layered on top.
 */
interface Entry {
  readonly match: Readonly<RuleMatch>;
  /** The limit of the most specific host rule covering the pattern, if any. */
  readonly hostLimit: number | undefined;
  /** How specific that host rule is (see {@linkcode patternRank}). */
  readonly rank: number;
}

/**
 * A compiled table as plain data, for `structuredClone` and `postMessage`:
 * a table compiled in a `Worker` is adopted by the event loop's thread
 * with {@linkcode RuleTable.fromData}, without compiling again and without
 * an allocation per pattern. The patterns and their hash table are a
 * {@linkcode PackedIndexData} (one string crosses to another thread as one
 * copy, and the typed arrays' buffers can be transferred; an array of
 * 100,000 strings, or a map of them, takes as many allocations there).
 */
export interface RuleTableData extends PackedIndexData {
  /** The rules in canonical form, as JSON. */
  text: string;
  /** The default limit. */
  defaultLimit: number;
  /** The default's settings. */
  defaults: NormalSettings;
  /** For each pattern, its entry. */
  ids: Uint32Array;
  /** The distinct entries (few: patterns share them). */
  entries: Entry[];
}

/**
 * How specific a normalised pattern is, for the host it matches: a
 * `host:port` over a host over the longest wildcard suffix.
 *
 * @example
 * ```ts
 * import { patternRank } from "./rule_table.ts";
 * patternRank("a.example:8443") > patternRank("a.example"); // true
 * patternRank("a.example") > patternRank("*.b.a.example"); // true
 * patternRank("*.b.a.example") > patternRank("*.a.example"); // true
 * ```
 */
export function patternRank(pattern: string): number {
  if (pattern.startsWith("*.")) {
    let labels = 0;
    for (let i = pattern.indexOf("."); i >= 0; i = pattern.indexOf(".", i + 1)) labels++;
    return labels;
  }
  return pattern.lastIndexOf(":") > pattern.lastIndexOf("]") ? 1e6 + 1 : 1e6;
}

/** The settings a lookup carries, as {@linkcode RuleMatch} names them. */
const SETTINGS = ["queueTimeout", "queueMax", "rate", "retryAfterMax", "adaptive", "via"] as const;

/** A setting's value in a {@linkcode RuleMatch}; a group's rate is shared. */
function settingOf(
  name: typeof SETTINGS[number],
  value: number | boolean | string | undefined,
  group?: string,
): number | boolean | string | RateMatch | undefined {
  if (typeof value !== "number" || name !== "rate") return value;
  return Object.freeze(group === undefined ? { perSecond: value } : { perSecond: value, group });
}

/** The match of hosts no rule matches: the default limit and settings. */
function defaultMatch(limit: number, defaults: NormalSettings): Readonly<RuleMatch> {
  const match: RuleMatch = { limit, group: undefined };
  for (const name of SETTINGS) {
    const value = settingOf(name, defaults[name]);
    if (value !== undefined) Object.assign(match, { [name]: value });
  }
  return Object.freeze(match);
}

/** Compiles rules; see {@linkcode RuleTable}. */
function compile(rules: LimitRules, canonical: boolean): RuleTableData {
  const n = normalizeRules(rules);
  const defaultLimit = n.default ?? 0;
  const limits = new HostIndex<[number, number]>();
  const settings = new Map(
    SETTINGS.map((name) => [name, new HostIndex<number | boolean | string>()]),
  );
  const groups = new HostIndex<[GroupMatch, NormalGroup]>();
  for (const [pattern, rule] of n.hosts) {
    if (rule.limit !== undefined) limits.set(pattern, [rule.limit, patternRank(pattern)]);
    for (const name of SETTINGS) {
      if (rule[name] !== undefined) settings.get(name)!.set(pattern, rule[name]);
    }
  }
  for (const group of n.groups) {
    const match: GroupMatch = Object.freeze({ name: group.name, limit: group.limit });
    for (const pattern of group.match) groups.set(pattern, [match, group]);
  }
  // Resolve every pattern once: a host whose most specific pattern is P
  // gets what a lookup of P itself finds (a wildcard `*.s` is looked up as
  // the key `*.s`, which only wildcards can match). One walk per lookup
  // then finds the limit, the group and the settings, with nothing to
  // allocate. Patterns that resolve alike share one entry.
  const patterns = [...new Set([...n.hosts.keys(), ...n.groups.flatMap((g) => g.match)])];
  const ids = new Uint32Array(patterns.length);
  const entries: Entry[] = [];
  const known = new Map<string, number>();
  patterns.forEach((pattern, i) => {
    // (An empty index is not asked: most files have no groups or settings.)
    const [group, groupRule] = (groups.size ? groups.match(pattern) : undefined) ?? [];
    const [hostLimit, rank] = limits.match(pattern) ?? [undefined, 0];
    const match: RuleMatch = { limit: hostLimit ?? defaultLimit, group };
    for (const name of SETTINGS) {
      const index = settings.get(name)!;
      const own = index.size ? index.match(pattern) : undefined;
      const value = own !== undefined
        ? settingOf(name, own)
        : groupRule?.[name] !== undefined
        ? settingOf(name, groupRule[name], groupRule.name)
        : settingOf(name, n.defaults[name]);
      if (value !== undefined) Object.assign(match, { [name]: value });
    }
    const key = JSON.stringify([hostLimit, rank, match]);
    let id = known.get(key);
    if (id === undefined) {
      known.set(key, id = entries.length);
      entries.push({ match: Object.freeze(match), hostLimit, rank });
    }
    ids[i] = id;
  });
  const text = JSON.stringify(canonical ? rules : canonicalRules(n));
  return { text, defaultLimit, defaults: n.defaults, ids, entries, ...packPatterns(patterns) };
}

/**
 * Limit rules compiled for lookups: the patterns packed in a hash table
 * (see {@linkcode PackedIndex}), each resolved in advance to its limit and
 * group, so a lookup hashes the key and each suffix of the host after a
 * dot once, allocates nothing, and costs the same however many rules there
 * are. Immutable: to change the rules, compile a new table and swap it in.
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
  #text!: string;
  #default!: Readonly<RuleMatch>;
  #index!: PackedIndex;
  #ids!: Uint32Array;
  #entries!: readonly Entry[];

  /**
   * Compiles rules. Throws a `RulesError` naming the first invalid rule.
   */
  constructor(rules: LimitRules = {}) {
    this.#adopt(compile(rules, false));
  }

  #adopt(data: RuleTableData): void {
    this.#text = data.text;
    this.#default = defaultMatch(data.defaultLimit, data.defaults);
    this.#index = new PackedIndex(data);
    this.#ids = data.ids;
    this.#entries = data.entries;
  }

  /**
   * Compiles rules into plain data (for a `Worker`); the table is
   * {@linkcode RuleTable.fromData}. With `canonical`, the rules are taken
   * to be in canonical form already (as `layerRules` returns them) and are
   * not sorted again. Throws a `RulesError` naming the first invalid rule.
   */
  static compile(rules: LimitRules, options: { canonical?: boolean } = {}): RuleTableData {
    return compile(rules, options.canonical ?? false);
  }

  /**
   * The buffers of compiled data's typed arrays, to transfer with
   * `postMessage` (the data can no longer be used where it was sent from).
   */
  static buffers(data: RuleTableData): ArrayBuffer[] {
    return [data.ids, data.starts, data.slots].map((array) => array.buffer as ArrayBuffer);
  }

  /**
   * The table of compiled data, wrapping its arrays: it allocates nothing
   * per pattern, so adopting a large table delays no request for long.
   */
  static fromData(data: RuleTableData): RuleTable {
    // A clone has lost the freezing of what lookups return.
    for (const entry of data.entries) {
      if (entry.match.group) Object.freeze(entry.match.group);
      if (entry.match.rate) Object.freeze(entry.match.rate);
      Object.freeze(entry.match);
    }
    const table = new RuleTable();
    table.#adopt(data);
    return table;
  }

  /** The rules in canonical form (patterns normalised and sorted). */
  get rules(): LimitRules {
    return JSON.parse(this.#text);
  }

  /** The rules in canonical form as JSON text. */
  get rulesText(): string {
    return this.#text;
  }

  /** The default limit; 0 is unlimited. */
  get defaultLimit(): number {
    return this.#default.limit;
  }

  /** The limit, group and queue settings of a host key (see `hostKey`). */
  lookup(key: string): Readonly<RuleMatch> {
    return this.#entry(key)?.match ?? this.#default;
  }

  #entry(key: string): Entry | undefined {
    const index = this.#index.match(key);
    return index < 0 ? undefined : this.#entries[this.#ids[index]];
  }

  /**
   * The limit of the most specific host rule matching a host key, with its
   * {@linkcode patternRank}; `undefined` when no host rule matches (a group
   * alone sets no host limit).
   */
  hostLimit(key: string): { limit: number; rank: number } | undefined {
    const entry = this.#entry(key);
    return entry?.hostLimit === undefined
      ? undefined
      : { limit: entry.hostLimit, rank: entry.rank };
  }
}
