/**
 * A naive reading of host patterns, for property tests of the rule lookups:
 * the specificity of a pattern for a key, and the value of the most
 * specific of a list of patterns.
 *
 * @module
 */

/** The specificity of a pattern for a key, or -1 when it does not match. */
export function rank(pattern: string, key: string): number {
  const colon = key.lastIndexOf(":");
  const host = colon > key.lastIndexOf("]") ? key.slice(0, colon) : key;
  if (pattern === key) return 1_000_000;
  if (pattern === host) return 999_999;
  if (pattern.startsWith("*.") && host.endsWith(pattern.slice(1))) return pattern.length;
  return -1;
}

/** The value of the most specific pattern of `entries` matching `key`, scanning them all. */
export function best<T>(entries: [string, T][], key: string): T | undefined {
  let found: T | undefined;
  let score = -1;
  for (const [p, v] of entries) {
    const r = rank(p, key);
    if (r > score) [found, score] = [v, r];
  }
  return found;
}
