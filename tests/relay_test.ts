// The one-way relay of tunnels, without sockets: whatever the pieces a
// source hands out (idle-sized, buffer-filling, large enough to grow the
// buffer to 1 MiB) and however a destination takes them (in parts, late),
// every byte arrives once and in order, and the large-buffer budget (1 MiB,
// then 4 MiB buffers) is whole again when the relay ends, whether it ended or
// failed.
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";
import { BufferBudget, relay } from "../lib/proxy/relay.ts";
import { BufferedReader } from "../lib/proxy/buffered_reader.ts";
import { memoryConn } from "./_helpers/memory_conn.ts";
import { concat } from "./_helpers/raw.ts";
import { patternBytes } from "./_helpers/upstream.ts";

const MiB = 1024 * 1024;

/**
 * A destination that takes at most `max` bytes a write, each write
 * resolving on a later turn, every eighth one after a timer.
 */
function partialWriter(max: number, failAfter = Infinity) {
  const parts: Uint8Array[] = [];
  let size = 0;
  return {
    async write(p: Uint8Array): Promise<number> {
      if (parts.length % 8 === 7) await new Promise((r) => setTimeout(r, 0));
      else await Promise.resolve();
      if (size >= failAfter) throw new Error("Broken pipe");
      const n = Math.min(p.length, max);
      parts.push(p.slice(0, n));
      size += n;
      return n;
    },
    bytes: (): Uint8Array => concat(parts),
  };
}

/** Piece sizes around the relay's thresholds: 512 B, 64 KiB, 256 KiB and 1 MiB. */
const pieceSize = fc.oneof(
  fc.integer({ min: 1, max: 600 }),
  fc.constantFrom(511, 512, 513, 64 * 1024, 256 * 1024, MiB),
  fc.integer({ min: 600, max: 6 * MiB }),
);

Deno.test("a relay passes every byte once and in order, and gives its large buffer back", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(pieceSize, { maxLength: 8 }),
      fc.constantFrom(0, MiB, 2 * MiB, 64 * MiB),
      fc.integer({ min: 1000, max: 2 * MiB }),
      fc.integer({ min: 1, max: 1 << 30 }),
      async (sizes, budgetBytes, writeMax, seed) => {
        const pieces = sizes.map((n, i) => patternBytes(n, seed + i));
        const src = memoryConn(pieces);
        const dst = partialWriter(writeMax);
        const budget = new BufferBudget(budgetBytes);
        let touches = 0;
        await relay(src.conn, dst, { budget, touch: () => touches++ });
        assert.deepEqual(dst.bytes(), concat(pieces));
        assert.equal(budget.left, budgetBytes);
        assert.ok(touches >= (pieces.some((p) => p.length > 0) ? 1 : 0));
      },
    ),
    { numRuns: 20 },
  );
});

Deno.test("a relay whose destination fails rejects, and gives its large buffer back", async () => {
  const budget = new BufferBudget(4 * MiB);
  const src = memoryConn([patternBytes(6 * MiB, 7)]);
  await assert.rejects(relay(src.conn, partialWriter(MiB, 3 * MiB), { budget }), /Broken pipe/);
  assert.equal(budget.left, 4 * MiB);
});

Deno.test("a relay takes a large buffer only while the budget has one", async () => {
  // Two relays streaming at once with room for one large buffer: both
  // finish, and the budget is whole afterwards.
  class CountedBudget extends BufferBudget {
    refused = 0;
    override take(n: number): boolean {
      const took = super.take(n);
      if (!took) this.refused++;
      return took;
    }
  }
  const budget = new CountedBudget(MiB);
  const a = memoryConn([patternBytes(8 * MiB, 1)]);
  const b = memoryConn([patternBytes(8 * MiB, 2)]);
  const da = partialWriter(MiB);
  const db = partialWriter(MiB);
  await Promise.all([relay(a.conn, da, { budget }), relay(b.conn, db, { budget })]);
  assert.deepEqual(da.bytes(), patternBytes(8 * MiB, 1));
  assert.deepEqual(db.bytes(), patternBytes(8 * MiB, 2));
  assert.ok(budget.refused > 0, "a relay asked while the other held it, and streamed on");
  assert.equal(budget.left, MiB);
});

Deno.test("a relay from a read buffer relays what it holds and what its watch read brings first", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(pieceSize, { minLength: 1, maxLength: 5 }),
      fc.boolean(),
      fc.integer({ min: 1, max: 1 << 30 }),
      async (sizes, watching, seed) => {
        const pieces = sizes.map((n, i) => patternBytes(n, seed + i));
        const reader = new BufferedReader(memoryConn(pieces).conn);
        // A client watched while its slot was awaited, or one whose bytes
        // came with its request head.
        if (watching) reader.watch();
        else await reader.fill();
        const dst = partialWriter(64 * 1024);
        await relay(reader, dst, { budget: new BufferBudget(0) });
        assert.deepEqual(dst.bytes(), concat(pieces));
      },
    ),
    { numRuns: 20 },
  );
});
