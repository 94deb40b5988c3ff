/**
 * Reloading the limit rules of the config file off the event loop, and
 * merging reloads asked for at the same time.
 *
 * @module
 */

import { ConfigError, type ConfigOptions, loadConfigFile } from "./config_file.ts";
import { diffCanonicalRules, type RuleDifference } from "../limit/rules/diff.ts";
import { RuleTable, type RuleTableData } from "../limit/rules/rule_table.ts";
import { layerRules, type LimitRules } from "../limit/rules/rules.ts";

/** What the proxy passes to its `loadRules` at a reload. */
export interface ReloadContext {
  /** The rules layered over the file's (the fleet's runtime table). */
  above: LimitRules;
  /** The rules in use, in canonical form as JSON, to name the rules that change. */
  current: string;
}

/** Options of {@linkcode loadRulesFile}. */
export interface LoadRulesOptions extends ConfigOptions {
  /** The config file. */
  path: string;
  /** Rules the file's rules are layered over (such as the flags'). */
  below?: LimitRules;
  /**
   * Read the file and compile the table in a `Worker` (default `true`: one
   * started for this load; a {@linkcode RulesWorker} to keep one for the
   * next loads), so that the event loop goes on serving meanwhile. Without one, the same is
   * done in this thread; so it is when the worker's modules may not be read
   * (run from files, a `Worker` needs read access to the `lib` folder) or
   * the `Worker` cannot start (as in a build that left its module out).
   */
  worker?: boolean | RulesWorker;
}

/** A request to the worker; the reply is a {@linkcode LoadReply}. */
export interface LoadRequest extends Omit<LoadRulesOptions, "worker"> {
  /** The rules over the file's. */
  above: LimitRules;
  /** The rules of the table in use, as JSON. */
  previous: string;
}

/**
 * The changed rules a reload hands over as objects (the ones it logs one by
 * one); the rest travel as JSON text, read only when asked for.
 */
export const CHANGES_PREVIEW = 100;

/** The changes of a reload: the first ones, the count, and all of them as JSON. */
export interface ChangesReply {
  /** The first {@linkcode CHANGES_PREVIEW} changes. */
  preview: RuleDifference[];
  /** How many rules changed. */
  count: number;
  /** All changes, as JSON. */
  text: string;
}

/** The worker's reply: the compiled rules, or the parts of a `ConfigError`. */
export type LoadReply =
  | { ok: true; fileRules: string; table: RuleTableData; changes: ChangesReply }
  | { ok: false; file: string; problem: string; line?: number; column?: number };

/**
 * Reads the file and compiles the table as the worker does; throws a
 * {@linkcode ConfigError} when the file cannot be read or is invalid.
 */
export async function compileRulesFile(request: LoadRequest): Promise<LoadReply & { ok: true }> {
  const config = await loadConfigFile(request.path, request);
  // Each step takes canonical rules and gives them: none sorts them again.
  const fileRules = layerRules(config.rules);
  const rules = layerRules(request.below ?? {}, fileRules, request.above);
  const table = RuleTable.compile(rules, { canonical: true });
  const all = diffCanonicalRules(JSON.parse(request.previous), rules);
  const changes = {
    preview: all.slice(0, CHANGES_PREVIEW),
    count: all.length,
    text: JSON.stringify(all),
  };
  return { ok: true, fileRules: JSON.stringify(fileRules), table, changes };
}

/** The table compiled for each {@linkcode LoadedRules}, for the proxy to swap in. */
const tables = new WeakMap<LoadedRules, RuleTable>();

/**
 * The config file's rules as {@linkcode loadRulesFile} loaded them: the
 * file's layer and, held for the proxy, the table of all
 * layers compiled for the reload's context, ready to swap in.
 */
export class LoadedRules {
  #text: string;
  #rules: LimitRules | undefined;
  #changes: ChangesReply;
  #all: RuleDifference[] | undefined;
  /** The context the table was compiled for. */
  readonly context: ReloadContext;

  /** Wraps the file's rules (as JSON) and the changes, for `context`. */
  constructor(fileRules: string, changes: ChangesReply, context: ReloadContext) {
    this.#text = fileRules;
    this.#changes = changes;
    this.context = context;
  }

  /** The file's rules, in canonical form (read when first asked for). */
  get fileRules(): LimitRules {
    return this.#rules ??= JSON.parse(this.#text);
  }

  /** The rules that change from the rules in use (read when first asked for). */
  get changes(): RuleDifference[] {
    return this.#all ??= JSON.parse(this.#changes.text);
  }

  /** The first {@linkcode CHANGES_PREVIEW} of {@linkcode LoadedRules.changes}. */
  get preview(): RuleDifference[] {
    return this.#changes.preview;
  }

  /** The number of {@linkcode LoadedRules.changes}. */
  get changeCount(): number {
    return this.#changes.count;
  }
}

/** The table compiled with `loaded`, for its context. */
export function loadedTable(loaded: LoadedRules): RuleTable | undefined {
  return tables.get(loaded);
}

const WORKER = new URL("./reload_worker.ts", import.meta.url);

/**
 * Whether the worker's modules may be loaded: from files, a `Worker` needs
 * read access to them (granted to the `lib` folder, for one); from JSR or
 * another server, the import permission that loaded this module serves.
 */
function workerAllowed(): boolean {
  if (WORKER.protocol !== "file:") return true;
  const lib = new URL("..", WORKER);
  return Deno.permissions.querySync({ name: "read", path: lib }).state === "granted";
}

/**
 * The `Worker` that reloads run in, started at the first reload and kept
 * for the next ones (starting one holds the event loop for a while); one
 * request at a time. When it cannot start or fails, a request runs in this
 * thread and the next one starts a new worker. {@linkcode RulesWorker.close}
 * stops it: a running worker keeps the process alive.
 *
 * @example
 * ```ts ignore
 * import { loadRulesFile, RulesWorker } from "./reload.ts";
 * using worker = new RulesWorker();
 * const loaded = await loadRulesFile({ path: "dprl.yaml", flags: {}, worker }, context);
 * ```
 */
export class RulesWorker implements Disposable {
  #worker: Worker | undefined;
  #queue: Promise<unknown> = Promise.resolve();

  /** Runs `request`, after the requests before it. */
  run(request: LoadRequest): Promise<LoadReply> {
    const next = this.#queue.then(() => this.#run(request));
    this.#queue = next.catch(() => {});
    return next;
  }

  #run(request: LoadRequest): Promise<LoadReply> {
    if (!workerAllowed()) return compileRulesFile(request);
    const worker = this.#worker ??= new Worker(WORKER, { type: "module" });
    return new Promise((resolve, reject) => {
      worker.onmessage = ({ data }: MessageEvent<LoadReply>) => resolve(data);
      worker.onerror = (event) => {
        event.preventDefault();
        this.close();
        compileRulesFile(request).then(resolve, reject);
      };
      worker.postMessage(request);
    });
  }

  /** Stops the worker; the next request starts a new one. */
  close(): void {
    this.#worker?.terminate();
    this.#worker = undefined;
  }

  /** Stops the worker; used by `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Reads the config file's limit rules (layered over `below`), compiles the
 * table of them under `context.above`, and names the rules that change from
 * `context.current`: all in a `Worker` (reading and checking 100,000 rules
 * takes about a second), the table then adopted without copying. Throws
 * a {@linkcode ConfigError} when the file cannot be read or is invalid.
 *
 * @example
 * ```ts ignore
 * import { loadRulesFile } from "./reload.ts";
 * const proxy = new ProxyRateLimiter({
 *   loadRules: (context) => loadRulesFile({ path: "dprl.yaml", flags: {} }, context),
 * });
 * ```
 */
export async function loadRulesFile(
  options: LoadRulesOptions,
  context: ReloadContext,
): Promise<LoadedRules> {
  const { worker = true, ...rest } = options;
  const request = { ...rest, above: context.above, previous: context.current };
  let reply: LoadReply;
  if (worker instanceof RulesWorker) reply = await worker.run(request);
  else if (!worker) reply = await compileRulesFile(request);
  else {
    using once = new RulesWorker();
    reply = await once.run(request);
  }
  if (!reply.ok) {
    throw new ConfigError(reply.file, reply.problem, { line: reply.line, column: reply.column });
  }
  const loaded = new LoadedRules(reply.fileRules, reply.changes, context);
  tables.set(loaded, RuleTable.fromData(reply.table));
  return loaded;
}

/**
 * Wraps `run` so that a call made while a run is under way waits for the
 * one run that starts after it: any number of calls during a run share
 * that next run and its result (or its rejection), and no two runs overlap.
 *
 * @example
 * ```ts
 * import { mergeRuns } from "./reload.ts";
 * let runs = 0;
 * const reload = mergeRuns(async () => ++runs);
 * const results = await Promise.all([reload(), reload(), reload()]);
 * // results: [1, 2, 2]
 * ```
 */
export function mergeRuns<T>(run: () => Promise<T>): () => Promise<T> {
  let running: Promise<T> | undefined;
  let next: Promise<T> | undefined;
  const start = (): Promise<T> => {
    const current: Promise<T> = run().finally(() => {
      if (running === current) running = undefined;
    });
    return running = current;
  };
  return () => {
    if (next) return next;
    if (!running) return start();
    const after: Promise<T> = running.then(() => {}, () => {}).then(() => {
      next = undefined;
      return start();
    });
    return next = after;
  };
}
