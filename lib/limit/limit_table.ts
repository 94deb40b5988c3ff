import { HostIndex } from "./rules/host_index.ts";
import { patternRank, type RuleMatch, RuleTable } from "./rules/rule_table.ts";
import { checkHostPattern, checkLimit } from "./limit_changes.ts";

/** Host keys whose {@linkcode LimitTable.lookup} answer is remembered at most; then it starts over. */
const KNOWN_MAX = 4096;

/**
 * The connection limits of one proxy: compiled rules (from the config file
 * and flags, see {@linkcode RuleTable}) with runtime overrides on top.
 *
 * A runtime override replaces the rules' limit for the same host pattern
 * (`host`, `host:port` or `*.suffix`) and a runtime default replaces the
 * rules' default; then the most specific pattern wins, as in the rules.
 * Groups and queue settings come from the rules alone. A limit of 0 or less
 * means unlimited.
 */
export class LimitTable {
  #rules = new RuleTable();
  #default: number | undefined;
  #own = new Map<string, number>();
  /** The overrides with their {@linkcode patternRank}, to weigh against the rules'. */
  #limits = new HostIndex<[number, number]>();
  /**
   * Answers of {@linkcode lookup} by host key (every request asks several
   * times), forgotten at any change of rules, default or overrides.
   */
  #known = new Map<string, Readonly<RuleMatch>>();

  /** Creates a table with a runtime default and runtime overrides. */
  constructor(defaultLimit?: number, hosts: Record<string, number> = {}) {
    if (defaultLimit !== undefined) this.defaultLimit = defaultLimit;
    this.replace(hosts);
  }

  /** The compiled rules under the runtime overrides. */
  get rules(): RuleTable {
    return this.#rules;
  }

  /**
   * Swaps in new rules at once (in constant time, however many rules);
   * runtime overrides stay on top.
   */
  set rules(table: RuleTable) {
    this.#rules = table;
    this.#known.clear();
  }

  /** The limit for hosts no rule or override matches. */
  get defaultLimit(): number {
    return this.#default ?? this.#rules.defaultLimit;
  }

  /** Sets the runtime default, which replaces the rules' default. */
  set defaultLimit(limit: number) {
    this.#default = checkLimit(limit, RangeError);
    this.#known.clear();
  }

  /** The runtime default, when one is set. */
  get ownDefault(): number | undefined {
    return this.#default;
  }

  /** Removes the runtime default: the rules' default applies again. */
  deleteDefault(): void {
    this.#default = undefined;
    this.#known.clear();
  }

  /** Sets one pattern's override; a limit of 0 or less removes it. */
  set(host: string, limit: number): void {
    checkLimit(limit, RangeError);
    const pattern = checkHostPattern(host);
    if (limit <= 0) return this.#remove(pattern);
    this.#own.set(pattern, limit);
    this.#limits.set(pattern, [limit, patternRank(pattern)]);
    this.#known.clear();
  }

  /** Removes one pattern's override: the rules apply to it again. */
  delete(host: string): void {
    this.#remove(checkHostPattern(host));
  }

  /** Replaces all overrides; entries of 0 or less are ignored. */
  replace(hosts: Record<string, number>): void {
    const next = new Map<string, number>();
    for (const [host, limit] of Object.entries(hosts)) {
      checkLimit(limit, RangeError);
      const pattern = checkHostPattern(host);
      if (limit > 0) next.set(pattern, limit);
    }
    this.#own = next;
    this.#rebuild();
  }

  /**
   * The limit that applies to an already normalised host key: of the most
   * specific pattern among the rules' host rules and the overrides (an
   * override winning over a rule of the same pattern), else the default.
   */
  limitFor(key: string): number {
    const own = this.#own.size ? this.#limits.match(key) : undefined;
    const rule = this.#rules.hostLimit(key);
    if (own && (!rule || own[1] >= rule.rank)) return own[0];
    return rule?.limit ?? this.#default ?? this.#rules.defaultLimit;
  }

  /**
   * The limit, group and queue settings that apply to an already normalised
   * host key; the queue settings come from the rules alone.
   */
  lookup(key: string): Readonly<RuleMatch> {
    let match = this.#known.get(key);
    if (match) return match;
    match = this.#rules.lookup(key);
    if (this.#own.size > 0 || this.#default !== undefined) {
      match = { ...match, limit: this.limitFor(key) };
    }
    if (this.#known.size >= KNOWN_MAX) this.#known.clear();
    this.#known.set(key, match);
    return match;
  }

  /** The runtime overrides, by normalised pattern. */
  entries(): Record<string, number> {
    return Object.fromEntries(this.#own);
  }

  #remove(pattern: string): void {
    this.#own.delete(pattern);
    this.#limits.delete(pattern);
    this.#known.clear();
  }

  #rebuild(): void {
    const limits = new HostIndex<[number, number]>();
    for (const [pattern, limit] of this.#own) limits.set(pattern, [limit, patternRank(pattern)]);
    this.#limits = limits;
    this.#known.clear();
  }
}
