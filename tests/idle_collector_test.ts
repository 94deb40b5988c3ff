// The collection a quiet proxy runs: once per quiet spell, only after the
// heap has grown, never while requests keep coming; and V8's own collection
// is reachable without start-up flags or permissions.
import assert from "node:assert/strict";
import { fullCollection, heapUsed, IdleCollector } from "../lib/idle_collector.ts";

const MIB = 1024 * 1024;

/** A collector over a pretend heap: `grow` adds garbage, a collection frees it. */
function pretend(live = 10 * MIB) {
  let heap = live;
  let collections = 0;
  const collector = new IdleCollector({
    collect: () => {
      collections++;
      heap = live;
    },
    heapUsed: () => heap,
  });
  return {
    collector,
    grow: (bytes: number) => heap += bytes,
    get collections() {
      return collections;
    },
  };
}

Deno.test("a quiet proxy collects once, after a second with no new request, when its heap grew", () => {
  const p = pretend();
  p.grow(20 * MIB);
  assert.equal(p.collector.tick(0, 500), false);
  assert.equal(p.collector.tick(750, 500), false, "quiet for less than a second");
  assert.equal(p.collector.tick(1000, 500), true);
  assert.equal(p.collections, 1);
  for (let t = 1250; t <= 10_000; t += 250) p.collector.tick(t, 500);
  assert.equal(p.collections, 1, "once per quiet spell");
});

Deno.test("no collection while requests keep coming, nor when the heap has hardly grown", () => {
  const p = pretend();
  p.grow(50 * MIB);
  for (let t = 0, n = 0; t <= 10_000; t += 250, n++) p.collector.tick(t, n);
  assert.equal(p.collections, 0, "busy: requests begin every tick");
  p.grow(-50 * MIB + 3 * MIB);
  for (let t = 10_250; t <= 20_000; t += 250) p.collector.tick(t, 40);
  assert.equal(p.collections, 0, "3 MiB of growth is not worth a pause");
  p.grow(2 * MIB);
  p.collector.tick(20_250, 40);
  assert.equal(p.collections, 1, "5 MiB is");
});

Deno.test("the next burst makes the next quiet spell collect again", () => {
  const p = pretend();
  p.grow(8 * MIB);
  p.collector.tick(0, 1);
  p.collector.tick(1000, 1);
  assert.equal(p.collections, 1);
  p.grow(8 * MIB);
  p.collector.tick(1250, 300);
  p.collector.tick(2250, 300);
  assert.equal(p.collections, 2);
});

Deno.test("V8's full collection is reachable and frees what is no longer held", () => {
  const gc = fullCollection();
  assert.ok(gc, "a full collection");
  assert.equal(fullCollection(), gc, "one for the whole process");
  let garbage: object[] | null = Array.from({ length: 200_000 }, (_, i) => ({ i }));
  const held = heapUsed();
  assert.ok(garbage.length > 0);
  garbage = null;
  gc();
  assert.ok(heapUsed() < held - 4 * MIB, `${heapUsed()} < ${held} - 4 MiB`);
});
