/**
 * Watching the config file for changes.
 *
 * @module
 */

import { dirname } from "node:path";
import { DEFAULTS } from "../defaults.ts";

/** Options of {@linkcode watchConfigFile}. */
export interface WatchConfigOptions {
  /** The config file. */
  path: string;
  /** Called once the file's content has changed and stayed quiet. */
  onChange: () => void | Promise<void>;
  /** Quiet time before `onChange`, in milliseconds (default 250). */
  debounceMs?: number;
}

/** A running watch; {@linkcode ConfigWatcher.close} stops it. */
export interface ConfigWatcher {
  /** Stops watching; resolves once no callback is running. */
  close(): Promise<void>;
}

async function read(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch {
    return null;
  }
}

/**
 * Calls `onChange` when the config file's content changes, once per burst
 * of changes (after `debounceMs` without another), never while a previous
 * call still runs. It watches the file's directory, so replacing the file
 * (editors that write a copy and rename it, symlink swaps as in Kubernetes
 * ConfigMaps) counts, and compares contents, so touching the file or
 * writing the same text does not. A file that disappears counts as a change
 * (the reload then reports it). A rejection of `onChange` is ignored: report
 * errors inside it.
 *
 * @example
 * ```ts ignore
 * import { watchConfigFile } from "./watch.ts";
 * const watcher = watchConfigFile({ path: "dprl.yaml", onChange: () => reload() });
 * // later
 * await watcher.close();
 * ```
 */
export function watchConfigFile(options: WatchConfigOptions): ConfigWatcher {
  const { path, onChange } = options;
  const debounceMs = options.debounceMs ?? DEFAULTS.configWatchDebounce;
  const watcher = Deno.watchFs(dirname(path), { recursive: false });
  let last: Promise<string | null> = read(path);
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running: Promise<void> = Promise.resolve();
  let closed = false;

  const check = () => {
    timer = undefined;
    running = running.then(async () => {
      if (closed) return;
      const [before, now] = [await last, await read(path)];
      last = Promise.resolve(now);
      if (now !== before) await onChange();
    }).catch(() => {});
  };

  (async () => {
    // Any event in the directory may replace the file (a rename, a symlink
    // swap): each burst ends in one read and comparison.
    for await (const _ of watcher) {
      clearTimeout(timer);
      timer = setTimeout(check, debounceMs);
    }
  })().catch(() => {});

  return {
    async close() {
      closed = true;
      clearTimeout(timer);
      try {
        watcher.close();
      } catch {
        // Already closed.
      }
      await running;
    },
  };
}
