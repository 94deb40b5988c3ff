import assert from "node:assert/strict";
import { LimitTable } from "../lib/limit/limit_table.ts";
import { RuleTable } from "../lib/limit/rules/rule_table.ts";
import { ProxyRateLimiter } from "../mod.ts";

Deno.test("LimitTable gives the default to hosts without an override", () => {
  const t = new LimitTable(3);
  assert.equal(t.limitFor("a.example"), 3);
  t.defaultLimit = 7;
  assert.equal(t.defaultLimit, 7);
  assert.equal(t.limitFor("a.example"), 7);
});

Deno.test("LimitTable per-host override beats the default", () => {
  const t = new LimitTable(3, { "a.example": 5 });
  assert.equal(t.limitFor("a.example"), 5);
  assert.equal(t.limitFor("b.example"), 3);
  t.set("b.example", 1);
  assert.equal(t.limitFor("b.example"), 1);
});

Deno.test("LimitTable normalises configured hosts like host keys", () => {
  const t = new LimitTable(0, { "A.Example:443": 2, "[::1]:9000": 4 });
  assert.equal(t.limitFor("a.example"), 2);
  assert.equal(t.limitFor("[::1]:9000"), 4);
  t.set("B.example:80", 6);
  assert.equal(t.limitFor("b.example"), 6);
  t.set("b.example:8080", 9);
  assert.equal(t.limitFor("b.example:8080"), 9);
  assert.equal(t.limitFor("b.example"), 6);
});

Deno.test("LimitTable set with 0 or less removes the override", () => {
  const t = new LimitTable(3, { "a.example": 5, "b.example": 6 });
  t.set("a.example", 0);
  t.set("b.example", -1);
  assert.equal(t.limitFor("a.example"), 3);
  assert.equal(t.limitFor("b.example"), 3);
  assert.deepEqual(t.entries(), {});
});

Deno.test("LimitTable delete falls back to the default", () => {
  const t = new LimitTable(2, { "a.example": 5 });
  t.delete("A.EXAMPLE");
  assert.equal(t.limitFor("a.example"), 2);
});

Deno.test("LimitTable replace drops old overrides and ignores 0 or less", () => {
  const t = new LimitTable(1, { "a.example": 5 });
  t.replace({ "b.example": 2, "c.example": 0, "d.example": -3 });
  assert.deepEqual(t.entries(), { "b.example": 2 });
  assert.equal(t.limitFor("a.example"), 1);
});

Deno.test("LimitTable default of 0 or less means unlimited (0 passes through)", () => {
  const t = new LimitTable();
  assert.equal(t.limitFor("a.example"), 0);
  t.defaultLimit = -1;
  assert.ok(t.limitFor("a.example") <= 0);
});

Deno.test("LimitTable rejects a limit that is not an integer", () => {
  const t = new LimitTable();
  assert.throws(() => t.set("a.example", 1.5), RangeError);
  assert.throws(() => (t.defaultLimit = Number.NaN), RangeError);
  assert.throws(() => new LimitTable(0, { "a.example": Infinity }), RangeError);
});

Deno.test("ProxyRateLimiter limit setters accept every documented form", () => {
  const p = new ProxyRateLimiter({
    defaultMaxConnectionsPerHost: 2,
    hostLimits: { "a.example": 1 },
  });
  p.setDefaultMaxConnectionsPerHost(4);
  p.setHostLimit("b.example:8443", 3);
  p.setHostLimits({ "c.example": 5, "d.example": 0 });
  p.removeHostLimit("c.example");
  p.setHostLimit("e.example", 0);
  assert.equal(p.proxyUrl, null);
});

Deno.test("LimitTable runtime overrides sit on top of the rules, pattern by pattern", () => {
  const t = new LimitTable();
  t.rules = new RuleTable({
    default: 25,
    hosts: { "a.example.org": 5, "*.example.org": 10 },
    groups: [{ name: "g", match: ["*.example.org"], limit: 30 }],
  });
  assert.equal(t.limitFor("a.example.org"), 5);
  assert.equal(t.limitFor("b.example.org"), 10);
  assert.equal(t.defaultLimit, 25);
  // A runtime override replaces the same pattern; the most specific pattern still wins.
  t.set("*.Example.org", 3);
  assert.equal(t.limitFor("b.example.org"), 3);
  assert.equal(t.limitFor("a.example.org"), 5);
  t.set("a.example.org", 1);
  assert.equal(t.limitFor("a.example.org"), 1);
  // Removing an override brings the rule back, not the default.
  t.delete("a.example.org");
  assert.equal(t.limitFor("a.example.org"), 5);
  t.set("*.example.org", 0);
  assert.equal(t.limitFor("b.example.org"), 10);
  // A runtime default replaces only the rules' default.
  t.defaultLimit = 2;
  assert.equal(t.limitFor("other.example"), 2);
  assert.equal(t.limitFor("b.example.org"), 10);
  t.deleteDefault();
  assert.equal(t.limitFor("other.example"), 25);
  assert.deepEqual(t.lookup("b.example.org").group, { name: "g", limit: 30 });
  assert.equal(t.lookup("other.example").group, undefined);
});

Deno.test("LimitTable keeps runtime overrides when new rules are swapped in", () => {
  const t = new LimitTable(undefined, { "a.example": 7 });
  t.rules = new RuleTable({ default: 3, hosts: { "a.example": 1, "b.example": 2 } });
  assert.equal(t.limitFor("a.example"), 7);
  assert.equal(t.limitFor("b.example"), 2);
  t.rules = new RuleTable({ default: 4 });
  assert.equal(t.limitFor("a.example"), 7);
  assert.equal(t.limitFor("b.example"), 4);
  assert.deepEqual(t.entries(), { "a.example": 7 });
});

Deno.test("LimitTable rejects a host that is not a host pattern and keeps its overrides", () => {
  const t = new LimitTable(0, { "a.example": 1 });
  assert.throws(() => t.set("not a host", 1), TypeError);
  assert.throws(() => t.set("a.*.example", 1), TypeError);
  assert.throws(() => t.replace({ "b.example": 2, "bad host": 3 }), TypeError);
  assert.deepEqual(t.entries(), { "a.example": 1 });
});

Deno.test("LimitTable host limit applies to every port of the host unless host:port has its own", () => {
  const t = new LimitTable(0, { "b.example": 6, "b.example:8443": 2 });
  assert.equal(t.limitFor("b.example:8080"), 6);
  assert.equal(t.limitFor("b.example:8443"), 2);
  assert.equal(t.limitFor("b.example"), 6);
});

Deno.test("LimitTable runtime wildcard applies to hosts under it", () => {
  const t = new LimitTable(1);
  t.set("*.example.org", 4);
  assert.equal(t.limitFor("a.example.org"), 4);
  assert.equal(t.limitFor("example.org"), 1);
});

Deno.test("LimitTable lookup, asked before a change, answers anew after each kind of change", () => {
  const t = new LimitTable(3);
  const limit = (key: string) => t.lookup(key).limit;
  assert.equal(limit("a.example"), 3);
  t.set("a.example", 5);
  assert.equal(limit("a.example"), 5);
  t.delete("a.example");
  assert.equal(limit("a.example"), 3);
  t.replace({ "a.example": 6 });
  assert.equal(limit("a.example"), 6);
  t.set("a.example", 0);
  assert.equal(limit("a.example"), 3);
  t.defaultLimit = 8;
  assert.equal(limit("a.example"), 8);
  t.rules = new RuleTable({ default: 4, hosts: { "*.example": 2 } });
  assert.equal(limit("a.example"), 2);
  t.rules = new RuleTable({ default: 4 });
  assert.equal(limit("a.example"), 8);
  t.deleteDefault();
  assert.equal(limit("a.example"), 4);
  // Many hosts asked once each: the memory starts over, the answers stay right.
  for (let i = 0; i < 5000; i++) assert.equal(limit(`h${i}.example`), 4);
  t.set("*.example", 1);
  assert.equal(limit("h1.example"), 1);
  assert.equal(limit("a.example"), 1);
});
