// The adaptive concurrency controller: its windows, its no-load measure, its
// growth and its back-offs step by step; a simulated capacity-limited
// upstream behind a FIFO-queued limiter (the goal of the issue, in simulated
// time); and properties over arbitrary answers.
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";
import {
  ADAPTIVE_REASONS,
  ADAPTIVE_TUNING,
  type AdaptiveReason,
  type AdaptiveState,
  effectiveLimit,
  initialState,
  lastReason,
  roll,
  sample,
} from "../lib/limit/adaptive_limit.ts";
import {
  ISSUE_UPSTREAM,
  type SimController,
  type SimReport,
  simulate,
  staticController,
} from "./_helpers/limit_sim.ts";

const { minSamples, windowMs, probeMs, probeJitter, backoff } = ADAPTIVE_TUNING;

/** The state after `count` answers of `latencyMs` at `inflight`, one every `everyMs`, each rolled. */
function feed(
  state: AdaptiveState,
  from: number,
  options: {
    count: number;
    latencyMs: number;
    inflight: number;
    everyMs: number;
    dropped?: boolean;
  },
): { state: AdaptiveState; reasons: AdaptiveReason[]; now: number } {
  const reasons: AdaptiveReason[] = [];
  let now = from;
  for (let i = 0; i < options.count; i++) {
    now += options.everyMs;
    const { latencyMs, inflight } = options;
    state = sample(state, { latencyMs, inflight, dropped: options.dropped ?? false, now });
    const r = roll(state, now);
    state = r.state;
    if (r.reason !== "wait") reasons.push(r.reason);
  }
  return { state, reasons, now };
}

/** A state past its first no-load measure of 50 ms, at `limit`, at time 1000. */
function measured(limit: number, max = 64): AdaptiveState {
  let state = initialState({ min: 1, max, now: 0 });
  state = feed(state, 0, { count: minSamples, latencyMs: 50, inflight: 1, everyMs: 60 }).state;
  assert.equal(state.noLoadMs, 50);
  return { ...state, limit, windowStart: 1000 };
}

Deno.test("a new host starts at its floor, measuring the no-load latency", () => {
  const state = initialState({ min: 2, max: 64, now: 5_000 });
  assert.equal(effectiveLimit(state), 2);
  assert.equal(state.probing, 1);
  assert.equal(lastReason(state), "probe");
  for (const value of Object.values(state)) assert.equal(typeof value, "number");
});

Deno.test("initialState keeps the floor at 1 or more and the ceiling at the floor or more", () => {
  const low = initialState({ min: 0, max: 0, now: 0 });
  assert.deepEqual([low.min, low.max], [1, 1]);
  const crossed = initialState({ min: 8, max: 4, now: 0 });
  assert.deepEqual([crossed.min, crossed.max, effectiveLimit(crossed)], [8, 8, 8]);
});

Deno.test("the no-load measure ends after enough answers and gives the limit back", () => {
  let state = initialState({ min: 1, max: 64, now: 0 });
  const first = feed(state, 0, { count: minSamples - 1, latencyMs: 40, inflight: 1, everyMs: 50 });
  assert.deepEqual(first.reasons, []);
  state = sample(first.state, { latencyMs: 60, dropped: false, inflight: 1, now: first.now + 50 });
  const r = roll(state, first.now + 50);
  assert.equal(r.reason, "restore");
  assert.equal(r.state.noLoadMs, (40 * (minSamples - 1) + 60) / minSamples);
  assert.equal(r.state.probing, 0);
  assert.equal(effectiveLimit(r.state), 1);
  const next = r.state.probeAt - r.state.windowStart;
  assert.ok(next >= probeMs && next <= probeMs * (1 + probeJitter), `${next}`);
});

Deno.test("answers to requests sent before the window opened are not latency samples", () => {
  const state = measured(8);
  const before = sample(state, { latencyMs: 500, dropped: false, inflight: 8, now: 1_100 });
  assert.equal(before.samples, 0);
  assert.equal(before.peakInflight, 8, "its in-flight count still counts");
  const after = sample(state, { latencyMs: 50, dropped: false, inflight: 8, now: 1_100 });
  assert.equal(after.samples, 1);
  assert.equal(after.latencySum, 50);
});

Deno.test("a window waits for its minimum of samples and its minimum length", () => {
  // Sent after the window opened at 1000, answered in 10 ms, one a millisecond.
  const few = feed(measured(8), 1_010, {
    count: minSamples - 1,
    latencyMs: 10,
    inflight: 8,
    everyMs: 1,
  });
  assert.deepEqual(few.reasons, []);
  assert.equal(roll(few.state, 1_000 + 10 * windowMs).reason, "wait", "too few samples");
  const enough = feed(few.state, few.now, { count: 1, latencyMs: 10, inflight: 8, everyMs: 1 });
  assert.deepEqual(enough.reasons, [], "too short");
  assert.equal(roll(enough.state, 1_000 + windowMs - 1).reason, "wait");
  assert.equal(roll(enough.state, 1_000 + windowMs).reason, "grow");
});

Deno.test("a saturated host that answers as fast as when idle grows", () => {
  const r = feed(measured(8), 1_050, {
    count: minSamples,
    latencyMs: 50,
    inflight: 8,
    everyMs: 30,
  });
  assert.deepEqual(r.reasons, ["grow"]);
  // Gradient 1.25, then the square root as headroom: 10 + √10.
  assert.ok(Math.abs(r.state.limit - (10 + Math.sqrt(10))) < 1e-9, `${r.state.limit}`);
  assert.equal(lastReason(r.state), "grow");
});

Deno.test("a host that never reaches its limit does not grow", () => {
  const r = feed(measured(8), 1_050, {
    count: minSamples,
    latencyMs: 50,
    inflight: 7,
    everyMs: 30,
  });
  assert.deepEqual(r.reasons, ["hold"]);
  assert.equal(r.state.limit, 8);
});

Deno.test("a host whose answers queue backs off on latency", () => {
  // Twice the no-load latency at limit 16 (1 ms added to both against noise).
  const r = feed(measured(16), 1_100, {
    count: minSamples,
    latencyMs: 100,
    inflight: 16,
    everyMs: 30,
  });
  assert.deepEqual(r.reasons, ["backoff-latency"]);
  const scaled = 16 * 1.25 * 51 / 101;
  assert.ok(Math.abs(r.state.limit - (scaled + Math.sqrt(scaled))) < 1e-9, `${r.state.limit}`);
  assert.equal(lastReason(r.state), "backoff-latency");
});

Deno.test("a drop halves the limit at once, without waiting for the window", () => {
  const state = sample(measured(40), { latencyMs: 1, dropped: true, inflight: 40, now: 1_005 });
  const r = roll(state, 1_005);
  assert.equal(r.reason, "backoff-drop");
  assert.equal(r.state.limit, 40 * backoff);
  assert.equal(lastReason(r.state), "backoff-drop");
});

Deno.test("drops of requests sent before a back-off do not back off again", () => {
  let state =
    roll(sample(measured(40), { latencyMs: 1, dropped: true, inflight: 40, now: 1_005 }), 1_005)
      .state;
  // The rest of the burst: sent before the back-off at 1005, answered after it.
  const rest = feed(state, 1_005, {
    count: 20,
    latencyMs: 30,
    inflight: 40,
    everyMs: 1,
    dropped: true,
  });
  assert.deepEqual(rest.reasons, []);
  assert.equal(rest.state.limit, 20);
  // A request sent after the back-off that drops is news.
  state = sample(rest.state, { latencyMs: 5, dropped: true, inflight: 20, now: rest.now + 10 });
  assert.equal(roll(state, rest.now + 10).state.limit, 10);
});

Deno.test("a steady timeout brings the limit down to the floor", () => {
  // Every request times out after 10 s; one answer every 100 ms for 2 minutes.
  const start = measured(64);
  const r = feed(start, 1_000, {
    count: 1_200,
    latencyMs: 10_000,
    inflight: 64,
    everyMs: 100,
    dropped: true,
  });
  assert.equal(effectiveLimit(r.state), 1);
  assert.ok(r.reasons.includes("backoff-drop"));
  assert.ok(!r.reasons.includes("grow"));
});

Deno.test("the no-load latency is measured again after a jittered interval", () => {
  let state = measured(8);
  // Saturated and fast: it grows until the measure is due.
  const r = feed(state, 1_000, { count: 2_000, latencyMs: 50, inflight: 64, everyMs: 20 });
  assert.ok(r.reasons.includes("probe"));
  const probeIndex = r.reasons.indexOf("probe");
  assert.ok(
    r.reasons.slice(0, probeIndex).every((reason) => reason === "grow" || reason === "hold"),
  );
  assert.equal(r.reasons[probeIndex + 1], "restore");
  // During the measure the limit sits at the floor; afterwards it is back.
  state = { ...measured(8), probeAt: 1_000 };
  const probe = feed(state, 1_050, { count: minSamples, latencyMs: 50, inflight: 8, everyMs: 30 });
  assert.deepEqual(probe.reasons, ["probe"]);
  assert.equal(effectiveLimit(probe.state), 1);
  assert.equal(probe.state.savedLimit, 8);
  const back = feed(probe.state, probe.now + 50, {
    count: minSamples,
    latencyMs: 45,
    inflight: 1,
    everyMs: 50,
  });
  assert.deepEqual(back.reasons, ["restore"]);
  assert.equal(back.state.limit, 8);
  assert.equal(back.state.noLoadMs, 45);
});

Deno.test("the interval between no-load measures varies with the time they end", () => {
  const intervals = new Set<number>();
  for (let start = 0; start < 20_000; start += 997) {
    const state = initialState({ min: 1, max: 8, now: start });
    const r = feed(state, start, { count: minSamples, latencyMs: 10, inflight: 1, everyMs: 11 });
    const interval = r.state.probeAt - r.now;
    assert.ok(interval >= probeMs && interval < probeMs * (1 + probeJitter), `${interval}`);
    intervals.add(interval);
  }
  assert.ok(intervals.size > 10, `${intervals.size} distinct intervals`);
});

Deno.test("a window that ran at the floor refreshes the no-load latency without a measure", () => {
  const state = measured(1);
  const r = feed(state, 1_000, { count: minSamples, latencyMs: 70, inflight: 1, everyMs: 80 });
  assert.equal(r.state.noLoadMs, 70);
  assert.ok(r.state.probeAt >= r.now + probeMs);
  assert.ok(!r.reasons.includes("probe"));
});

Deno.test("every reason code names a reason", () => {
  assert.deepEqual(new Set(ADAPTIVE_REASONS).size, ADAPTIVE_REASONS.length);
  assert.equal(lastReason({ ...measured(4), reason: 99 }), "hold");
});

// The goal of the issue, simulated.

/** A controller that runs the adaptive state, as dprl will per host. */
function adaptiveController(max: number): SimController {
  let state = initialState({ min: 1, max, now: 0 });
  return {
    limit: () => effectiveLimit(state),
    answer(s) {
      state = roll(sample(state, s), s.now).state;
    },
  };
}

function figures(adaptive: SimReport, fixed: SimReport): string {
  const share = ((100 * adaptive.refused) / adaptive.answers).toFixed(2);
  const ratio = (adaptive.served / fixed.served).toFixed(3);
  return `503: ${share}%, median in flight ${adaptive.medianInflight}, goodput ratio ${ratio}`;
}

Deno.test("40 clients through an adaptive limit of 64 find a 4-wide upstream's capacity", () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    const run = { durationMs: 10_000, clients: 40, upstream: ISSUE_UPSTREAM, seed };
    const adaptive = simulate({ ...run, controller: adaptiveController(64) });
    const fixed = simulate({ ...run, controller: staticController(4) });
    const said = `seed ${seed}: ${figures(adaptive, fixed)}`;
    assert.ok(adaptive.refused <= 0.02 * adaptive.answers, said);
    assert.ok(adaptive.medianInflight <= 8, said);
    assert.ok(adaptive.served >= 0.8 * fixed.served, said);
    // The simulation can fail: a static limit of 64 floods the same upstream.
    const flood = simulate({ ...run, controller: staticController(64) });
    assert.ok(flood.refused > 0.02 * flood.answers, `static 64: ${figures(flood, fixed)}`);
  }
});

// Properties.

const bounds = fc.tuple(fc.integer({ min: 1, max: 20 }), fc.integer({ min: 0, max: 500 }))
  .map(([min, extra]) => ({ min, max: min + extra }));

/** An arbitrary answer: any latency (even a bad one), dropped or not, any in flight, any delay. */
const answer = fc.record({
  gapMs: fc.oneof(
    fc.constant(0),
    fc.integer({ min: 0, max: 100 }),
    fc.integer({ min: 0, max: 60_000 }),
  ),
  latencyMs: fc.oneof(
    fc.integer({ min: 0, max: 200 }),
    fc.double({ min: 0, max: 1e6, noNaN: true }),
    fc.constantFrom(-1, NaN, Infinity),
  ),
  dropped: fc.boolean(),
  inflight: fc.integer({ min: 0, max: 600 }),
});

/** Runs the answers from `state`, checking every step with `check`. */
function run(
  state: AdaptiveState,
  answers: { gapMs: number; latencyMs: number; dropped: boolean; inflight: number }[],
  check: (state: AdaptiveState) => void = () => {},
): { state: AdaptiveState; now: number } {
  let now = state.windowStart;
  for (const a of answers) {
    now += a.gapMs;
    state = roll(sample(state, { ...a, now }), now).state;
    check(state);
  }
  return { state, now };
}

Deno.test("property: the limit stays within its floor and its ceiling, and the state numbers", () => {
  fc.assert(
    fc.property(
      bounds,
      fc.array(answer, { maxLength: 400, size: "large" }),
      ({ min, max }, answers) => {
        run(initialState({ min, max, now: 1_700_000_000_000 }), answers, (state) => {
          assert.ok(
            state.limit >= min && state.limit <= max,
            `${state.limit} outside ${min}..${max}`,
          );
          assert.ok(effectiveLimit(state) >= min && effectiveLimit(state) <= max);
          for (const [key, value] of Object.entries(state)) {
            assert.ok(Number.isFinite(value), `${key} is ${value}`);
          }
        });
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("property: a run of timeouts or drops never leaves the limit at its ceiling", () => {
  fc.assert(
    fc.property(
      bounds.filter(({ min, max }) => min < max),
      fc.array(answer, { maxLength: 200 }),
      fc.integer({ min: 1, max: 30_000 }),
      fc.integer({ min: 1, max: 50 }),
      fc.integer({ min: 1, max: 1_000 }),
      ({ min, max }, history, latencyMs, count, everyMs) => {
        const before = run(initialState({ min, max, now: 0 }), history);
        // Requests sent from now on, each answered by a drop (a timeout at `latencyMs`, say).
        let state = before.state;
        for (let i = 0; i < count; i++) {
          const now = before.now + latencyMs + i * everyMs;
          state = roll(sample(state, { latencyMs, dropped: true, inflight: max, now }), now).state;
        }
        assert.ok(effectiveLimit(state) < max, `${state.limit} of ${max}`);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("property: a saturated host with fast answers grows toward its ceiling", () => {
  fc.assert(
    fc.property(
      bounds,
      fc.integer({ min: 1, max: 200 }),
      fc.integer({ min: 0, max: 2 ** 40 }),
      ({ min, max }, latencyMs, start) => {
        let state = initialState({ min, max, now: start });
        let now = start;
        let last = state.limit;
        // 25 s, short of the next no-load measure: the limit only rises. Answers come
        // as fast as the limit and the latency allow, or (to keep the run short) a
        // tenth of a window apart.
        while (now < start + 25_000 && effectiveLimit(state) < max) {
          const limit = effectiveLimit(state);
          now += Math.max(latencyMs / limit, windowMs / minSamples);
          state =
            roll(sample(state, { latencyMs, dropped: false, inflight: limit, now }), now).state;
          assert.ok(state.limit >= last, `${state.limit} after ${last}`);
          last = state.limit;
        }
        assert.equal(effectiveLimit(state), max);
      },
    ),
    { numRuns: 200 },
  );
});
