/**
 * The config file: command-line settings under their long flag names plus
 * the limit rules, in YAML or JSON.
 *
 * ```yaml
 * max-connections: 25        # or "default: 25"
 * redis-url: redis://redis:6379
 * hosts:
 *   api.example.com: 5
 *   "*.example.org": 10
 * groups:
 *   - name: storage
 *     match: ["*.s3.amazonaws.com", "s3.amazonaws.com"]
 *     limit: 100
 * ```
 *
 * @module
 */

import {
  type Document,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  type Node,
  parseDocument,
  visit,
  type YAMLMap,
} from "yaml";
import {
  type LimitRules,
  normalizeRules,
  type RulePath,
  RulesError,
} from "../limit/rules/rules.ts";
import { type HostsSection, readHostsSection } from "./hosts_section.ts";

/** How a flag takes its value. */
export interface FlagSpec {
  /** The flag is a switch: `true` or `false` in the file. */
  boolean?: boolean;
  /** The flag may be repeated: a list (or one value) in the file. */
  multiple?: boolean;
}

/** A setting's value, as the command line would have given it. */
export type SettingValue = string | string[] | boolean;

/** What a config file holds. */
export interface ConfigFile {
  /** The settings by long flag name (`"max-connections"` is in `rules`). */
  settings: Record<string, SettingValue>;
  /** The limit rules: `default` (or `max-connections`), `hosts`, `groups`. */
  rules: LimitRules;
  /** Where each setting's value is in the file, for errors found later. */
  places: Record<string, { line: number; column: number }>;
}

/** Options of {@linkcode parseConfig} and {@linkcode loadConfigFile}. */
export interface ConfigOptions {
  /**
   * The command line's flags by long name; each may be set in the file
   * except `config`, `help` and `version`. `max-connections` and
   * `host-limit` are rules: the file writes them as `default` (or
   * `max-connections`) and `hosts`.
   */
  flags: Record<string, FlagSpec>;
}

/**
 * An invalid or unreadable config file. The message is one line naming the
 * file, the line and column where known, and the problem:
 * `dprl.yaml:7:3: hosts.api.example.com must be an integer >= 0`.
 */
export class ConfigError extends Error {
  /** The file, as it was named. */
  readonly file: string;
  /** The line (from 1), when known. */
  readonly line?: number;
  /** The column (from 1), when known. */
  readonly column?: number;
  /** The problem, without the place. */
  readonly problem: string;

  /** Creates an error for a place in a file. */
  constructor(file: string, problem: string, place: { line?: number; column?: number } = {}) {
    const at = place.line === undefined
      ? file
      : `${file}:${place.line}${place.column === undefined ? "" : `:${place.column}`}`;
    super(`${at}: ${problem}`);
    this.name = "ConfigError";
    this.file = file;
    this.problem = problem;
    this.line = place.line;
    this.column = place.column;
  }
}

const RULE_KEYS = ["default", "hosts", "groups"];
const NOT_IN_FILE = ["config", "help", "version", "host-limit", "host-rate"];

/** Levenshtein distance, for "did you mean". */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length];
}

function suggestion(key: string, known: string[]): string {
  let best = "";
  let score = Infinity;
  for (const name of known) {
    const d = distance(key.toLowerCase(), name);
    if (d < score) [best, score] = [name, d];
  }
  return score <= Math.max(1, Math.floor(best.length / 4)) ? ` (did you mean ${best}?)` : "";
}

/** The format a file name asks for. */
function formatOf(path: string): "yaml" | "json" | undefined {
  const ext = path.toLowerCase().match(/\.([a-z]+)$/)?.[1];
  return ext === "yaml" || ext === "yml" ? "yaml" : ext === "json" ? "json" : undefined;
}

function jsonSyntaxError(path: string, text: string, err: Error): ConfigError {
  const problem = err.message.replace(/ in JSON at position \d+.*$/s, "").split("\n")[0];
  const pos = /at position (\d+)/.exec(err.message);
  const lines = new LineCounter();
  parseDocument(text, { lineCounter: lines, uniqueKeys: false });
  const offset = pos ? Number(pos[1]) : problem.includes("end of JSON") ? text.length : undefined;
  if (offset === undefined) return new ConfigError(path, problem);
  const { line, col } = lines.linePos(offset);
  return new ConfigError(path, problem, { line, column: col });
}

/**
 * Parses a config file's text; `path` names the file in errors and its
 * extension (`.yaml`, `.yml` or `.json`) picks the format. Throws a
 * {@linkcode ConfigError} on any problem, unknown keys included.
 *
 * @example
 * ```ts
 * import { parseConfig } from "./config_file.ts";
 * const { settings, rules } = parseConfig("port: 3128\nhosts:\n  a.example: 2\n", {
 *   path: "dprl.yaml",
 *   flags: { port: {} },
 * });
 * // settings: { port: "3128" }, rules: { hosts: { "a.example": 2 } }
 * ```
 */
export function parseConfig(text: string, options: ConfigOptions & { path: string }): ConfigFile {
  const { path } = options;
  const format = formatOf(path);
  if (!format) throw new ConfigError(path, "must end in .yaml, .yml or .json");
  if (format === "json") {
    try {
      JSON.parse(text);
    } catch (err) {
      throw jsonSyntaxError(path, text, err as Error);
    }
  }
  const section = format === "yaml" ? readHostsSection(text) : undefined;
  if (section) {
    // The rest of the file through the YAML parser, the hosts read alone; any
    // doubt or error is settled by reading the whole file the general way.
    try {
      const config = parseDocumentText(section.rest, options, section);
      if (config) return config;
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
    }
  }
  return parseDocumentText(text, options)!;
}

/**
 * {@linkcode parseConfig} through the YAML parser; with `section`, the text
 * has that `hosts:` block blanked and its entries come from `section`, or
 * the result is `undefined` when the text has no such top-level key there.
 */
function parseDocumentText(
  text: string,
  options: ConfigOptions & { path: string },
  section?: HostsSection,
): ConfigFile | undefined {
  const { path, flags } = options;
  const lines = new LineCounter();
  // The parser's own check of unique keys compares each key with every
  // earlier one (quadratic in a section's size): keys are checked below.
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: false });
  const fail = (problem: string, offset: number | undefined): never => {
    if (offset === undefined) throw new ConfigError(path, problem);
    const { line, col } = lines.linePos(offset);
    throw new ConfigError(path, problem, { line, column: col });
  };
  const first = doc.errors[0] ?? doc.warnings[0];
  if (first) fail(first.message.split("\n")[0], first.pos[0]);
  const twin = repeatedKey(doc);
  if (twin !== undefined) fail("Map keys must be unique", twin);

  let js: Record<string, unknown>;
  try {
    js = doc.toJS();
  } catch (err) {
    return fail((err as Error).message.split("\n")[0], undefined);
  }
  const root = deref(doc.contents, doc);
  if (root === undefined || (isScalar(root) && root.value === null)) {
    return { settings: {}, rules: {}, places: {} };
  }
  if (!isMap(root)) return fail("the file must hold a mapping of settings", root.range?.[0]);
  if (section) {
    const hosts = root.items.find((pair) => isScalar(pair.key) && pair.key.value === "hosts");
    if ((hosts?.key as Node | undefined)?.range?.[0] !== section.offset) return undefined;
    if (hosts!.value !== null && !(isScalar(hosts!.value) && hosts!.value.value === null)) {
      return undefined;
    }
    js.hosts = section.hosts;
  }

  const { settings, places, rules, defaultKey } = readItems(root, js, { doc, flags, lines, fail });
  try {
    normalizeRules(rules);
  } catch (err) {
    if (!(err instanceof RulesError)) throw err;
    const path = [...err.path];
    let problem = err.message;
    if (path[0] === "default" && defaultKey === "max-connections") {
      path[0] = defaultKey;
      problem = problem.replace(/^default/, defaultKey);
    }
    fail(problem, locate(root, path, { doc, inKey: err.inKey }));
  }
  return { settings, rules: rules as LimitRules, places };
}

/** What {@linkcode readItems} needs of the document being parsed. */
interface ItemContext {
  doc: Document;
  flags: ConfigOptions["flags"];
  lines: LineCounter;
  fail: (problem: string, offset: number | undefined) => never;
}

/** The settings (with their places) and rules of a config file's top-level mapping. */
function readItems(root: YAMLMap, js: Record<string, unknown>, ctx: ItemContext): {
  settings: Record<string, SettingValue>;
  places: ConfigFile["places"];
  rules: Record<string, unknown>;
  defaultKey: string | undefined;
} {
  const { doc, flags, lines, fail } = ctx;
  const settings: Record<string, SettingValue> = {};
  const places: ConfigFile["places"] = {};
  const rules: Record<string, unknown> = {};
  let defaultKey: string | undefined;
  const known = [
    ...RULE_KEYS,
    ...Object.keys(flags).filter((name) => !NOT_IN_FILE.includes(name)),
  ];
  for (const pair of root.items) {
    const keyNode = pair.key as Node;
    const key = String(isScalar(keyNode) ? keyNode.value : keyNode);
    const at = keyNode.range?.[0];
    const valueNode = deref(pair.value, doc);
    if (key === "default" || key === "max-connections") {
      if (defaultKey !== undefined) {
        fail(`${key} and ${defaultKey} both set the default limit: keep one`, at);
      }
      defaultKey = key;
      rules.default = js[key];
    } else if (key === "hosts" || key === "groups") {
      // An empty section (every entry commented out) has no rules.
      if (js[key] !== null) rules[key] = js[key];
    } else if (key === "host-limit") {
      fail("host-limit is written as hosts in the file, a mapping of host to limit", at);
    } else if (key === "host-rate") {
      fail("host-rate is written as hosts in the file, as a host rule's rate", at);
    } else if (!known.includes(key)) {
      fail(`${key} is not a setting${suggestion(key, known)}`, at);
    } else {
      settings[key] = setting(key, flags[key], valueNode, { doc, fail });
      const offset = valueNode?.range?.[0] ?? at;
      if (offset !== undefined) {
        const { line, col } = lines.linePos(offset);
        places[key] = { line, column: col };
      }
    }
  }
  return { settings, places, rules, defaultKey };
}

/**
 * The offset of the first key that repeats an earlier key of its mapping
 * (scalar keys compared by value, as the parser's own check does), in one
 * pass over the document.
 */
function repeatedKey(doc: Document): number | undefined {
  let found: number | undefined;
  visit(doc, {
    Map(_, map) {
      const seen = new Set<unknown>();
      for (const pair of map.items) {
        const key = isScalar(pair.key) ? pair.key.value : pair.key;
        if (seen.has(key)) {
          found = (pair.key as Node | null)?.range?.[0];
          return visit.BREAK;
        }
        seen.add(key);
      }
    },
  });
  return found;
}

/** The node itself, or the node an alias points to. */
function deref(node: unknown, doc: Document): Node | undefined {
  if (isAlias(node)) return node.resolve(doc) as Node | undefined;
  return (node ?? undefined) as Node | undefined;
}

function setting(
  key: string,
  spec: FlagSpec,
  node: Node | undefined,
  { doc, fail }: { doc: Document; fail: (problem: string, offset?: number) => never },
): SettingValue {
  const scalarText = (n: Node | undefined): string | undefined => {
    if (!isScalar(n) || n.value === null || typeof n.value === "object") return undefined;
    return String(n.source ?? n.value);
  };
  const at = node?.range?.[0];
  if (spec.boolean) {
    if (isScalar(node) && typeof node.value === "boolean") return node.value;
    return fail(`${key} must be true or false`, at);
  }
  if (spec.multiple && isSeq(node)) {
    return node.items.map((item) => {
      const text = scalarText(deref(item, doc));
      return text ?? fail(`${key} must be a list of values`, (item as Node).range?.[0] ?? at);
    });
  }
  const text = scalarText(node);
  if (text === undefined) {
    return fail(`${key} needs ${spec.multiple ? "a value or a list of values" : "a value"}`, at);
  }
  return spec.multiple ? [text] : text;
}

/** The offset of the node at `path` (of its key when `inKey`). */
function locate(
  root: Node,
  path: RulePath,
  { doc, inKey }: { doc: Document; inKey: boolean },
): number | undefined {
  let node: Node | undefined = root;
  let offset = root.range?.[0];
  for (const [i, step] of path.entries()) {
    node = deref(node, doc);
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(step));
      if (!pair) return offset;
      const keyNode = pair.key as Node;
      offset = keyNode.range?.[0] ?? offset;
      if (i === path.length - 1 && inKey) return offset;
      node = (pair.value as Node | null) ?? undefined;
    } else if (isSeq(node) && typeof step === "number") {
      node = node.items[step] as Node | undefined;
    } else {
      return offset;
    }
    if (
      node?.range && !(isScalar(node) && node.value === null && node.range[0] === node.range[1])
    ) {
      offset = node.range[0];
    }
  }
  return offset;
}

/**
 * Reads and parses a config file (see {@linkcode parseConfig}). Throws a
 * {@linkcode ConfigError} when it cannot be read or is invalid.
 *
 * @example
 * ```ts ignore
 * import { loadConfigFile } from "./config_file.ts";
 * const { settings, rules } = await loadConfigFile("dprl.yaml", { flags: FLAGS });
 * ```
 */
export async function loadConfigFile(path: string, options: ConfigOptions): Promise<ConfigFile> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    const problem = err instanceof Deno.errors.NotFound
      ? "no such file"
      : err instanceof Deno.errors.PermissionDenied || err instanceof Deno.errors.NotCapable
      ? "permission denied"
      : err instanceof Deno.errors.IsADirectory
      ? "is a directory"
      : `cannot be read: ${(err as Error).message}`;
    throw new ConfigError(path, problem);
  }
  return parseConfig(text, { ...options, path });
}
