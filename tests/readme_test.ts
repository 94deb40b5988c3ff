// The README's TypeScript holds as written: every block type-checks against
// this checkout (imported as `@dprl/cli`, as after `deno add jsr:@dprl/cli`),
// the blocks that open nothing run, and every dprl type or class the README
// names is exported by mod.ts.
import assert from "node:assert/strict";
import { consumer, ROOT, run } from "./_helpers/spawn.ts";

const README = Deno.readTextFileSync(`${ROOT}/README.md`);

/** The README's `ts` blocks, each with a file name: its `// name.ts` first line, or its number. */
function readmeBlocks(): { name: string; code: string }[] {
  return [...README.matchAll(/```ts\n([\s\S]*?)```/g)].map((m, i) => ({
    name: /^\/\/ (\w+\.ts)\n/.exec(m[1])?.[1] ?? `readme_block_${i + 1}.ts`,
    code: m[1],
  }));
}

/** A block that starts, serves, fetches or spawns nothing runs in a moment and on its own. */
function opensNothing(code: string): boolean {
  return !/\.start\(|listenAndServe|Deno\.serve|fetch\(|new Worker/.test(code);
}

Deno.test("every TypeScript block of the README type-checks against this checkout", async () => {
  const blocks = readmeBlocks();
  assert.ok(blocks.length >= 7, `${blocks.length} blocks`);
  await using project = await consumer(Object.fromEntries(blocks.map((b) => [b.name, b.code])));
  // One program for all but a worker's file, which has a lib of its own.
  const worker = (b: { code: string }) => b.code.includes('<reference lib="deno.worker" />');
  const groups = [blocks.filter((b) => !worker(b)), ...blocks.filter(worker).map((b) => [b])];
  for (const group of groups) {
    const r = await run(
      Deno.execPath(),
      ["check", "-q", ...group.map((b) => b.name)],
      project.path,
    );
    assert.equal(
      r.code,
      0,
      `${group.map((b) => `${b.name}:\n${b.code}`).join("\n")}\n${r.transcript}`,
    );
  }
});

Deno.test("the README's blocks that open nothing run as written", async () => {
  const blocks = readmeBlocks().filter((b) => opensNothing(b.code));
  assert.ok(blocks.length >= 2, blocks.map((b) => b.code).join("\n---\n"));
  // The TLS example reads the CA of Redis's certificate from ca.pem.
  const files: Record<string, string> = Object.fromEntries(blocks.map((b) => [b.name, b.code]));
  files["ca.pem"] = await Deno.readTextFile(`${ROOT}/tests/_helpers/tls/ca.pem`);
  await using project = await consumer(files);
  for (const b of blocks) {
    const r = await run(
      Deno.execPath(),
      ["run", "--allow-net", "--allow-read=.", b.name],
      project.path,
    );
    assert.equal(r.code, 0, `${b.name}:\n${b.code}\n${r.transcript}`);
  }
});

/** Names mod.ts exports, types included. */
function modExports(): Set<string> {
  const mod = Deno.readTextFileSync(`${ROOT}/mod.ts`);
  const names = new Set<string>();
  for (const m of mod.matchAll(/^export (?:type )?\{([^}]*)\}/gm)) {
    for (const part of m[1].split(",")) {
      const name = part.trim().replace(/^type\s+/, "");
      if (name) names.add(name);
    }
  }
  for (const m of mod.matchAll(/^export (?:const|function|class|interface|type) (\w+)/gm)) {
    names.add(m[1]);
  }
  return names;
}

/** Names that dprl's own modules declare for export (lib/). */
async function libDeclarations(): Promise<Set<string>> {
  const names = new Set<string>();
  const walk = async (dir: string): Promise<void> => {
    for await (const e of Deno.readDir(dir)) {
      if (e.isDirectory) await walk(`${dir}/${e.name}`);
      else if (e.name.endsWith(".ts")) {
        const source = await Deno.readTextFile(`${dir}/${e.name}`);
        for (
          const m of source.matchAll(/^export (?:class|interface|type|function|const) (\w+)/gm)
        ) {
          names.add(m[1]);
        }
      }
    }
  };
  await walk(`${ROOT}/lib`);
  return names;
}

Deno.test("every dprl class or type the README names, and every name its code imports, mod.ts exports", async () => {
  const exported = modExports();
  const declared = await libDeclarations();
  const named = [...README.matchAll(/`([A-Z][a-z]+[A-Z][A-Za-z]*)`/g)].map((m) => m[1]);
  const imported = [...README.matchAll(/import \{([^}]*)\} from "@dprl\/cli"/g)].flatMap((m) =>
    m[1].split(",").map((s) => s.trim().replace(/^type\s+/, "")).filter(Boolean)
  );
  assert.ok(named.includes("ProxyRateLimiter") && imported.includes("LimitRules"));
  // A name the README gives that dprl declares (not Go's or Redis's) is exported.
  const dprls = named.filter((name) => declared.has(name));
  assert.ok(dprls.includes("ProxyRateLimiter") && dprls.includes("RulesError"), dprls.join());
  for (const name of new Set([...dprls, ...imported])) {
    assert.ok(exported.has(name), `mod.ts exports ${name}, which the README names`);
  }
});
