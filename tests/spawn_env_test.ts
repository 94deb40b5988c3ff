// Subprocesses of the tests never see the developer's own dprl, Redis or proxy
// settings: one environment for all of them (tests/_helpers/spawn.ts).
import assert from "node:assert/strict";
import { baseEnv, ROOT, run } from "./_helpers/spawn.ts";

const LEAKY = { DPRL_MAX_CONNECTIONS: "7", REDIS_URL: "redis://10.9.9.9:6379", LOG_LEVEL: "debug" };

Deno.test("baseEnv drops DPRL_*, REDIS_*, LOG_LEVEL and proxy variables, and a child does not see them", async () => {
  const before = Object.fromEntries(Object.keys(LEAKY).map((k) => [k, Deno.env.get(k)]));
  try {
    for (const [k, v] of Object.entries({ ...LEAKY, https_proxy: "http://10.9.9.9:3128" })) {
      Deno.env.set(k, v);
    }
    const env = baseEnv();
    for (const k of [...Object.keys(LEAKY), "https_proxy"]) assert.equal(env[k], undefined, k);
    const seen = await run(
      Deno.execPath(),
      ["eval", "console.log(JSON.stringify(Deno.env.toObject()))"],
      ROOT,
    );
    assert.equal(seen.code, 0, seen.transcript);
    const child = JSON.parse(seen.stdout);
    for (const k of Object.keys(LEAKY)) assert.equal(child[k], undefined, k);
  } finally {
    Deno.env.delete("https_proxy");
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
  }
});

Deno.test("every deno subprocess a test starts has a cleared environment", async () => {
  const leaks: string[] = [];
  for (const dir of ["tests", "tests/_helpers"]) {
    for await (const entry of Deno.readDir(`${ROOT}/${dir}`)) {
      if (!entry.name.endsWith(".ts")) continue;
      const source = await Deno.readTextFile(`${ROOT}/${dir}/${entry.name}`);
      for (const m of source.matchAll(/new Deno\.Command\(Deno\.execPath\(\), \{[\s\S]*?\}\)/g)) {
        if (!/clearEnv: true/.test(m[0])) {
          leaks.push(`${dir}/${entry.name}:${source.slice(0, m.index).split("\n").length}`);
        }
      }
    }
  }
  assert.deepEqual(
    leaks,
    [],
    "spawn deno through tests/_helpers/spawn.ts or with clearEnv and baseEnv()",
  );
});
