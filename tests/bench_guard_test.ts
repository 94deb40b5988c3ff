// The benchmark's guard: CPU per operation against the committed baseline,
// and the ratios of the committed RESULTS.md read back.
import assert from "node:assert/strict";
import { committedRatios, compare, TOLERANCE } from "../bench/guard.ts";
import { ROOT } from "./_helpers/spawn.ts";

Deno.test("bench guard: a figure more than 15% worse than its baseline fails, one within it passes", () => {
  const rows = compare(
    { request: 50, tunnel: 200, gone: 10 },
    { request: 57.4, tunnel: 231, added: 3 },
  );
  const by = Object.fromEntries(rows.map((r) => [r.name, r]));
  assert.equal(TOLERANCE, 0.15);
  assert.equal(by.request.worse, false, "14.8% worse: within");
  assert.equal(by.tunnel.worse, true, "15.5% worse: fails");
  assert.ok(Math.abs(by.tunnel.change - 0.155) < 1e-9);
  assert.equal(by.added.worse, false, "no baseline: reported, never failed");
  assert.ok(Number.isNaN(by.added.change));
  assert.equal(rows.length, 3, "only the figures measured now");
});

Deno.test("bench guard: the committed baseline names the figures bench:check measures", async () => {
  const baseline = JSON.parse(await Deno.readTextFile(`${ROOT}/bench/baseline.json`));
  const check = await Deno.readTextFile(`${ROOT}/bench/check.ts`);
  for (const [name, value] of Object.entries(baseline)) {
    assert.ok(check.includes(`"${name}"`), `bench/check.ts measures "${name}"`);
    assert.ok(typeof value === "number" && value > 0, `${name}: ${value}`);
  }
});

Deno.test("bench guard: the ratios of RESULTS.md are read back by figure", async () => {
  const table = [
    "## Ratios and targets",
    "",
    "| figure | ratio | target | result |",
    "|---|---:|---|---|",
    "| plain HTTP req/s, dprl ÷ goproxy-dprl | 2.74× | >= 2.5 | pass |",
    "| one tunnel MB/s, dprl ÷ goproxy-dprl | — | >= 1.1 | not measured |",
    "| cap accuracy: dprl, 3 proxies sharing Redis | 4 admitted, peak 4 | = 4 (exact) | pass |",
    "",
    "## Errors during the run",
    "| not | 9.99× | a | ratio |",
  ].join("\n");
  assert.deepEqual([...committedRatios(table)], [["plain HTTP req/s, dprl ÷ goproxy-dprl", 2.74]]);
  const committed = committedRatios(await Deno.readTextFile(`${ROOT}/bench/RESULTS.md`));
  assert.ok(committed.size >= 5, `${committed.size} ratios in bench/RESULTS.md`);
  for (const ratio of committed.values()) assert.ok(ratio > 0);
});
