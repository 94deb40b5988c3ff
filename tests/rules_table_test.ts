import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";
import { best } from "./_helpers/naive_rules.ts";
import { hostKey } from "../lib/limit/host_key.ts";
import { RuleTable } from "../lib/limit/rules/rule_table.ts";
import type { LimitRules } from "../lib/limit/rules/rules.ts";

const EXAMPLE: LimitRules = {
  default: 25,
  hosts: {
    "api.example.com": 5,
    "*.example.org": 10,
    "*.deep.example.org": 7,
    "exact.example.org": 3,
    "cdn.example.net:8443": 2,
    "cdn.example.net": 4,
    "[::1]:9000": 6,
    "127.0.0.1": 8,
  },
  groups: [
    { name: "storage", match: ["*.s3.amazonaws.com", "s3.amazonaws.com"], limit: 100 },
    { name: "eu", match: ["*.eu.s3.amazonaws.com"], limit: 40 },
  ],
};

Deno.test("rule table precedence: port, host, longest wildcard, default", () => {
  const t = new RuleTable(EXAMPLE);
  const cases: [string, number][] = [
    ["cdn.example.net:8443", 2], // exact host:port
    ["cdn.example.net", 4], // exact host
    ["cdn.example.net:8080", 4], // exact host applies to any other port
    ["api.example.com", 5],
    ["api.example.com:8443", 5],
    ["exact.example.org", 3], // exact beats a wildcard
    ["a.example.org", 10], // wildcard
    ["a.b.example.org", 10], // wildcard matches any depth
    ["a.example.org:9999", 10], // wildcard matches any port
    ["x.deep.example.org", 7], // longest wildcard wins
    ["y.x.deep.example.org", 7],
    ["deep.example.org", 10], // *.deep... does not match deep... itself
    ["example.org", 25], // *.example.org does not match example.org
    ["notexample.org", 25], // a suffix must start at a label
    ["[::1]:9000", 6],
    ["[::1]", 25],
    ["127.0.0.1:8000", 8],
    ["other.example", 25], // default
  ];
  for (const [key, limit] of cases) assert.equal(t.lookup(key).limit, limit, key);
});

Deno.test("rule table puts a host in the group of its most specific pattern", () => {
  const t = new RuleTable(EXAMPLE);
  assert.deepEqual(t.lookup("s3.amazonaws.com").group, { name: "storage", limit: 100 });
  assert.deepEqual(t.lookup("bucket.s3.amazonaws.com").group, { name: "storage", limit: 100 });
  assert.deepEqual(t.lookup("b.eu.s3.amazonaws.com").group, { name: "eu", limit: 40 });
  assert.deepEqual(t.lookup("eu.s3.amazonaws.com").group, { name: "storage", limit: 100 });
  assert.equal(t.lookup("api.example.com").group, undefined);
  assert.equal(t.lookup("amazonaws.com").group, undefined);
});

Deno.test("rule table gives group members their own per-host limit too", () => {
  const t = new RuleTable({
    default: 3,
    hosts: { "big.s3.amazonaws.com": 50, "*.eu.s3.amazonaws.com": 2 },
    groups: [{ name: "storage", match: ["*.s3.amazonaws.com"], limit: 60 }],
  });
  const big = t.lookup("big.s3.amazonaws.com");
  assert.equal(big.limit, 50);
  assert.equal(big.group?.name, "storage");
  assert.equal(t.lookup("x.eu.s3.amazonaws.com").limit, 2);
  assert.equal(t.lookup("x.eu.s3.amazonaws.com").group?.name, "storage");
  assert.equal(t.lookup("small.s3.amazonaws.com").limit, 3);
  assert.equal(t.lookup("small.s3.amazonaws.com").group?.limit, 60);
});

Deno.test("rule table matches configured spellings like host keys", () => {
  const t = new RuleTable({
    hosts: { "API.Example.com:443": 5, "*.Example.ORG.": 6, "::1": 7, "b.example:80": 8 },
  });
  assert.equal(t.lookup(hostKey("api.example.com")).limit, 5);
  assert.equal(t.lookup(hostKey("X.EXAMPLE.org:443")).limit, 6);
  assert.equal(t.lookup(hostKey("[::1]")).limit, 7);
  assert.equal(t.lookup(hostKey("[::1]:9000")).limit, 7);
  assert.equal(t.lookup(hostKey("b.example")).limit, 8);
  assert.deepEqual(t.rules.hosts, {
    "*.example.org": 6,
    "[::1]": 7,
    "api.example.com": 5,
    "b.example": 8,
  });
});

Deno.test("rule table with no rules is unlimited and groupless", () => {
  const t = new RuleTable();
  assert.equal(t.lookup("a.example").limit, 0);
  assert.equal(t.lookup("a.example").group, undefined);
  assert.equal(t.defaultLimit, 0);
});

Deno.test("rule table with a host limit of 0 makes that host unlimited under a default", () => {
  const t = new RuleTable({ default: 5, hosts: { "free.example": 0 } });
  assert.equal(t.lookup("free.example").limit, 0);
  assert.equal(t.lookup("other.example").limit, 5);
});

Deno.test("rule table rules are a copy: changing them changes nothing", () => {
  const t = new RuleTable({ hosts: { "a.example": 1 } });
  t.rules.hosts!["a.example"] = 9;
  assert.equal(t.lookup("a.example").limit, 1);
});

// Property test: the table agrees with a naive O(rules) reference.

const LABELS = ["a", "b", "c", "example", "org", "s3"];
const label = fc.constantFrom(...LABELS);
const name = fc.array(label, { minLength: 1, maxLength: 4 }).map((l) => l.join("."));
const port = fc.constantFrom("", "", "80", "443", "8080", "8443");
const exactPattern = fc.tuple(name, port).map(([n, p]) => p ? `${n}:${p}` : n);
const wildPattern = name.map((n) => `*.${n}`);
const pattern = fc.oneof(exactPattern, wildPattern);
const hostKeyArb = fc.tuple(name, port).map(([n, p]) => hostKey(p ? `${n}:${p}` : n));

Deno.test("rule table lookup agrees with a naive scan of every rule", () => {
  const rulesArb = fc.record({
    default: fc.nat(50),
    hosts: fc.dictionary(pattern, fc.nat(50), { maxKeys: 30 }),
    groups: fc.uniqueArray(pattern, { maxLength: 12, selector: (p) => hostKey(p) })
      .chain((patterns) =>
        fc.array(fc.nat(3), { minLength: patterns.length, maxLength: patterns.length })
          .map((owners) => {
            const groups: { name: string; match: string[]; limit: number }[] = [];
            patterns.forEach((p, i) => {
              const name = `g${owners[i]}`;
              let g = groups.find((x) => x.name === name);
              if (!g) groups.push(g = { name, match: [], limit: owners[i] * 10 });
              g.match.push(p);
            });
            return groups;
          })
      ),
  });
  fc.assert(
    fc.property(rulesArb, fc.array(hostKeyArb, { minLength: 1, maxLength: 20 }), (rules, keys) => {
      // Normalised keys may collide (a.example:443 and a.example): keep the last.
      const hosts = new Map<string, number>();
      for (const [p, v] of Object.entries(rules.hosts)) hosts.set(hostKey(p), v);
      const normal = { ...rules, hosts: Object.fromEntries(hosts) };
      const t = new RuleTable(normal);
      const members: [string, { name: string; limit: number }][] = rules.groups.flatMap((g) =>
        g.match.map((p): [string, { name: string; limit: number }] => [
          hostKey(p),
          { name: g.name, limit: g.limit },
        ])
      );
      // Keys: random ones, and every pattern as a host, with one and two more labels.
      const near = [...hosts.keys(), ...members.map(([p]) => p)]
        .map((p) => p.replace("*.", ""))
        .flatMap((p) => [p, `x.${p}`, `y.x.${p}`]);
      for (const key of [...keys, ...near]) {
        const got = t.lookup(key);
        assert.equal(got.limit, best([...hosts], key) ?? rules.default, key);
        assert.deepEqual(got.group, best(members, key), key);
      }
    }),
    { numRuns: 500 },
  );
});

Deno.test("rule table with 10,000 rules still answers by specificity", () => {
  const hosts: Record<string, number> = {};
  for (let i = 0; i < 5_000; i++) {
    hosts[`h${i}.example.com`] = i + 1;
    hosts[`*.w${i}.example.net`] = i + 1;
  }
  const t = new RuleTable({ default: 1, hosts });
  assert.equal(t.lookup("h4999.example.com").limit, 5000);
  assert.equal(t.lookup("a.b.w17.example.net").limit, 18);
  assert.equal(t.lookup("w17.example.net").limit, 1);
});
