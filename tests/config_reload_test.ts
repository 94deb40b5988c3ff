// Reloading the config file: the table compiled in a Worker and adopted
// as the one compiled here would be, errors as the file names them, and
// reloads asked for together merged into one.
import assert from "node:assert/strict";
import { parse as parseYaml } from "yaml";
import {
  loadedTable,
  loadRulesFile,
  mergeRuns,
  type ReloadContext,
  RulesWorker,
} from "../lib/config/reload.ts";
import { loadConfigFile, parseConfig } from "../lib/config/config_file.ts";
import { readHostsSection } from "../lib/config/hosts_section.ts";
import { LimitTable } from "../lib/limit/limit_table.ts";
import { RuleTable } from "../lib/limit/rules/rule_table.ts";
import { startProxy } from "./_helpers/proxy.ts";

const FLAGS = { "port": {}, "max-connections": {}, "host-limit": { multiple: true } };

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const KEYS = [
  "a.example",
  "x.c.example",
  "b.example:8443",
  "b.example",
  "q.d.example",
  "e.example",
];

for (const worker of [true, false]) {
  Deno.test(`reload ${worker ? "in a worker" : "in this thread"} compiles the table and names the changes`, async () => {
    await withDir(async (dir) => {
      const path = `${dir}/dprl.yaml`;
      await Deno.writeTextFile(
        path,
        "default: 25\nhosts:\n  a.example: 3\n  '*.c.example': 2\n  b.example: { limit: 4, queue-max: 7 }\n" +
          "groups:\n  - { name: g, match: ['*.d.example', b.example:8443], limit: 9, queue-timeout: 5s }\n",
      );
      const current = new RuleTable({ default: 25, hosts: { "a.example": 5, "e.example": 1 } });
      const context: ReloadContext = {
        above: { hosts: { "e.example": 6 } },
        current: current.rulesText,
      };
      const below = { default: 10, hosts: { "f.example": 1 } };
      const loaded = await loadRulesFile({ path, flags: FLAGS, below, worker }, context);
      const table = loadedTable(loaded)!;
      const file = (await loadConfigFile(path, { flags: FLAGS })).rules;
      const expected = new RuleTable({
        ...file,
        hosts: { "f.example": 1, ...file.hosts, "e.example": 6 },
      });
      assert.deepEqual(table.rules, expected.rules);
      for (const key of KEYS) {
        assert.deepEqual(table.lookup(key), expected.lookup(key), key);
        assert.deepEqual(table.hostLimit(key), expected.hostLimit(key), key);
        assert.ok(Object.isFrozen(table.lookup(key)), key);
      }
      assert.deepEqual(loaded.fileRules, (await loadConfigFile(path, { flags: FLAGS })).rules);
      assert.equal(loaded.fileRules.hosts?.["f.example"], undefined, "the file's layer alone");
      assert.equal(loaded.fileRules.hosts?.["e.example"], undefined, "the file's layer alone");
      assert.deepEqual(loaded.changes.map((c) => c.rule), [
        "groups.g",
        "hosts.*.c.example",
        "hosts.a.example",
        "hosts.b.example",
        "hosts.e.example",
        "hosts.f.example",
      ]);
      assert.deepEqual(loaded.changes.find((c) => c.rule === "hosts.a.example"), {
        rule: "hosts.a.example",
        a: "5",
        b: "3",
      });
    });
  });
}

Deno.test("a kept worker serves reload after reload, a broken file between", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/dprl.yaml`;
    using worker = new RulesWorker();
    let current = new RuleTable().rulesText;
    for (
      const [text, changes] of [
        ["hosts:\n  a.example: 1\n", ["hosts.a.example"]],
        ["hosts:\n  a.example: -1\n", undefined],
        ["hosts:\n  a.example: 1\n  b.example: 2\n", ["hosts.b.example"]],
      ] as const
    ) {
      await Deno.writeTextFile(path, text);
      const load = loadRulesFile({ path, flags: FLAGS, worker }, { above: {}, current });
      if (!changes) {
        await assert.rejects(load, { name: "ConfigError" });
        continue;
      }
      const loaded = await load;
      assert.deepEqual(loaded.changes.map((c) => c.rule), changes);
      current = loadedTable(loaded)!.rulesText;
    }
  });
});

Deno.test("reload of a broken file throws the error naming the place, from the worker too", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/dprl.yaml`;
    const context = { above: {}, current: new RuleTable().rulesText };
    const broken = [
      ["default: 25\nhosts:\n  a.example: -3\n", `${path}:3:14: hosts.a.example must be`],
      ["hosts:\n  a.example: 1\n  b.example: 2\n  a.example: 3\n", `${path}:4:3: Map keys must be`],
      ["default: 25\nhosts:\n  a.example: 1\n a: [\n", `${path}:4:`],
      ["default: 25\nmax-conections: 3\n", `${path}:2:1: max-conections is not a setting`],
    ];
    for (const [text, message] of broken) {
      await Deno.writeTextFile(path, text);
      for (const worker of [true, false]) {
        const error = await loadRulesFile({ path, flags: FLAGS, worker }, context).then(
          () => assert.fail(`${text} loaded`),
          (err) => err,
        );
        assert.equal(error.name, "ConfigError");
        assert.ok(error.message.startsWith(message), error.message);
      }
    }
    await Deno.remove(path);
    await assert.rejects(loadRulesFile({ path, flags: FLAGS }, context), {
      message: `${path}: no such file`,
    });
  });
});

Deno.test("a large hosts section reads as the YAML parser reads it", () => {
  const keys = [
    "a.example",
    "'*.c.example'",
    '"*.d.example"',
    "b.example:8443",
    "face.be",
    "false",
    "null",
    "0x1f",
    "1e3",
    "y",
    "on",
    "'[::1]:8080'",
    "Mixed.Example",
    "h1.example # note",
  ];
  for (const key of keys) {
    const line = key.endsWith("# note") ? `  h1.example: 4 # note` : `  ${key}: 4`;
    for (
      const text of [
        `port: 1\nhosts:\n${line}\n  z.example: 5\n`,
        `hosts:\n  z.example: 5\n${line}\n`,
      ]
    ) {
      const section = readHostsSection(text);
      if (section) assert.deepEqual(section.hosts, parseYaml(text).hosts, text);
      // The same text behind a directive goes through the YAML parser alone.
      const general = `%YAML 1.2\n---\n${text}`;
      assert.equal(readHostsSection(general), undefined);
      const outcome = (t: string) => {
        try {
          return parseConfig(t, { path: "dprl.yaml", flags: FLAGS }).rules.hosts;
        } catch (err) {
          return (err as Error).message.replace(/^dprl\.yaml:\d+:\d+: /, "");
        }
      };
      assert.deepEqual(outcome(text), outcome(general), text);
    }
  }
  // Read alone only when every line is a plain `pattern: limit`.
  assert.equal(readHostsSection("hosts:\n  false: 1\n"), undefined);
  assert.equal(readHostsSection("hosts:\n  a.example: {limit: 1}\n"), undefined);
  assert.equal(readHostsSection("%YAML 1.1\n---\nhosts:\n  yes.example: 1\n"), undefined);
  assert.equal(readHostsSection("hosts:\n  a.example: 1\n   b.example: 2\n"), undefined);
  assert.deepEqual(readHostsSection("a: 1\nhosts:\n  b.example: 2\nc: 3\n"), {
    rest: "a: 1\nhosts:\n\nc: 3\n",
    offset: 5,
    hosts: { "b.example": 2 },
  });
});

Deno.test("a hosts: line that is not a top-level key is not taken for the section", () => {
  const scalar = "--- |\nhosts:\n  a.example: 1\n";
  assert.equal(typeof parseYaml(scalar), "string");
  assert.throws(() => parseConfig(scalar, { path: "dprl.yaml", flags: FLAGS }), {
    message: "dprl.yaml:1:5: the file must hold a mapping of settings",
  });
});

Deno.test("overrides over a table adopted from a worker weigh patterns as before", () => {
  const rules = {
    default: 5,
    hosts: { "*.example": 2, "a.b.example": 3, "a.b.example:8443": 4, "*.c.example": 6 },
    groups: [{ name: "g", match: ["*.d.c.example"], limit: 1 }],
  };
  const adopted = RuleTable.fromData(structuredClone(RuleTable.compile(rules)));
  const built = new LimitTable(undefined, { "*.b.example": 7, "x.c.example": 8, "*.c.example": 9 });
  built.rules = new RuleTable(rules);
  const limits = new LimitTable(undefined, {
    "*.b.example": 7,
    "x.c.example": 8,
    "*.c.example": 9,
  });
  limits.rules = adopted;
  const cases: [string, number][] = [
    ["a.b.example", 3], // the exact rule over the wildcard override
    ["a.b.example:8443", 4],
    ["z.b.example", 7], // the deeper wildcard override over *.example
    ["x.c.example", 8],
    ["y.d.c.example", 9], // the group's pattern sets no limit: the override of *.c.example
    ["other.org", 5],
  ];
  for (const [key, limit] of cases) {
    assert.equal(limits.limitFor(key), limit, key);
    assert.equal(built.limitFor(key), limit, key);
    assert.deepEqual(limits.lookup(key), built.lookup(key), key);
  }
  limits.delete("*.c.example");
  assert.equal(limits.limitFor("y.d.c.example"), 6, "the rule applies again");
});

Deno.test("reloads asked for together merge: one more read for all that came during a read", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/dprl.yaml`;
    await Deno.writeTextFile(path, "hosts:\n  a.example: 1\n");
    let reads = 0;
    let reading = 0;
    let overlapped = false;
    // The first read waits until the other reloads have been asked for.
    const { promise: started, resolve: start } = Promise.withResolvers<void>();
    const { promise: gate, resolve: open } = Promise.withResolvers<void>();
    await using proxy = await startProxy({
      loadRules: async () => {
        reads++;
        overlapped ||= reading++ > 0;
        try {
          if (reads === 1) {
            start();
            await gate;
          }
          return (await loadConfigFile(path, { flags: FLAGS })).rules;
        } finally {
          reading--;
        }
      },
    });
    const first = proxy.proxy.reload();
    await started;
    await Deno.writeTextFile(path, "hosts:\n  a.example: 2\n");
    const rest = Array.from({ length: 4 }, () => proxy.proxy.reload());
    open();
    const results = await Promise.all([first, ...rest]);
    assert.equal(reads, 2, "the four asked for during the first share one read");
    assert.equal(overlapped, false, "no two reads at once");
    for (const result of results) assert.equal(result.ok, true);
    assert.deepEqual(proxy.proxy.rules, { hosts: { "a.example": 2 } }, "the last file is in use");
    assert.deepEqual(await Promise.all(rest), Array(4).fill(await rest[0]), "one result for all");
  });
});

Deno.test("merged runs share a result or a rejection and never overlap", async () => {
  let runs = 0;
  let active = 0;
  const gates: (() => void)[] = [];
  const run = mergeRuns(async () => {
    const n = ++runs;
    assert.equal(active++, 0);
    await new Promise<void>((resolve) => gates.push(resolve));
    active--;
    if (n === 2) throw new Error("run 2 failed");
    return n;
  });
  const a = run();
  const b = run();
  const c = run();
  assert.equal(gates.length, 1);
  gates[0]();
  assert.equal(await a, 1);
  while (gates.length < 2) await Promise.resolve();
  const d = run(); // during run 2: joins run 3
  gates[1]();
  await assert.rejects(b, /run 2 failed/);
  await assert.rejects(c, /run 2 failed/);
  while (gates.length < 3) await Promise.resolve();
  gates[2]();
  assert.equal(await d, 3);
  assert.equal(runs, 3);
});
