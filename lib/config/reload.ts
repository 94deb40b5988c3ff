/**
 * Reloading the limit rules from the config file without a restart.
 *
 * @module
 */

import { ConfigError, type ConfigFile, type ConfigOptions, loadConfigFile } from "./config_file.ts";
import { diffRules, type RuleDifference } from "../limit/rules/diff.ts";
import { RuleTable } from "../limit/rules/rule_table.ts";
import { layerRules, type LimitRules } from "../limit/rules/rules.ts";

/** Options of {@linkcode reloadRules}. */
export interface ReloadOptions extends ConfigOptions {
  /** The config file. */
  path: string;
  /** Rules the file's rules are layered over (such as the flags'). */
  below?: LimitRules;
  /** Rules layered over the file's rules. */
  above?: LimitRules;
}

/** The outcome of {@linkcode reloadRules}. */
export type ReloadResult =
  | {
    /** The file was valid. */
    ok: true;
    /** The new table, to swap in. */
    table: RuleTable;
    /** The file's settings and rules. */
    config: ConfigFile;
    /** The rules that changed from the old table to the new. */
    changes: RuleDifference[];
  }
  | {
    /** The file was unreadable or invalid. */
    ok: false;
    /** The old table, unchanged. */
    table: RuleTable;
    /** What is wrong with the file. */
    error: ConfigError;
  };

/**
 * Reads the config file and compiles its rules (layered between `below` and
 * `above`, which must be valid) into a new table. The old table is never modified: on success
 * the caller swaps the new one in with one assignment; when the file cannot
 * be read or is invalid, the result carries the old table and the error.
 *
 * @example
 * ```ts ignore
 * import { reloadRules } from "./reload.ts";
 * const result = await reloadRules(limits.rules, { path: "dprl.yaml", flags: FLAGS });
 * if (result.ok) limits.rules = result.table;
 * else log.error(result.error.message);
 * ```
 */
export async function reloadRules(
  current: RuleTable,
  options: ReloadOptions,
): Promise<ReloadResult> {
  try {
    const config = await loadConfigFile(options.path, options);
    const rules = layerRules(options.below ?? {}, config.rules, options.above ?? {});
    const table = new RuleTable(rules);
    return { ok: true, table, config, changes: diffRules(current.rules, table.rules) };
  } catch (err) {
    if (err instanceof ConfigError) return { ok: false, table: current, error: err };
    throw err;
  }
}
