// Remembered answers: computed once per key, never for a throw, and the
// memory starts over when full.
import assert from "node:assert/strict";
import { boundedMemo } from "../lib/bounded_memo.ts";

Deno.test("a key is computed once, null answers included; a throw is not remembered", () => {
  const calls: string[] = [];
  const f = boundedMemo((k) => {
    calls.push(k);
    if (k === "bad") throw new RangeError("bad key");
    return k === "none" ? null : k.length;
  }, 8);
  assert.equal(f("abc"), 3);
  assert.equal(f("abc"), 3);
  assert.equal(f("none"), null);
  assert.equal(f("none"), null);
  assert.throws(() => f("bad"), RangeError);
  assert.throws(() => f("bad"), RangeError);
  assert.deepEqual(calls, ["abc", "none", "bad", "bad"]);
});

Deno.test("past its bound the memory starts over: ever new keys cannot grow it", () => {
  let calls = 0;
  const f = boundedMemo((k) => (calls++, k), 3);
  for (const k of ["a", "b", "c"]) f(k);
  f("a");
  assert.equal(calls, 3, "remembered while under the bound");
  f("d"); // full: starts over with d
  f("a");
  assert.equal(calls, 5, "a was forgotten");
});
