/** Parsing of durations given on the command line. */

const UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

/**
 * Parses a duration such as `500ms`, `10s`, `2m` or `1h` into milliseconds;
 * a bare number is seconds. Throws a `RangeError` on anything else.
 */
export function parseDuration(text: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) {
    throw new RangeError(
      `Invalid duration "${text}", expected e.g. 500ms, 10s or 2m`,
    );
  }
  return Math.round(Number(m[1]) * UNITS[m[2] ?? "s"]);
}

/**
 * Writes milliseconds as the shortest duration that {@linkcode parseDuration}
 * reads back exactly: `0`, `500ms`, `10s`, `2m` or `1h`.
 */
export function formatDuration(ms: number): string {
  if (ms === 0) return "0";
  for (const [unit, size] of [["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
