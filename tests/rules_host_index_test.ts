import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";
import { best } from "./_helpers/naive_rules.ts";
import { HostIndex } from "../lib/limit/rules/host_index.ts";
import { parseHostPattern } from "../lib/limit/rules/rules.ts";

Deno.test("host index: a removed wildcard stops matching and its parent still does", () => {
  const index = new HostIndex<number>();
  index.set("*.org", 1);
  index.set("*.example.org", 2);
  index.set("*.a.example.org", 3);
  assert.equal(index.size, 3);
  assert.equal(index.match("x.a.example.org"), 3);
  index.delete("*.a.example.org");
  assert.equal(index.match("x.a.example.org"), 2);
  index.delete("*.example.org");
  assert.equal(index.match("x.a.example.org"), 1);
  assert.equal(index.match("org"), undefined);
  index.delete("*.nothing.org");
  index.delete("*.org");
  assert.equal(index.size, 0);
  assert.equal(index.match("x.a.example.org"), undefined);
  index.set("*.example.org", 4);
  assert.equal(index.match("x.a.example.org"), 4);
});

Deno.test("host index matches like a scan of every pattern after any sets and deletes", () => {
  const label = fc.constantFrom("a", "b", "org");
  const name = fc.array(label, { minLength: 1, maxLength: 3 }).map((l) => l.join("."));
  const port = fc.constantFrom("", "", "8080");
  const pattern = fc.oneof(
    fc.tuple(name, port).map(([n, p]) => parseHostPattern(p ? `${n}:${p}` : n)),
    name.map((n) => `*.${n}`),
  );
  const op = fc.tuple(fc.boolean(), pattern, fc.nat(99));
  fc.assert(
    fc.property(
      fc.array(op, { maxLength: 40 }),
      fc.array(pattern, { maxLength: 10 }),
      (ops, keys) => {
        const index = new HostIndex<number>();
        const model = new Map<string, number>();
        for (const [add, p, v] of ops) {
          if (add) [index.set(p, v), model.set(p, v)];
          else [index.delete(p), model.delete(p)];
        }
        assert.equal(index.size, model.size);
        // Keys: every pattern used, as a host and with one more label.
        const all = [...ops.map(([, p]) => p), ...keys].map((p) => p.replace("*.", ""));
        for (const k of all.flatMap((p) => [p, `x.${p}`])) {
          assert.equal(index.match(k), best([...model], k), k);
        }
      },
    ),
    { numRuns: 500 },
  );
});
