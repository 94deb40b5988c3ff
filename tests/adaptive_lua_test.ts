// The adaptive controller in Lua (the acquire script's, on Redis) against
// the one in TypeScript: the same random answers, in the same order, must
// give the same state after every step, to the last bit, and a state saved
// to its hash reads back unchanged.
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";
import { Redis } from "ioredis";
import { type AdaptiveState, initialState, roll, sample } from "../lib/limit/adaptive_limit.ts";
import { ADAPT } from "../lib/limit/redis_lua_parts.ts";
import { RedisServer, redisTest } from "./_helpers/redis_server.ts";

const FIELDS: (keyof AdaptiveState)[] = [
  "min",
  "max",
  "limit",
  "windowStart",
  "samples",
  "latencySum",
  "drops",
  "peakInflight",
  "noLoadMs",
  "probing",
  "savedLimit",
  "probeAt",
  "backoffAt",
  "reason",
];

/**
 * Runs the steps in Lua from a new state at `start`, saving the state to
 * `KEYS[1]` and loading it back before each step; returns each step's
 * state as its fields, written exactly.
 */
const DRIVER = `local now = tonumber(ARGV[1])
` + ADAPT + `
local st = a_init(tonumber(ARGV[2]), tonumber(ARGV[3]))
local out = {}
for i = 4, #ARGV, 4 do
  a_save(KEYS[1], st, 60000)
  st = a_load(KEYS[1], st.min, st.max)
  now = tonumber(ARGV[i])
  local latency = tonumber(ARGV[i + 1])
  a_sample(st, latency, now - latency, ARGV[i + 2] == '1', tonumber(ARGV[i + 3]))
  a_roll(st)
  local row = {}
  for j = 1, #A_FIELDS do row[j] = string.format('%.17g', st[A_FIELDS[j]]) end
  out[#out + 1] = table.concat(row, ' ')
end
return out
`;

interface Step {
  dt: number;
  latencyMs: number;
  dropped: boolean;
  /** The in-flight count: at the limit (0), just under it (1), or this number less 2. */
  inflight: number;
}

const step = fc.record({
  // Answers every few ms, with now and then a quiet spell.
  dt: fc.oneof(
    { arbitrary: fc.integer({ min: 0, max: 80 }), weight: 12 },
    { arbitrary: fc.integer({ min: 0, max: 40_000 }), weight: 1 },
  ),
  // Mostly a steady host (growth needs answers about as fast as when idle).
  latencyMs: fc.oneof(
    { arbitrary: fc.constant(50), weight: 6 },
    { arbitrary: fc.integer({ min: 40, max: 70 }), weight: 3 },
    { arbitrary: fc.integer({ min: 70, max: 300 }), weight: 2 },
    { arbitrary: fc.double({ min: 0, max: 300, noNaN: true }), weight: 1 },
  ),
  dropped: fc.boolean(),
  inflight: fc.oneof(
    { arbitrary: fc.constant(0), weight: 3 },
    { arbitrary: fc.constant(1), weight: 2 },
    { arbitrary: fc.integer({ min: 2, max: 12 }), weight: 1 },
  ),
});

/** The in-flight count a step stands for, under the limit `limit`. */
function inflightOf(s: Step, limit: number): number {
  if (s.inflight === 0) return Math.floor(limit);
  if (s.inflight === 1) return Math.floor(limit) - 1;
  return s.inflight - 2;
}

await redisTest(
  "the Lua controller and the TypeScript one give the same state after every answer",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    const client = new Redis(redis.url, { lazyConnect: true });
    await client.connect();
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.integer({ min: 1, max: 4 }),
          fc.integer({ min: 4, max: 64 }),
          fc.array(step, { minLength: 100, maxLength: 400 }),
          async (min, max, steps: Step[]) => {
            const start = 1_700_000_000_000;
            let now = start;
            let state = initialState({ min, max, now });
            const args: (string | number)[] = [start, min, max];
            const expected: string[] = [];
            for (const s of steps) {
              now += s.dt;
              // Mostly answers, some drops: windows fill and close.
              const dropped = s.dropped && s.inflight % 8 === 0;
              const inflight = inflightOf(s, state.limit);
              state = sample(state, { latencyMs: s.latencyMs, dropped, inflight, now });
              state = roll(state, now).state;
              args.push(now, String(s.latencyMs), dropped ? 1 : 0, inflight);
              expected.push(FIELDS.map((f) => state[f]).join(" "));
            }
            const rows = await client.eval(DRIVER, 1, "t:{h}:a", ...args) as string[];
            const got = rows.map((row) => row.split(" ").map(Number).join(" "));
            assert.deepEqual(got, expected);
          },
        ),
        { numRuns: 300 },
      );
    } finally {
      client.disconnect();
    }
  },
);
