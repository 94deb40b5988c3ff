import assert from "node:assert/strict";
import { RuleTable } from "../lib/limit/rules/rule_table.ts";
import { canonicalRules, layerRules } from "../lib/limit/rules/rules.ts";
import { diffRules } from "../lib/limit/rules/diff.ts";
import { formatRate, parseRate } from "../lib/limit/gcra.ts";
import { loadConfigFile } from "../lib/config/config_file.ts";

Deno.test("rules: rate and retry-after-max per host, shared per group, and by default", () => {
  const table = new RuleTable({
    default: { limit: 25, rate: "600/m", "retry-after-max": "30s" },
    hosts: {
      "api.example.com": { limit: 5, rate: "10/s" },
      "*.example.org": { rate: "1/s" },
      "calm.example.org": { limit: 3, "retry-after-max": 0 },
    },
    groups: [{ name: "storage", match: ["*.s3.example"], limit: 100, rate: "50/s" }],
  });
  assert.deepEqual(table.lookup("api.example.com").rate, { perSecond: 10 });
  // A host rule without a limit takes the default's.
  assert.equal(table.lookup("a.example.org").limit, 25);
  assert.deepEqual(table.lookup("a.example.org").rate, { perSecond: 1 });
  assert.equal(table.lookup("a.example.org").retryAfterMax, 30_000);
  assert.equal(table.lookup("calm.example.org").retryAfterMax, 0);
  assert.deepEqual(table.lookup("calm.example.org").rate, { perSecond: 1 });
  assert.deepEqual(table.lookup("b.s3.example").rate, { perSecond: 50, group: "storage" });
  assert.deepEqual(table.lookup("other.example").rate, { perSecond: 10 });
  assert.equal(table.lookup("other.example").limit, 25);
  assert.ok(Object.isFrozen(table.lookup("other.example").rate));
  // Through a worker's plain data, the same.
  const copy = RuleTable.fromData(structuredClone(RuleTable.compile(table.rules)));
  assert.deepEqual(copy.lookup("b.s3.example"), table.lookup("b.s3.example"));
  assert.deepEqual(copy.lookup("other.example"), table.lookup("other.example"));
});

Deno.test("rules: settings in canonical form, layered and diffed", () => {
  assert.deepEqual(
    canonicalRules({ default: { rate: "60/m" }, hosts: { "A.example:443": { rate: "3600/h" } } }),
    { default: { rate: "1/s" }, hosts: { "a.example": { rate: "1/s" } } },
  );
  assert.deepEqual(canonicalRules({ default: { limit: 4 } }), { default: 4 });
  // A flag's rate under a file's limit for the same host: both apply.
  assert.deepEqual(
    layerRules(
      { default: { limit: 10, rate: "5/s" }, hosts: { "a.example": { rate: "2/s" } } },
      { default: 20, hosts: { "a.example": 3 } },
    ),
    { default: { limit: 20, rate: "5/s" }, hosts: { "a.example": { limit: 3, rate: "2/s" } } },
  );
  assert.deepEqual(
    diffRules({ hosts: { "a.example": { limit: 2, rate: "1/s" } } }, {
      hosts: { "a.example": { limit: 2, rate: "2/s" } },
    }),
    [{ rule: "hosts.a.example", a: "2 (rate 1/s)", b: "2 (rate 2/s)" }],
  );
});

Deno.test("rates read back as written in their shortest form", () => {
  for (
    const [text, out] of [["10/s", "10/s"], ["0.5/s", "30/m"], ["90/h", "90/h"], ["6/m", "6/m"]]
  ) {
    assert.equal(formatRate(parseRate(text)), out);
    assert.equal(parseRate(formatRate(parseRate(text))), parseRate(text));
  }
  assert.equal(formatRate(0.1), "6/m");
});

Deno.test("config file: rule settings in YAML, a default mapping, and errors that name file, line and rule", async () => {
  const dir = await Deno.makeTempDir({ prefix: "dprl-settings-" });
  try {
    const path = `${dir}/dprl.yaml`;
    await Deno.writeTextFile(
      path,
      [
        "default: { limit: 25, rate: 100/s, adaptive: true }",
        "hosts:",
        "  api.example.com: { limit: 5, rate: 10/s, retry-after-max: 5m, adaptive: false }",
        "groups:",
        "  - { name: s3, match: ['*.s3.example'], limit: 50, rate: 600/m }",
      ].join("\n"),
    );
    const table = new RuleTable((await loadConfigFile(path, { flags: {} })).rules);
    assert.deepEqual(table.lookup("api.example.com"), {
      limit: 5,
      group: undefined,
      rate: { perSecond: 10 },
      retryAfterMax: 300_000,
      adaptive: false,
    });
    assert.deepEqual(table.lookup("a.s3.example").rate, { perSecond: 10, group: "s3" });
    assert.equal(table.lookup("a.s3.example").adaptive, true);
    assert.equal(table.lookup("other.example").limit, 25);
    await Deno.writeTextFile(path, "hosts:\n  api.example.com: { rate: soon }\n");
    await assert.rejects(
      () => loadConfigFile(path, { flags: {} }),
      /dprl\.yaml:2:\d+: hosts\.api\.example\.com\.rate must be a rate such as 10\/s/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
