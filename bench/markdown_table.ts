/**
 * Numbers and tables in Markdown, for the benchmark's reports.
 *
 * @module
 */

/** `n` with thousands separators and `digits` decimals, or "—" when missing. */
export function fmt(n: number | undefined, digits = 0): string {
  if (n === undefined || Number.isNaN(n)) return "—";
  return n.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** A Markdown table; `align` has "r" for a right-aligned column, anything else for left. */
export function table(head: string[], rows: string[][], align: string[]): string {
  const lines = [
    `| ${head.join(" | ")} |`,
    `|${align.map((a) => (a === "r" ? "---:" : "---")).join("|")}|`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ];
  return lines.join("\n");
}
