import assert from "node:assert/strict";
import { watchConfigFile } from "../lib/config/watch.ts";

/** Waits until `done()` or the bound passes; says which. */
async function until(done: () => boolean, boundMs = 10_000): Promise<boolean> {
  const end = Date.now() + boundMs;
  while (!done() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  return done();
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("config watch calls back once per burst of changes, after the content changed", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/dprl.yaml`;
  await Deno.writeTextFile(path, "default: 1\n");
  let calls = 0;
  const watcher = watchConfigFile({ path, debounceMs: 300, onChange: () => void calls++ });
  try {
    await pause(200); // let the watcher start
    for (let i = 2; i <= 6; i++) await Deno.writeTextFile(path, `default: ${i}\n`);
    assert.ok(await until(() => calls >= 1), "a change was reported");
    await pause(900);
    assert.equal(calls, 1, "five writes in a burst make one call");

    // The same content again, or another file in the directory: no call.
    await Deno.writeTextFile(path, "default: 6\n");
    await Deno.writeTextFile(`${dir}/other.txt`, "x");
    await pause(900);
    assert.equal(calls, 1);

    // An editor's save: write a copy, rename it over the file.
    await Deno.writeTextFile(`${dir}/.dprl.yaml.swp`, "default: 7\n");
    await Deno.rename(`${dir}/.dprl.yaml.swp`, path);
    assert.ok(await until(() => calls === 2), "a replaced file was reported");

    // A removed file is a change too (the reload reports it).
    await Deno.remove(path);
    assert.ok(await until(() => calls === 3), "a removed file was reported");
  } finally {
    await watcher.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config watch never overlaps its callbacks and stops on close", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/dprl.json`;
  await Deno.writeTextFile(path, "{}");
  let running = 0;
  let overlap = false;
  let calls = 0;
  const watcher = watchConfigFile({
    path,
    debounceMs: 50,
    onChange: async () => {
      overlap ||= running > 0;
      running++;
      calls++;
      await pause(400);
      running--;
    },
  });
  try {
    await pause(200);
    await Deno.writeTextFile(path, '{"default": 1}');
    assert.ok(await until(() => calls === 1));
    await Deno.writeTextFile(path, '{"default": 2}');
    assert.ok(await until(() => calls === 2));
    assert.equal(overlap, false);
  } finally {
    await watcher.close();
  }
  await Deno.writeTextFile(path, '{"default": 3}');
  await pause(500);
  assert.equal(calls, 2, "no call after close");
  await Deno.remove(dir, { recursive: true });
});
