/**
 * A fast reading of the usual large part of a YAML config file: a top-level
 * `hosts:` block of `pattern: limit` lines.
 *
 * @module
 */

/** A `hosts:` block read line by line, and the file without it. */
export interface HostsSection {
  /** The file with the block's entries blanked (lines kept, so places stay). */
  rest: string;
  /** Offset of the `hosts` key in the file. */
  offset: number;
  /** The entries, by pattern as written, in file order. */
  hosts: Record<string, number>;
}

const HEADER = /^hosts:[ ]*(?:[ ]#.*)?$/;
const BLANK = /^[ ]*(?:#.*)?$/;
/**
 * One entry: the indent, a plain, single- or double-quoted key of host
 * pattern characters (no escapes), and a decimal limit.
 */
const ENTRY =
  /^([ ]+)(?:([A-Za-z0-9][A-Za-z0-9._-]*(?::[0-9]{1,5})?)|"([A-Za-z0-9*[][A-Za-z0-9.*:_[\]-]*)"|'([A-Za-z0-9*[][A-Za-z0-9.*:_[\]-]*)'):[ ]+(0|[1-9][0-9]{0,14})[ ]*(?:[ ]#.*)?$/;
/**
 * A plain key that YAML's core schema would read as a string, as written:
 * it has a letter that no number, null or boolean spelling has (`.inf` and
 * `.nan` start with a dot, which a plain key here cannot).
 */
const STRING_LIKE = /[ghijkmpqvwyzGHIJKMPQVWYZ]/;

/**
 * Reads the top-level `hosts:` block when every entry is a `pattern: limit`
 * line that YAML reads as exactly that (the key a string as written, the
 * limit a decimal integer, no repeated key); `undefined` otherwise, or
 * when the file has no such block: then the YAML parser reads it all.
 * The general parser takes about 20 µs a line; this takes well under one.
 *
 * @example
 * ```ts
 * import { readHostsSection } from "./hosts_section.ts";
 * readHostsSection("port: 3128\nhosts:\n  a.example: 2\n")?.hosts; // { "a.example": 2 }
 * ```
 */
export function readHostsSection(text: string): HostsSection | undefined {
  // A directive (`%YAML 1.1`) may change how scalars read.
  if (/^%/m.test(text)) return undefined;
  const lines = text.split("\n");
  const start = lines.findIndex((line) => HEADER.test(line.replace(/\r$/, "")));
  if (start < 0) return undefined;
  const hosts: Record<string, number> = {};
  const seen = new Set<string>();
  let indent: string | undefined;
  let end = start + 1;
  for (; end < lines.length; end++) {
    const line = lines[end].replace(/\r$/, "");
    if (BLANK.test(line)) continue;
    if (!line.startsWith(" ")) break;
    const m = ENTRY.exec(line);
    if (!m || (indent ??= m[1]) !== m[1]) return undefined;
    const plain = m[2];
    if (plain !== undefined && !STRING_LIKE.test(plain)) return undefined;
    const key = plain ?? m[3] ?? m[4];
    if (seen.has(key)) return undefined;
    seen.add(key);
    hosts[key] = Number(m[5]);
  }
  if (indent === undefined) return undefined;
  let offset = 0;
  for (let i = 0; i < start; i++) offset += lines[i].length + 1;
  const rest = [
    ...lines.slice(0, start + 1),
    ...lines.slice(start + 1, end).map(() => ""),
    ...lines.slice(end),
  ].join("\n");
  return { rest, offset, hosts };
}
