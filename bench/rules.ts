/**
 * Lookups per second of the rule table with 10 and with 10,000 rules (and,
 * for contrast, a scan of every rule). The keys mix exact hits, wildcard
 * hits two labels deep and misses that walk every label.
 *
 * ```sh
 * deno run bench/rules.ts [--seconds=1] [--rounds=3]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { LimitTable } from "../lib/limit/limit_table.ts";
import { RuleTable } from "../lib/limit/rules/rule_table.ts";
import type { LimitRules } from "../lib/limit/rules/rules.ts";
import { defaultLimit, hostLimits } from "../lib/limit/rules/rule_limits.ts";

const args = parseArgs({
  args: Deno.args,
  options: { seconds: { type: "string", default: "1" }, rounds: { type: "string", default: "3" } },
}).values;
const seconds = Math.min(10, Math.max(0.1, Number(args.seconds)));
const rounds = Math.min(10, Math.max(1, Number(args.rounds)));

/** `n` rules: exact hosts, hosts with a port, wildcards; every tenth in a group. */
function rules(n: number): LimitRules {
  const hosts: Record<string, number> = {};
  const match: string[] = [];
  for (let i = 0; Object.keys(hosts).length + match.length < n; i++) {
    const kind = i % 3;
    const pattern = kind === 0
      ? `h${i}.example.com`
      : kind === 1
      ? `p${i}.example.io:8443`
      : `*.w${i}.example.net`;
    if (i % 10 === 9) match.push(pattern);
    else hosts[pattern] = 1 + (i % 50);
  }
  return { default: 25, hosts, groups: [{ name: "g", match, limit: 100 }] };
}

/** 1,024 keys: a third exact or port hits, a third wildcard hits, a third misses. */
function keys(n: number): string[] {
  const out: string[] = [];
  for (let k = 0; k < 1024; k++) {
    const i = Math.floor(Math.random() * n);
    const base = i - (i % 3);
    out.push(
      k % 3 === 0
        ? (k % 2 ? `h${base}.example.com` : `p${base + 1}.example.io:8443`)
        : k % 3 === 1
        ? `a.b.w${base + 2}.example.net`
        : `x.y.z.miss${k}.example.org`,
    );
  }
  return out;
}

/** Best-of-rounds lookups per second of `lookup` over `list`. */
function measure(lookup: (key: string) => number, list: string[]): number {
  let best = 0;
  let sink = 0;
  for (let r = 0; r < rounds; r++) {
    let n = 0;
    const start = performance.now();
    const end = start + seconds * 1000;
    let now = start;
    while (now < end) {
      for (let i = 0; i < 4096; i++) sink += lookup(list[(n + i) & 1023]);
      n += 4096;
      now = performance.now();
    }
    best = Math.max(best, n / ((now - start) / 1000));
  }
  if (sink === -1) console.log(sink);
  return best;
}

/** The most specific rule by scanning all of them: what O(rules) costs. */
function naive(r: LimitRules): (key: string) => number {
  const entries = Object.entries(hostLimits(r));
  return (key) => {
    const colon = key.lastIndexOf(":");
    const host = colon > key.lastIndexOf("]") ? key.slice(0, colon) : key;
    let best = defaultLimit(r) ?? 0;
    let score = -1;
    for (const [p, limit] of entries) {
      const s = p === key
        ? 1e6
        : p === host
        ? 1e6 - 1
        : p.startsWith("*.") && host.endsWith(p.slice(1))
        ? p.length
        : -1;
      if (s > score) [best, score] = [limit, s];
    }
    return best;
  };
}

const rows: string[][] = [];
const results: Record<number, number> = {};
for (const n of [10, 10_000]) {
  const r = rules(n);
  const table = new RuleTable(r);
  const limits = new LimitTable();
  limits.rules = table;
  const list = keys(n);
  const lookups = measure((k) => {
    const m = table.lookup(k);
    return m.group ? m.limit + 1 : m.limit;
  }, list);
  results[n] = lookups;
  const withRuntime = measure((k) => limits.lookup(k).limit, list);
  const scan = measure(naive(r), list);
  rows.push(
    [n.toLocaleString("en"), lookups, withRuntime, scan].map((v) =>
      typeof v === "number" ? Math.round(v).toLocaleString("en") : v
    ),
  );
}
console.log(`rule lookups per second (best of ${rounds} x ${seconds} s, one core)\n`);
console.log("| rules | RuleTable.lookup | LimitTable.lookup | scan of every rule |");
console.log("| ----: | ---------------: | ----------------: | -----------------: |");
for (const row of rows) console.log(`| ${row.join(" | ")} |`);
console.log(
  `\n10,000 rules cost ${(results[10] / results[10_000]).toFixed(2)}x 10 rules per lookup`,
);
