import assert from "node:assert/strict";
import { HostPauses } from "../lib/limit/host_pauses.ts";

Deno.test("a pause runs until its end, a longer one lengthens it, a shorter one does not", () => {
  const pauses = new HostPauses();
  assert.equal(pauses.pause("a.example", 2_000, 429), true);
  assert.equal(pauses.pause("a.example", 1_500, 503), false, "shorter: kept as it is");
  assert.deepEqual(pauses.get("a.example", 1_000), { until: 2_000, status: 429 });
  assert.equal(pauses.pause("a.example", 3_000, 503), true);
  assert.deepEqual(pauses.get("a.example", 2_500), { until: 3_000, status: 503 });
  assert.equal(pauses.get("b.example", 0), undefined);
});

Deno.test("an ended pause is forgotten", () => {
  const pauses = new HostPauses();
  pauses.pause("a.example", 2_000, 429);
  pauses.pause("b.example", 5_000, 503);
  assert.deepEqual([...pauses.running(2_000).keys()], ["b.example"]);
  assert.equal(pauses.get("a.example", 2_000), undefined);
  assert.equal(pauses.pause("a.example", 2_500, 429), true, "a new pause after the end");
});
