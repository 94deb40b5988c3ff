import assert from "node:assert/strict";
import { reloadRules } from "../lib/config/reload.ts";
import { LimitTable } from "../lib/limit/limit_table.ts";
import { RuleTable } from "../lib/limit/rules/rule_table.ts";

const FLAGS = { "port": {}, "max-connections": {}, "host-limit": { multiple: true } };

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("reload builds a new table from the file and names the changed rules", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/dprl.yaml`;
    const old = new RuleTable({ default: 25, hosts: { "a.example": 5, "b.example": 1 } });
    await Deno.writeTextFile(path, "default: 25\nhosts:\n  a.example: 3\n  '*.c.example': 2\n");
    const result = await reloadRules(old, { path, flags: FLAGS });
    assert.ok(result.ok);
    assert.notEqual(result.table, old);
    assert.equal(result.table.lookup("a.example").limit, 3);
    assert.equal(result.table.lookup("x.c.example").limit, 2);
    assert.equal(old.lookup("a.example").limit, 5);
    assert.deepEqual(result.changes, [
      { rule: "hosts.*.c.example", a: undefined, b: "2" },
      { rule: "hosts.a.example", a: "5", b: "3" },
      { rule: "hosts.b.example", a: "1", b: undefined },
    ]);
  });
});

Deno.test("reload of a broken file keeps the old table and returns the error", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/dprl.yaml`;
    const limits = new LimitTable();
    limits.rules = new RuleTable({ default: 25, hosts: { "a.example": 5 } });
    const before = limits.rules;
    const broken = [
      [
        "default: 25\nhosts:\n  a.example: -3\n",
        `${path}:3:14: hosts.a.example must be an integer >= 0, got -3`,
      ],
      ["default: 25\nhosts:\n  a.example: 1\n a: [\n", `${path}:4:`],
      ["default: 25\nmax-conections: 3\n", `${path}:2:1: max-conections is not a setting`],
    ];
    for (const [text, message] of broken) {
      await Deno.writeTextFile(path, text);
      const result = await reloadRules(limits.rules, { path, flags: FLAGS });
      assert.ok(!result.ok);
      assert.equal(result.table, before);
      assert.ok(result.error.message.startsWith(message), result.error.message);
      limits.rules = result.table;
      assert.equal(limits.limitFor("a.example"), 5);
      assert.equal(limits.limitFor("other.example"), 25);
    }
    await Deno.remove(path);
    const missing = await reloadRules(before, { path, flags: FLAGS });
    assert.ok(!missing.ok);
    assert.equal(missing.table, before);
    assert.equal(missing.error.message, `${path}: no such file`);
  });
});

Deno.test("reload layers the file between the rules below and above it", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/dprl.json`;
    await Deno.writeTextFile(path, JSON.stringify({ hosts: { "a.example": 3, "b.example": 4 } }));
    const result = await reloadRules(new RuleTable(), {
      path,
      flags: FLAGS,
      below: { default: 9, hosts: { "a.example": 1, "c.example": 2 } },
      above: { hosts: { "b.example": 8 } },
    });
    assert.ok(result.ok);
    assert.deepEqual(result.table.rules, {
      default: 9,
      hosts: { "a.example": 3, "b.example": 8, "c.example": 2 },
    });
    assert.deepEqual(result.config.rules, { hosts: { "a.example": 3, "b.example": 4 } });
  });
});
