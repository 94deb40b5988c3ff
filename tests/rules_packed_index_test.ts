import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";
import { HostIndex } from "../lib/limit/rules/host_index.ts";
import { PackedIndex, packPatterns } from "../lib/limit/rules/packed_index.ts";

/** A packed index and a host index of the same distinct patterns (value: the pattern's index). */
function both(patterns: readonly string[]): [PackedIndex, HostIndex<number>] {
  const distinct = [...new Set(patterns)];
  const hosts = new HostIndex<number>();
  distinct.forEach((pattern, i) => hosts.set(pattern, i));
  return [new PackedIndex(packPatterns(distinct)), hosts];
}

Deno.test("packed index: exact, port, deepest wildcard, IPv6 and the empty index", () => {
  const patterns = [
    "a.example.org",
    "a.example.org:8443",
    "*.example.org",
    "*.b.example.org",
    "[::1]",
    "[::1]:8443",
  ];
  const index = new PackedIndex(packPatterns(patterns));
  assert.equal(index.size, 6);
  assert.equal(index.pattern(3), "*.b.example.org");
  const expect: [string, number][] = [
    ["a.example.org", 0],
    ["a.example.org:80", 0],
    ["a.example.org:8443", 1],
    ["x.example.org", 2],
    ["x.b.example.org:443", 3],
    ["b.example.org", 2],
    ["example.org", -1],
    ["*.example.org", 2],
    ["*.b.example.org", 3],
    ["[::1]", 4],
    ["[::1]:80", 4],
    ["[::1]:8443", 5],
    ["[::2]", -1],
    ["", -1],
  ];
  for (const [key, found] of expect) assert.equal(index.match(key), found, key);
  const empty = new PackedIndex(packPatterns([]));
  assert.equal(empty.size, 0);
  assert.equal(empty.match("a.example.org"), -1);
});

Deno.test("packed index answers every lookup as the host index does", () => {
  const label = fc.constantFrom("a", "b", "c", "org", "x1");
  const name = fc.array(label, { minLength: 1, maxLength: 4 }).map((l) => l.join("."));
  const port = fc.constantFrom("", "", "80", "8443");
  const withPort = (host: string, p: string): string => p ? `${host}:${p}` : host;
  const ipv6 = fc.constantFrom("[::1]", "[2001:db8::1]", "[::a.b]", "[::ffff:1.2.3.4]");
  const pattern = fc.oneof(
    fc.tuple(name, port).map(([n, p]) => withPort(n, p)),
    name.map((n) => `*.${n}`),
    fc.tuple(ipv6, port).map(([h, p]) => withPort(h, p)),
    // Wildcards an IPv6 literal's tail would match, were it a name.
    fc.constantFrom("*.b]", "*.a.b]", "*.4]", "*.3.4]"),
    // Anything a pattern could hold, to check the two agree beyond normal form.
    fc.string({ unit: fc.constantFrom("a", ".", "*", ":", "[", "]", "1"), maxLength: 8 }),
  );
  const key = fc.oneof(
    fc.tuple(name, port).map(([n, p]) => withPort(n, p)),
    fc.tuple(ipv6, port).map(([h, p]) => withPort(h, p)),
    fc.string({ unit: fc.constantFrom("a", ".", "*", ":", "[", "]", "1"), maxLength: 8 }),
  );
  fc.assert(
    fc.property(
      fc.array(pattern, { maxLength: 60 }),
      fc.array(key, { maxLength: 20 }),
      (patterns, keys) => {
        const [packed, hosts] = both(patterns);
        // Keys: the random ones, and every pattern as a key, under one more
        // label and with a port (wildcards are looked up as keys when compiled).
        const derived = patterns.flatMap((p) => {
          const host = p.replace("*.", "");
          return [p, host, `x.${host}`, `x.y.${host}:80`];
        });
        for (const k of [...keys, ...derived]) {
          assert.equal(packed.match(k), hosts.match(k) ?? -1, JSON.stringify(k));
        }
      },
    ),
    { numRuns: 1000 },
  );
});
