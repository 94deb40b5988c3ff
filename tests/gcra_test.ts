// Request rates: the rate syntax (n/s, n/m, n/h) and its error, and GCRA's
// guarantees: never more than rate × T + burst requests in any span T, and a
// retry time that is exact to the millisecond.
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";
import { gcraCheck, gcraTurn, parseRate, RateError } from "../lib/limit/gcra.ts";
import { LocalRates } from "../lib/limit/local_rates.ts";
import { RateLimitedError } from "../lib/limit/limiter.ts";

Deno.test("parseRate reads counts per second, minute and hour as requests per second", () => {
  assert.equal(parseRate("10/s"), 10);
  assert.equal(parseRate("600/m"), 10);
  assert.equal(parseRate("3600/h"), 1);
  assert.equal(parseRate("0.5/s"), 0.5);
  assert.equal(parseRate(" 90 / h "), 0.025);
});

/** The error that `fn` throws. */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  assert.fail("nothing was thrown");
}

Deno.test("parseRate refuses anything else with a RateError that says what is expected", () => {
  for (const text of ["", "10", "10/", "/s", "10/d", "10/sec", "-1/s", "+1/s", "1e3/s", "ten/s"]) {
    const error = thrown(() => parseRate(text));
    assert.ok(error instanceof RateError && !(error instanceof RangeError), text);
    assert.equal(error.input, text);
  }
  assert.throws(() => parseRate("10/s/s"), RateError);
  assert.throws(
    () => parseRate("10/d"),
    {
      name: "RateError",
      message: 'Invalid rate "10/d": expected a count per unit, as 10/s, 600/m or 3600/h',
    },
  );
  assert.throws(() => parseRate("0/s"), {
    message: 'Invalid rate "0/s": a rate must be more than 0',
  });
  assert.throws(() => parseRate("0.0/m"), RateError);
  assert.throws(() => parseRate(`${"9".repeat(400)}/s`), { message: /too large/ });
});

Deno.test("gcraCheck lets a burst through at once, then spaces requests by the period", () => {
  const periodMs = 1000 / parseRate("10/s");
  let tat = 0;
  const seen: boolean[] = [];
  for (let i = 0; i < 4; i++) {
    const r = gcraCheck({ tat, now: 5_000, periodMs, burst: 3 });
    seen.push(r.allowed);
    tat = r.tat;
  }
  assert.deepEqual(seen, [true, true, true, false]);
  const refused = gcraCheck({ tat, now: 5_000, periodMs, burst: 3 });
  assert.deepEqual(refused, { allowed: false, tat: 5_300, retryAfterMs: 100 });
  assert.equal(gcraCheck({ tat, now: 5_099, periodMs, burst: 3 }).allowed, false);
  assert.deepEqual(gcraCheck({ tat, now: 5_100, periodMs, burst: 3 }), {
    allowed: true,
    tat: 5_400,
    retryAfterMs: 0,
  });
});

Deno.test("gcraCheck with no burst given spaces every request by the period", () => {
  const first = gcraCheck({ tat: 0, now: 1_000, periodMs: 250 });
  assert.deepEqual(first, { allowed: true, tat: 1_250, retryAfterMs: 0 });
  assert.deepEqual(gcraCheck({ tat: first.tat, now: 1_001, periodMs: 250 }), {
    allowed: false,
    tat: 1_250,
    retryAfterMs: 249,
  });
  assert.equal(gcraCheck({ tat: first.tat, now: 1_250, periodMs: 250, burst: 0 }).allowed, true);
});

Deno.test("gcraCheck lets 50 of a 5-second flood through at 10/s", () => {
  const periodMs = 1000 / parseRate("10/s");
  let tat = 0;
  let allowed = 0;
  // 30 clients, each sending every millisecond.
  for (let now = 0; now < 5_000; now++) {
    for (let client = 0; client < 30; client++) {
      const r = gcraCheck({ tat, now, periodMs });
      tat = r.tat;
      if (r.allowed) allowed++;
    }
  }
  assert.equal(allowed, 50);
});

Deno.test("gcraCheck refuses a period that is not more than 0", () => {
  for (const periodMs of [0, -1, NaN, Infinity]) {
    assert.throws(() => gcraCheck({ tat: 0, now: 0, periodMs }), RangeError);
  }
});

Deno.test("gcraCheck never lets a long saturation drift past the rate", () => {
  // 2,000 s of a request every millisecond at 999/s, from a time of today's magnitude:
  // summing the period in plain doubles would let about 48 too many through.
  const periodMs = 1000 / 999;
  const start = 1_700_000_000_000;
  let tat = 0;
  let allowed = 0;
  for (let i = 0; i < 2_000_000; i++) {
    const r = gcraCheck({ tat, now: start + i, periodMs, burst: 2 });
    if (r.allowed) allowed++;
    tat = r.tat;
  }
  assert.ok(allowed <= (999 * 1_999_999) / 1000 + 2, `${allowed} allowed`);
  assert.ok(allowed >= (999 * 1_999_999) / 1000 * 0.999, `${allowed} allowed`);
});

// Properties.

const rates = fc.oneof(
  fc.integer({ min: 1, max: 1000 }).map((n) => `${n}/s`),
  fc.integer({ min: 1, max: 60_000 }).map((n) => `${n}/m`),
  fc.integer({ min: 1, max: 360_000 }).map((n) => `${n}/h`),
  fc.double({ min: 0.01, max: 100, noNaN: true }).map((n) => `${n.toFixed(2)}/s`),
);
const bursts = fc.integer({ min: 1, max: 20 });
/** Arrival times: a start in the epoch's range and increasing gaps, some of them 0. */
const arrivals = fc.tuple(
  fc.integer({ min: 0, max: 2 ** 42 }),
  fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 5_000 })), {
    maxLength: 300,
    size: "large",
  }),
).map(([start, gaps]) => {
  let t = start;
  return gaps.map((gap) => (t += gap));
});

/** The times at which requests were allowed. */
function allowedTimes(periodMs: number, burst: number, times: number[]): number[] {
  let tat = 0;
  const allowed: number[] = [];
  for (const now of times) {
    const r = gcraCheck({ tat, now, periodMs, burst });
    if (r.allowed) allowed.push(now);
    else assert.equal(r.tat, tat, "a refusal leaves the state as it was");
    tat = r.tat;
  }
  return allowed;
}

Deno.test("property: over any span T, at most rate × T + burst requests are allowed", () => {
  fc.assert(
    fc.property(rates, bursts, arrivals, (rate, burst, times) => {
      const perSecond = parseRate(rate);
      const periodMs = 1000 / perSecond;
      const allowed = allowedTimes(periodMs, burst, times);
      // The fullest span starts and ends at allowed requests.
      for (let i = 0; i < allowed.length; i++) {
        for (let j = i; j < allowed.length; j++) {
          const spanMs = allowed[j] - allowed[i];
          const bound = (perSecond * spanMs) / 1000 + burst;
          assert.ok(j - i + 1 <= bound + 1e-9, `${j - i + 1} in ${spanMs} ms at ${rate}`);
        }
      }
    }),
    { numRuns: 300 },
  );
});

Deno.test("property: a refused request is allowed after retryAfterMs and not a millisecond sooner", () => {
  fc.assert(
    fc.property(rates, bursts, arrivals, (rate, burst, times) => {
      const periodMs = 1000 / parseRate(rate);
      let tat = 0;
      for (const now of times) {
        const r = gcraCheck({ tat, now, periodMs, burst });
        if (!r.allowed) {
          assert.ok(Number.isInteger(r.retryAfterMs) && r.retryAfterMs >= 1);
          const later = now + r.retryAfterMs;
          assert.equal(gcraCheck({ tat, now: later, periodMs, burst }).allowed, true);
          assert.equal(gcraCheck({ tat, now: later - 1, periodMs, burst }).allowed, false);
        } else {
          assert.equal(r.retryAfterMs, 0);
        }
        tat = r.tat;
      }
    }),
    { numRuns: 300 },
  );
});

Deno.test("property: a flood denser than the burst's slack gets the full rate", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 100 }),
      fc.integer({ min: 2, max: 10 }),
      fc.integer({ min: 1, max: 1_000 }),
      (perSecond, burst, everyMs) => {
        const periodMs = 1000 / perSecond;
        fc.pre(everyMs <= (burst - 1) * periodMs);
        const times = Array.from({ length: Math.ceil(10_000 / everyMs) }, (_, i) => i * everyMs);
        const allowed = allowedTimes(periodMs, burst, times).length;
        const last = times[times.length - 1];
        assert.ok(allowed <= (perSecond * last) / 1000 + burst + 1e-9, `${allowed} allowed`);
        // The period runs on a 2^-10 ms grid, rounded up: the rate is that much slower.
        const gridPeriodMs = Math.ceil(periodMs * 1024) / 1024;
        const floor = Math.min(times.length, last / gridPeriodMs + burst - 1);
        assert.ok(allowed >= floor, `${allowed} allowed`);
      },
    ),
  );
});

Deno.test("gcraTurn: turns taken in the order asked, one period apart, none past the longest wait", () => {
  fc.assert(fc.property(
    fc.integer({ min: 1, max: 1_000 }),
    fc.integer({ min: 0, max: 5_000 }),
    fc.array(fc.integer({ min: 0, max: 300 }), { minLength: 1, maxLength: 60 }),
    (periodMs, maxWaitMs, steps) => {
      let tat = 0;
      let now = 1_000_000;
      const starts: number[] = [];
      for (const step of steps) {
        now += step;
        const turn = gcraTurn({ tat, now, periodMs, maxWaitMs });
        if ("retryAfterMs" in turn) {
          assert.ok(turn.retryAfterMs > maxWaitMs);
          // The turn it names is free then, one ms before it is not.
          assert.equal(gcraCheck({ tat, now: now + turn.retryAfterMs, periodMs }).allowed, true);
          assert.equal(
            gcraCheck({ tat, now: now + turn.retryAfterMs - 1, periodMs }).allowed,
            false,
          );
          continue;
        }
        assert.ok(turn.waitMs <= maxWaitMs);
        starts.push(now + turn.waitMs);
        tat = turn.tat;
      }
      for (let i = 1; i < starts.length; i++) {
        assert.ok(starts[i] - starts[i - 1] >= periodMs, "one period apart, in order");
      }
    },
  ));
});

Deno.test("LocalRates: waits within the longest wait, refuses past it, and sweeps passed states", () => {
  const rates = new LocalRates();
  const rate = { key: "a", perSecond: 10, maxWaitMs: 150 };
  assert.equal(rates.take(rate, 1_000), 0);
  assert.equal(rates.take(rate, 1_000), 100);
  assert.throws(() => rates.take(rate, 1_000), (err: unknown) => {
    assert.ok(err instanceof RateLimitedError);
    assert.equal(err.key, "a");
    assert.equal(err.retryAfterMs, 200);
    return true;
  });
  for (let i = 0; i < 2_000; i++) {
    rates.take({ key: `h${i}`, perSecond: 1000, maxWaitMs: 0 }, 5_000 + i);
  }
  assert.ok(rates.size < 2_000, `${rates.size} states kept`);
});
