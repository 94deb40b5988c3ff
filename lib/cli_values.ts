/**
 * Reading the command line's values: each flag's text (from the flag or its
 * variable) checked and turned into what the options take, or a
 * {@linkcode UsageError} of one line naming the flag.
 *
 * @module
 */

import { parseDuration } from "./duration.ts";
import { FLAGS } from "./cli_flags.ts";
import { parseRate } from "./limit/gcra.ts";
import { parseHostPattern } from "./limit/rules/rules.ts";
import { splitList } from "./access/access_flags.ts";

/** The flags as `parseArgs` returns them. */
export type ParsedArgs = Record<string, string | string[] | boolean | undefined>;

/** A bad flag or environment value. */
export class UsageError extends Error {}

/** The value of environment variable `name`; unset when not granted. */
export function readEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // not granted: treated as unset
  }
}

/** What 0 means for the numeric flags where it is special, said in their range errors. */
const ZERO_MEANS: Record<string, string> = {
  "port": "0 picks a free one",
  "admin-port": "0 picks a free one",
  "max-connections": "0 is unlimited",
  "host-limit": "0 leaves the host to the default",
  "max-idle-per-host": "0 keeps none",
  "max-clients": "0 is no cap",
  "max-clients-per-ip": "0 is no cap",
};

/** The integer `text` of flag `name`, between `min` and `max`. */
export function integer(name: string, text: string, min: number, max: number): number {
  if (!/^-?[0-9]+$/.test(text.trim())) {
    throw new UsageError(`--${name} must be an integer, got "${text}"`);
  }
  const n = Number(text);
  if (n < min || n > max) {
    const range = max >= 1_000_000 && min === 0 ? "0 or more" : `between ${min} and ${max}`;
    const zero = min === 0 && ZERO_MEANS[name] ? ` (${ZERO_MEANS[name]})` : "";
    throw new UsageError(`--${name} must be ${range}${zero}, got ${n}`);
  }
  return n;
}

/** The duration `text` of flag `name`, in milliseconds. */
export function duration(name: string, text: string): number {
  try {
    return parseDuration(text);
  } catch {
    throw new UsageError(
      `--${name} must be a duration such as 500ms, 10s or 2m, got "${text}"`,
    );
  }
}

/**
 * The `host=value` entries of repeatable flag `name` (else of its
 * variable, comma-separated), each host checked and each value matching
 * `pattern` read by `read`.
 */
export function hostValues<T>(
  parsed: ParsedArgs,
  name: string,
  pattern: string,
  read: (text: string) => T,
): Record<string, T> {
  const out: Record<string, T> = {};
  const args = parsed[name] as string[] | undefined ?? splitList(readEnv(FLAGS[name].env!));
  for (const entry of args) {
    const m = new RegExp(`^([^=\\s]+)=(${pattern})$`).exec(entry.trim());
    if (!m) throw new UsageError(`--${name} must be ${FLAGS[name].value}, got "${entry}"`);
    try {
      parseHostPattern(m[1]);
    } catch (err) {
      throw new UsageError(`--${name} host "${m[1]}" ${(err as Error).message}`);
    }
    out[m[1]] = read(m[2]);
  }
  return out;
}

/** A rate flag's value in requests per second. */
export function rate(name: string, text: string): number {
  try {
    return parseRate(text);
  } catch (err) {
    throw new UsageError(
      `--${name} ${(err as Error).message.replace(/^Invalid rate "[^"]*": /, "")}, got "${text}"`,
    );
  }
}
