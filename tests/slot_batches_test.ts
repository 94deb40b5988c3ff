// When batched calls go: acquires at the end of their turn, slots given back
// with the next call of their slot or within a few ms, one call in flight
// per host and a few per slot.
import assert from "node:assert/strict";
import { CALLS_PER_SLOT, RELEASE_DELAY_MS, SlotBatches } from "../lib/limit/slot_batches.ts";
import { waitFor } from "./_helpers/raw.ts";

function recorder() {
  const calls: { slot: string; hosts: string[]; answer: () => void }[] = [];
  const batches = new SlotBatches({
    slotOf: (host) => host.split(".")[0], // "s1.a": slot s1
    send: (slot, hosts, answered) => {
      calls.push({ slot, hosts, answer: answered });
      return true;
    },
  });
  return { calls, batches };
}

Deno.test("an acquire goes at the end of its turn, with what its slot gave back meanwhile", async () => {
  const { calls, batches } = recorder();
  batches.add("s1.released", false);
  batches.add("s1.asked", true);
  batches.add("s2.asked", true);
  assert.equal(calls.length, 0, "nothing within the turn");
  await Promise.resolve();
  assert.deepEqual(calls.map((c) => [c.slot, c.hosts]), [
    ["s1", ["s1.released", "s1.asked"]],
    ["s2", ["s2.asked"]],
  ]);
});

Deno.test("a slot given back alone goes within the delay", async () => {
  const { calls, batches } = recorder();
  const since = performance.now();
  batches.add("s1.released", false);
  await Promise.resolve();
  assert.equal(calls.length, 0);
  await waitFor(() => calls.length === 1, "the release call");
  assert.ok(performance.now() - since >= RELEASE_DELAY_MS - 1);
  assert.deepEqual(calls[0].hosts, ["s1.released"]);
});

Deno.test("while a host's call is in flight, what comes for it waits for the answer; other hosts of its slot go at once", async () => {
  const { calls, batches } = recorder();
  batches.add("s1.a", true);
  await Promise.resolve();
  assert.equal(calls.length, 1);
  batches.add("s1.a", true);
  batches.add("s1.b", true);
  batches.add("s1.c", true);
  batches.add("s2.d", true);
  await Promise.resolve();
  assert.deepEqual(calls.map((c) => c.hosts), [["s1.a"], ["s1.b", "s1.c"], ["s2.d"]], "s1.a waits");
  calls[0].answer();
  assert.deepEqual(calls.map((c) => c.hosts).at(-1), ["s1.a"]);
});

Deno.test(`a slot has at most ${CALLS_PER_SLOT} calls in flight; the rest goes in one call once one is answered`, async () => {
  const { calls, batches } = recorder();
  for (let i = 0; i < CALLS_PER_SLOT; i++) {
    batches.add(`s1.h${i}`, true);
    await Promise.resolve();
  }
  assert.equal(calls.length, CALLS_PER_SLOT);
  batches.add("s1.x", true);
  batches.add("s1.y", true);
  await Promise.resolve();
  assert.equal(calls.length, CALLS_PER_SLOT, "the slot's calls are all in flight");
  calls[0].answer();
  assert.deepEqual(calls.at(-1)!.hosts, ["s1.x", "s1.y"]);
});

Deno.test("flushHost sends its host at once, or as soon as its call in flight is answered", async () => {
  const { calls, batches } = recorder();
  batches.add("s1.a", false);
  await batches.flushHost("s1.a");
  assert.deepEqual(calls.map((c) => c.hosts), [["s1.a"]], "nothing in flight: at once");
  await batches.flushHost("s1.a"); // written already: nothing waits
  batches.add("s1.a", false);
  let written = false;
  const flushed = batches.flushHost("s1.a").then(() => written = true);
  await Promise.resolve();
  assert.equal(written, false, "one call of a host in flight at a time");
  assert.equal(calls.length, 1);
  calls[0].answer();
  await flushed;
  assert.deepEqual(calls.map((c) => c.hosts), [["s1.a"], ["s1.a"]]);
  batches.clear();
});
