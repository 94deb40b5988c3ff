/**
 * The benchmark's guard against regressions: CPU per operation compared
 * with a committed baseline (`bench/baseline.json`, see `bench/check.ts`),
 * and the ratios of the last committed `bench/RESULTS.md`, read back so that
 * a new run prints each figure beside the one before. Pure functions only.
 *
 * @module
 */

/** How much worse than its baseline a CPU-per-operation figure may get: 15%. */
export const TOLERANCE = 0.15;

/** One figure against its baseline. */
export interface Comparison {
  /** The figure's name. */
  name: string;
  /** The committed value, or `undefined` when the baseline lacks it. */
  baseline: number | undefined;
  /** The value measured now. */
  now: number;
  /** `now ÷ baseline - 1`: +0.2 is 20% more CPU; `NaN` without a baseline. */
  change: number;
  /** Worse than the baseline by more than the tolerance. */
  worse: boolean;
}

/**
 * Compares each figure measured `now` (lower is better: CPU per operation)
 * with `baseline`; a figure more than `tolerance` above its baseline is worse.
 */
export function compare(
  baseline: Readonly<Record<string, number>>,
  now: Readonly<Record<string, number>>,
  tolerance: number = TOLERANCE,
): Comparison[] {
  return Object.entries(now).map(([name, value]) => {
    const base = baseline[name];
    const change = base === undefined || !(base > 0) ? NaN : value / base - 1;
    return { name, baseline: base, now: value, change, worse: change > tolerance };
  });
}

/**
 * The ratios of a `bench/RESULTS.md` "Ratios and targets" table, by figure:
 * rows `| figure | 1.23× | target | result |`; rows without a number are left out.
 */
export function committedRatios(markdown: string): Map<string, number> {
  const out = new Map<string, number>();
  const at = markdown.indexOf("## Ratios and targets");
  if (at < 0) return out;
  for (const line of markdown.slice(at).split("\n").slice(1)) {
    if (line.startsWith("## ")) break;
    const cells = line.split("|").map((c) => c.trim());
    const m = /^([0-9]+(?:\.[0-9]+)?)×$/.exec(cells[2] ?? "");
    if (m) out.set(cells[1], Number(m[1]));
  }
  return out;
}
