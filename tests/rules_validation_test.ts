import assert from "node:assert/strict";
import { diffRules } from "../lib/limit/rules/diff.ts";
import { RuleTable } from "../lib/limit/rules/rule_table.ts";
import {
  layerRules,
  parseHostPattern,
  RulesError,
  validateRules,
} from "../lib/limit/rules/rules.ts";
import { rulesFromLimits } from "../lib/limit/rules/rule_limits.ts";

function problem(rules: unknown): string {
  try {
    validateRules(rules);
  } catch (err) {
    assert.ok(err instanceof RulesError);
    return err.message;
  }
  assert.fail("the rules were accepted");
}

Deno.test("rules validation names the rule and the problem", () => {
  const cases: [unknown, string][] = [
    [[1], "the rules must be a mapping, got a list"],
    [{ default: -1 }, "default must be an integer >= 0, got -1"],
    [{ default: "25" }, 'default must be an integer >= 0, got "25"'],
    [{ hosts: [] }, "hosts must be a mapping of host to limit, got an empty list"],
    [
      { hosts: { "api.example.com": 1.5 } },
      "hosts.api.example.com must be an integer >= 0, got 1.5",
    ],
    [{ hosts: { "a b": 1 } }, 'hosts."a b" must be a host, host:port or *.suffix'],
    [{ hosts: { "http://a.example": 1 } }, "hosts.http://a.example must be a host"],
    [{ hosts: { "a.example:99999": 1 } }, "must have a port between 1 and 65535"],
    [{ hosts: { "a.example:": 1 } }, "hosts.a.example: must be a host"],
    [{ hosts: { "*.example.org:8443": 1 } }, "is a wildcard, which takes no port"],
    [{ hosts: { "*": 1 } }, "hosts.* matches every host: set default instead"],
    [{ hosts: { "a.*.org": 1 } }, "must have its wildcard as a whole first label"],
    [{ hosts: { "*a.org": 1 } }, "must have its wildcard as a whole first label"],
    [
      { hosts: { "A.example": 1, "a.example:443": 2 } },
      "hosts.a.example:443 is the same rule as hosts.A.example",
    ],
    [{ limits: {} }, "limits is not a rule field (default, hosts, groups)"],
    [{ groups: {} }, "groups must be a list of groups, got a mapping"],
    [{ groups: [1] }, "groups[0] must be a mapping with name, match and limit"],
    [{ groups: [{ name: "a b", match: ["x"], limit: 1 }] }, "groups[0].name must be a name"],
    [{ groups: [{ name: "g{1}", match: ["x"], limit: 1 }] }, "groups[0].name must be a name"],
    [{ groups: [{ name: "g", match: [], limit: 1 }] }, "groups[0].match must be a non-empty list"],
    [
      { groups: [{ name: "g", match: [3], limit: 1 }] },
      "groups[0].match[0] must be a host pattern",
    ],
    [{ groups: [{ name: "g", match: ["x"] }] }, "groups[0].limit must be an integer >= 0"],
    [
      { groups: [{ name: "g", match: ["x"], limit: 1, queue: 5 }] },
      "groups[0].queue is not a group field (name, match, limit, queue-timeout, queue-max, rate, retry-after-max, adaptive, via)",
    ],
    [
      { groups: [{ name: "g", match: ["x"], limit: 1 }, { name: "g", match: ["y"], limit: 1 }] },
      "groups[1].name is g, already the name of groups[0]",
    ],
    [
      {
        groups: [
          { name: "a", match: ["*.s3.example"], limit: 1 },
          { name: "b", match: ["y.example", "*.S3.example"], limit: 1 },
        ],
      },
      "groups[1].match[1] is *.s3.example, already matched by group a",
    ],
  ];
  for (const [rules, expected] of cases) {
    const message = problem(rules);
    assert.ok(message.includes(expected), `${JSON.stringify(rules)}: ${message}`);
  }
});

Deno.test("rules validation keeps the path of the problem", () => {
  try {
    new RuleTable({ groups: [{ name: "g", match: ["ok.example", "bad host"], limit: 1 }] });
    assert.fail("accepted");
  } catch (err) {
    assert.ok(err instanceof RulesError);
    assert.deepEqual(err.path, ["groups", 0, "match", 1]);
    assert.equal(err.inKey, false);
  }
  try {
    new RuleTable({ hosts: { "bad host": 1 } });
    assert.fail("accepted");
  } catch (err) {
    assert.ok(err instanceof RulesError);
    assert.deepEqual(err.path, ["hosts", "bad host"]);
    assert.equal(err.inKey, true);
  }
});

Deno.test("rules validation accepts the documented example", () => {
  const rules = {
    default: 25,
    hosts: { "api.example.com": 5, "*.example.org": 10, "cdn.example.net:8443": 2 },
    groups: [{ name: "storage", match: ["*.s3.amazonaws.com", "s3.amazonaws.com"], limit: 100 }],
  };
  assert.equal(validateRules(rules), rules);
});

Deno.test("host patterns normalise like host keys", () => {
  assert.equal(parseHostPattern("API.Example.com:443"), "api.example.com");
  assert.equal(parseHostPattern("api.example.com:80"), "api.example.com");
  assert.equal(parseHostPattern("api.example.com:8443"), "api.example.com:8443");
  assert.equal(parseHostPattern("*.Example.org."), "*.example.org");
  assert.equal(parseHostPattern("::1"), "[::1]");
  assert.equal(parseHostPattern("[FE80::1]:8080"), "[fe80::1]:8080");
  assert.equal(parseHostPattern("10.0.0.1:8000"), "10.0.0.1:8000");
  assert.equal(parseHostPattern("under_score.example"), "under_score.example");
});

Deno.test("layered rules: a higher layer replaces the same pattern and the default", () => {
  const flags = { default: 10, hosts: { "a.example": 1, "b.example": 2 } };
  const file = {
    hosts: { "A.example:443": 3, "*.example": 4 },
    groups: [{ name: "g", match: ["c.example"], limit: 5 }],
  };
  assert.deepEqual(layerRules(flags, file), {
    default: 10,
    hosts: { "*.example": 4, "a.example": 3, "b.example": 2 },
    groups: [{ name: "g", match: ["c.example"], limit: 5 }],
  });
  assert.deepEqual(layerRules(file, { default: 0 }).default, 0);
  assert.deepEqual(layerRules(file, { hosts: {} }).groups?.[0].name, "g");
  assert.equal(layerRules(file, { groups: [] }).groups, undefined);
});

Deno.test("rule diff names every differing rule and ignores spelling", () => {
  const a = {
    default: 25,
    hosts: { "API.example.com:443": 5, "*.example.org": 10, "same.example": 1 },
    groups: [{ name: "storage", match: ["s3.example", "*.s3.example"], limit: 100 }],
  };
  const b = {
    default: 20,
    hosts: { "api.example.com": 5, "*.example.org": 11, "new.example": 2, "same.example": 1 },
    groups: [
      { name: "storage", match: ["*.s3.example", "S3.example"], limit: 100 },
      { name: "cdn", match: ["*.cdn.example"], limit: 9 },
    ],
  };
  assert.deepEqual(diffRules(a, b), [
    { rule: "default", a: "25", b: "20" },
    { rule: "groups.cdn", a: undefined, b: "limit 9 for *.cdn.example" },
    { rule: "hosts.*.example.org", a: "10", b: "11" },
    { rule: "hosts.new.example", a: undefined, b: "2" },
  ]);
  assert.deepEqual(diffRules(a, structuredClone(a)), []);
  assert.deepEqual(
    diffRules({ groups: [{ name: "g", match: ["x"], limit: 1 }] }, {
      groups: [{ name: "g", match: ["x", "y"], limit: 1 }],
    }),
    [{ rule: "groups.g", a: "limit 1 for x", b: "limit 1 for x, y" }],
  );
});

Deno.test("limits given as options become rules: 0 or less is unlimited or no override", () => {
  assert.deepEqual(
    rulesFromLimits({ defaultLimit: -1, hostLimits: { "a.example": 2, "b.example": 0, c: -1 } }),
    { default: 0, hosts: { "a.example": 2 } },
  );
  assert.deepEqual(rulesFromLimits({}), {});
  assert.deepEqual(
    layerRules(rulesFromLimits({ defaultLimit: 5 }), { hosts: { "a.example": 1 } }),
    { default: 5, hosts: { "a.example": 1 } },
  );
});
