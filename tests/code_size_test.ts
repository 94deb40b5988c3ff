// The shape of the library: no file over 600 lines and no import cycle
// between its files (type imports included). Functions over 80 lines are
// caught by `deno lint` (scripts/lint_rules.ts).
import assert from "node:assert/strict";

const MAX_FILE_LINES = 600;
const root = new URL("../", import.meta.url);

async function libraryFiles(): Promise<string[]> {
  const files = ["mod.ts", "cli.ts"];
  const walk = async (dir: string): Promise<void> => {
    for await (const entry of Deno.readDir(new URL(dir, root))) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory) await walk(path);
      else if (path.endsWith(".ts")) files.push(path);
    }
  };
  await walk("lib");
  return files.sort();
}

const IMPORT =
  /^\s*(?:import|export)\s[^;]*?\sfrom\s+"(\.{1,2}\/[^"]+)"|import\("(\.{1,2}\/[^"]+)"\)/gm;

/** The files each file imports (relative specifiers, resolved), by path from the root. */
async function importGraph(files: string[]): Promise<Map<string, string[]>> {
  const graph = new Map<string, string[]>();
  for (const file of files) {
    const text = await Deno.readTextFile(new URL(file, root));
    const to = [...text.matchAll(IMPORT)].map((m) =>
      new URL(m[1] ?? m[2], new URL(file, root)).href.slice(root.href.length)
    );
    graph.set(file, to);
  }
  return graph;
}

/** One import cycle of `graph`, as the files along it, or `null`. */
function findCycle(graph: Map<string, string[]>): string[] | null {
  const state = new Map<string, "open" | "done">();
  const path: string[] = [];
  const visit = (file: string): string[] | null => {
    state.set(file, "open");
    path.push(file);
    for (const next of graph.get(file) ?? []) {
      if (state.get(next) === "open") return [...path.slice(path.indexOf(next)), next];
      if (!state.has(next)) {
        const cycle = visit(next);
        if (cycle) return cycle;
      }
    }
    path.pop();
    state.set(file, "done");
    return null;
  };
  for (const file of graph.keys()) {
    if (!state.has(file)) {
      const cycle = visit(file);
      if (cycle) return cycle;
    }
  }
  return null;
}

Deno.test("no file of the library is over 600 lines", async () => {
  const long: string[] = [];
  for (const file of await libraryFiles()) {
    const lines = (await Deno.readTextFile(new URL(file, root))).split("\n").length - 1;
    if (lines > MAX_FILE_LINES) long.push(`${file}: ${lines} lines`);
  }
  assert.deepEqual(long, []);
});

Deno.test("no import cycle between files of the library", async () => {
  const graph = await importGraph(await libraryFiles());
  assert.ok(graph.get("lib/limit/redis_limiter.ts")?.includes("lib/limit/host_ledger.ts"));
  assert.equal(findCycle(graph)?.join(" -> ") ?? null, null);
});

Deno.test("the cycle finder finds a cycle", () => {
  const graph = new Map([["a.ts", ["b.ts"]], ["b.ts", ["c.ts"]], ["c.ts", ["a.ts"]]]);
  assert.deepEqual(findCycle(graph), ["a.ts", "b.ts", "c.ts", "a.ts"]);
  assert.equal(findCycle(new Map([["a.ts", ["b.ts"]], ["b.ts", []]])), null);
});
