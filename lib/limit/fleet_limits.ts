/**
 * The fleet's limit table in Redis: runtime limit changes shared by every
 * proxy of a fleet.
 *
 * @module
 */

import type { Cluster, Redis } from "ioredis";
import type { Logger } from "@logtape/logtape";
import type { HostRule, LimitRules } from "./rules/rules.ts";
import { canonicalRules, normalizeRules, parseHostPattern } from "./rules/rules.ts";
import { diffRules } from "./rules/diff.ts";
import { checkChanges, type FleetLimitChanges } from "./limit_changes.ts";
import { withTimeout } from "../with_timeout.ts";
import { RedisTimeoutError } from "./redis_errors.ts";
import { subscriber } from "./redis_client.ts";

/** Options of {@linkcode FleetLimits}. */
export interface FleetLimitsOptions {
  /** The limiter's Redis client (a duplicate subscribes). */
  client: Redis | Cluster;
  /** Prefix of the keys and channel. */
  prefix: string;
  /** Called with the whole table whenever its version changes. */
  onChange: (rules: LimitRules) => void;
  /** How often the version is checked, in milliseconds. */
  pollMs: number;
  /** How long a Redis call may take before it counts as failed, in milliseconds. */
  timeout: number;
  /** Where failures are logged. */
  logger: Logger;
}

/** The field of the default limit; no host pattern can be `*`. */
const DEFAULT_FIELD = "*";

/**
 * Keeps `<prefix>:limits` (hash: host pattern, or `*` for the default, to
 * limit) and `<prefix>:limits:v` (version counter): a change is written,
 * the version bumped and a notice published on `<prefix>:limits`; every
 * proxy reloads the table on the notice and, in case a notice is lost, when
 * its periodic check finds another version.
 */
export class FleetLimits {
  #o: FleetLimitsOptions;
  #sub: Redis | Cluster | null = null;
  #timer: ReturnType<typeof setInterval> | null = null;
  #version: string | null = null;
  /** The table as last read, written back when Redis lost it. */
  #held: Record<string, string> = {};
  #checking: Promise<void> | null = null;
  #closed = false;

  /** Creates the table; {@linkcode start} loads it. */
  constructor(options: FleetLimitsOptions) {
    this.#o = options;
  }

  get #key(): string {
    return `${this.#o.prefix}:limits`;
  }

  /** Loads the table once, then follows its changes. */
  async start(): Promise<void> {
    const sub = subscriber(this.#o.client, () => [this.#key]);
    this.#sub = sub;
    sub.on("message", () => this.#check());
    sub.subscribe(this.#key).catch(() => {});
    this.#timer = setInterval(() => this.#check(), this.#o.pollMs);
    Deno.unrefTimer(this.#timer);
    // Redis down at start: the periodic check catches up later.
    await this.#bounded(this.#check()).catch(() => {});
  }

  /** `promise`, or a {@linkcode RedisTimeoutError} once the timeout has passed. */
  #bounded<T>(promise: Promise<T>): Promise<T> {
    const ms = this.#o.timeout;
    return withTimeout(promise, ms, () => new RedisTimeoutError(ms));
  }

  /** Reads the version and, when it changed, the table. */
  #check(): Promise<void> {
    this.#checking ??= (async () => {
      try {
        const client = this.#o.client;
        let version = await client.get(`${this.#key}:v`);
        if (this.#closed || version === this.#version) return;
        if (this.#lost(version)) version = await this.#writeBack(version);
        const hash = await client.hgetall(this.#key);
        if (this.#closed) return;
        this.#version = version;
        this.#held = hash;
        this.#o.onChange(toRules(hash));
      } catch (error) {
        this.#o.logger.debug("Fleet limit table not read: {error}", { error });
      } finally {
        this.#checking = null;
      }
    })();
    return this.#checking;
  }

  /**
   * Whether Redis lost the table this proxy holds: the version, which only
   * grows, is gone or went back (a restart without data, a flush, a
   * failover to an empty replica).
   */
  #lost(version: string | null): boolean {
    if (this.#version === null || Object.keys(this.#held).length === 0) return false;
    return version === null || Number(version) < Number(this.#version);
  }

  /**
   * Writes back the entries this proxy holds that the table lacks (changes
   * made since the loss win), sets the version past the one it held and
   * tells the fleet, as the counts are re-asserted after a restart. Returns
   * the version to read.
   */
  async #writeBack(seen: string | null): Promise<string | null> {
    const client = this.#o.client;
    const current = await client.hgetall(this.#key);
    const missing = Object.fromEntries(
      Object.entries(this.#held).filter(([field]) => !(field in current)),
    );
    // Another proxy wrote them back already.
    if (Object.keys(missing).length === 0) return seen;
    await client.hset(this.#key, missing);
    // Past the version this proxy held: the others see a newer table, not another loss.
    const version = String((Number(this.#version) || 0) + 1);
    await client.set(`${this.#key}:v`, version);
    await client.publish(this.#key, "changed");
    this.#o.logger.warn(
      "Redis lost the fleet's runtime limit table (version {held}, now {seen}); wrote back {count} " +
        "rule(s) this proxy holds: {rules}",
      {
        held: this.#version,
        seen: seen ?? "none",
        count: Object.keys(missing).length,
        rules: Object.entries(missing).map(([f, l]) => `${f}=${l}`).join(", "),
      },
    );
    return version;
  }

  /**
   * Writes changes to the fleet's table and tells the fleet; resolves once
   * Redis has them and this proxy applied them. Throws a `TypeError` on an
   * invalid pattern or limit, before writing anything, and an `Error` when
   * Redis does not answer in time.
   */
  set(changes: FleetLimitChanges): Promise<void> {
    const checked = checkChanges(changes);
    const put: Record<string, string> = {};
    const del: string[] = [];
    const entries: [string, number | HostRule | null | undefined][] = [
      [DEFAULT_FIELD, checked.default],
      ...checked.hosts,
    ];
    for (const [field, rule] of entries) {
      if (rule === null) del.push(field);
      // A limit as its number, a rule with settings as JSON.
      else if (rule !== undefined) {
        put[field] = typeof rule === "number" ? String(rule) : JSON.stringify(rule);
      }
    }
    const client = this.#o.client;
    return this.#bounded((async () => {
      // A table Redis lost is written back first, so that this change is not undone by it.
      await this.#check();
      if (Object.keys(put).length) await client.hset(this.#key, put);
      if (del.length) await client.hdel(this.#key, ...del);
      await client.incr(`${this.#key}:v`);
      await client.publish(this.#key, "changed");
      await this.#check();
    })());
  }

  /**
   * Stores the rules of `worker`'s config file in `<prefix>:files` (hash:
   * worker id to rules as JSON) and returns every worker's stored rules.
   */
  async announceFile(worker: string, rules: LimitRules): Promise<Map<string, LimitRules>> {
    const key = `${this.#o.prefix}:files`;
    await this.#bounded(this.#o.client.hset(key, worker, JSON.stringify(canonicalRules(rules))));
    const out = new Map<string, LimitRules>();
    for (const [id, text] of Object.entries(await this.#bounded(this.#o.client.hgetall(key)))) {
      try {
        out.set(id, canonicalRules(JSON.parse(text)));
      } catch {
        // Not rules: ignored.
      }
    }
    return out;
  }

  /**
   * Publishes `rules` as `worker`'s file ({@linkcode announceFile}) and
   * warns, naming the rules, about every worker that `live` lists whose file
   * says otherwise. A failure is logged (debug), never thrown.
   */
  async compareFiles(
    worker: string,
    rules: LimitRules,
    live: () => Promise<string[]>,
  ): Promise<void> {
    const logger = this.#o.logger;
    try {
      const theirs = await this.announceFile(worker, rules);
      const alive = new Set(await live());
      for (const [id, other] of theirs) {
        if (!alive.has(id) || id === worker) continue;
        const diff = diffRules(rules, other);
        if (diff.length === 0) continue;
        logger.warn("Limit rules differ from worker {worker}: {rules}", {
          worker: id,
          rules: diff.map((d) => `${d.rule}: ${d.a ?? "none"} here, ${d.b ?? "none"} there`)
            .join("; "),
        });
      }
    } catch (error) {
      logger.debug("Config files of the fleet not compared: {error}", { error });
    }
  }

  /** Forgets `worker`'s file rules (at shutdown). */
  async forgetFile(worker: string): Promise<void> {
    await this.#bounded(this.#o.client.hdel(`${this.#o.prefix}:files`, worker));
  }

  /** Stops following the table. */
  close(): void {
    this.#closed = true;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#sub?.disconnect();
    this.#sub = null;
  }
}

/** The table as rules; entries that are not valid are skipped. */
function toRules(hash: Record<string, string>): LimitRules {
  const rules: LimitRules = {};
  const hosts: Record<string, number | HostRule> = {};
  for (const [field, text] of Object.entries(hash)) {
    const limit = Number(text);
    if (field === DEFAULT_FIELD) {
      if (Number.isSafeInteger(limit) && limit >= 0) rules.default = limit;
      continue;
    }
    try {
      const pattern = parseHostPattern(field);
      const rule = text.startsWith("{") ? JSON.parse(text) : limit;
      normalizeRules({ hosts: { [pattern]: rule } });
      hosts[pattern] = rule;
    } catch {
      // Written by something else: ignored.
    }
  }
  if (Object.keys(hosts).length) rules.hosts = hosts;
  return rules;
}
