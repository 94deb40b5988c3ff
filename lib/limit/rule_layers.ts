/**
 * {@linkcode RuleLayers}: the layers of limit rules a proxy holds (flags,
 * config file, runtime table), compiled into its limit table under this
 * process's overrides.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import type { LimitTable } from "./limit_table.ts";
import { type LimitsView, limitsView } from "./limit_layers.ts";
import { diffRules, type RuleDifference } from "./rules/diff.ts";
import { RuleTable } from "./rules/rule_table.ts";
import { layerRules, type LimitRules, validateRules } from "./rules/rules.ts";
import {
  CHANGES_PREVIEW as LOGGED_CHANGES,
  LoadedRules,
  loadedTable,
  type ReloadContext,
} from "../config/reload.ts";

/** The outcome of a reload of the rules (`ProxyRateLimiter.reload`). */
export type ReloadOutcome =
  | {
    /** The rules were read and swapped in. */
    ok: true;
    /** The rules that changed, each as `rule`, `a` (before) and `b` (after). */
    changes: RuleDifference[];
  }
  | {
    /** The rules could not be read; the current ones stay. */
    ok: false;
    /** What is wrong, as one line (`dprl.yaml:7:3: ...` for a config file). */
    error: string;
  };

/** Options of {@linkcode RuleLayers}. */
export interface RuleLayersOptions {
  /** The command line's flags: the lowest layer. */
  flag?: LimitRules;
  /** The config file's rules (or the `rules` option's). */
  file?: LimitRules;
  /** The table the layers compile into; its overrides stay on top. */
  limits: LimitTable;
  /** Where changed rules are logged. */
  logger: Logger;
}

/**
 * Flag, file and runtime rules, lowest first; each change compiles them
 * again and swaps the new table into the limit table at once.
 */
export class RuleLayers {
  #flag: LimitRules;
  /** The file's layer: rules, or those of a reload whose table was compiled in a worker. */
  #file: LimitRules | LoadedRules;
  #runtime: LimitRules = {};
  #limits: LimitTable;
  #logger: Logger;

  /** Validates the layers given (throwing a `RulesError`) and compiles them. */
  constructor(options: RuleLayersOptions) {
    this.#flag = validateRules(options.flag ?? {});
    this.#file = validateRules(options.file ?? {});
    this.#limits = options.limits;
    this.#logger = options.logger;
    this.#apply();
  }

  /** The runtime table's rules (the fleet's, in distributed mode). */
  get runtime(): LimitRules {
    return this.#runtime;
  }

  /** The file layer's rules. */
  get #fileRules(): LimitRules {
    const file = this.#file;
    return file instanceof LoadedRules ? file.fileRules : file;
  }

  /** The flag and file layers together: what this process's own config says. */
  own(): LimitRules {
    return layerRules(this.#flag, this.#fileRules);
  }

  /** What a reload compiles its table for: the runtime layer and the rules in use. */
  reloadContext(): ReloadContext {
    return { above: this.#runtime, current: this.#limits.rules.rulesText };
  }

  /**
   * Swaps in the table a reload compiled off the event loop, unless the
   * runtime layer or the rules changed meanwhile: then the file's rules are
   * layered again, as {@linkcode RuleLayers.setFile} does.
   */
  swap(loaded: LoadedRules): LoadedRules | RuleDifference[] {
    const { above, current } = loaded.context;
    const table = loadedTable(loaded);
    if (!table || above !== this.#runtime || current !== this.#limits.rules.rulesText) {
      return this.setFile(loaded.fileRules);
    }
    this.#file = loaded;
    this.#limits.rules = table;
    return loaded;
  }

  /**
   * Replaces the file layer; throws a `RulesError` naming the first invalid
   * rule, and then changes nothing. Returns the rules that changed.
   */
  setFile(rules: LimitRules): RuleDifference[] {
    const previous = this.#file;
    this.#file = validateRules(rules);
    try {
      return this.#apply();
    } catch (err) {
      this.#file = previous;
      throw err;
    }
  }

  /** Replaces the runtime layer and logs the rules that changed, saying `why`. */
  setRuntime(rules: LimitRules, why: string): void {
    this.#runtime = rules;
    this.logChanges(this.#apply(), why);
  }

  /**
   * Loads the file's layer again with `load` and swaps it in (as
   * {@linkcode setFile} does, or a table compiled in a worker); a failure
   * keeps the current rules and logs one error. `counted` hears the outcome.
   */
  async reload(
    load: (context: ReloadContext) => LimitRules | LoadedRules | Promise<LimitRules | LoadedRules>,
    counted: (result: "ok" | "error") => void,
  ): Promise<ReloadOutcome> {
    let changes: LoadedRules | RuleDifference[];
    try {
      const loaded = await load(this.reloadContext());
      changes = loaded instanceof LoadedRules ? this.swap(loaded) : this.setFile(loaded);
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      counted("error");
      this.#logger.error("Config not reloaded, the current limits stay: {error}", { error });
      return { ok: false, error };
    }
    counted("ok");
    // A table swapped in from a worker reads its changes only when asked for.
    const [preview, count] = changes instanceof LoadedRules
      ? [changes.preview, changes.changeCount]
      : [changes, changes.length];
    this.logChanges(preview, "reload", count);
    if (count === 0) this.#logger.info("Config reloaded, no limit changed");
    const loaded = changes;
    return {
      ok: true,
      get changes(): RuleDifference[] {
        return loaded instanceof LoadedRules ? loaded.changes : loaded;
      },
    };
  }

  /**
   * Logs each changed rule, saying `why`: the first {@linkcode LOGGED_CHANGES}
   * one by one, then how many more of the `count` changed.
   */
  logChanges(changes: RuleDifference[], why: string, count = changes.length): void {
    for (const c of changes.slice(0, LOGGED_CHANGES)) {
      this.#logger.info("Limit rule {rule} {change} ({why})", {
        rule: c.rule,
        change: c.a === undefined
          ? `added: ${c.b}`
          : c.b === undefined
          ? `removed (was ${c.a})`
          : `changed from ${c.a} to ${c.b}`,
        why,
      });
    }
    if (count > LOGGED_CHANGES) {
      this.#logger.info("{count} more limit rules changed ({why})", {
        count: count - LOGGED_CHANGES,
        why,
      });
    }
  }

  /** The limits in effect, each with its layer, overrides included. */
  view(): LimitsView {
    const overrides: LimitRules = { hosts: this.#limits.entries() };
    const ownDefault = this.#limits.ownDefault;
    if (ownDefault !== undefined) overrides.default = ownDefault;
    return limitsView([
      { source: "flag", rules: this.#flag },
      { source: "file", rules: this.#fileRules },
      { source: "runtime", rules: this.#runtime },
      { source: "override", rules: overrides },
    ]);
  }

  /** Compiles the layers and swaps the table in at once. */
  #apply(): RuleDifference[] {
    const table = new RuleTable(layerRules(this.#flag, this.#fileRules, this.#runtime));
    const changes = diffRules(this.#limits.rules.rules, table.rules);
    this.#limits.rules = table;
    return changes;
  }
}
