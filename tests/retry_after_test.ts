// Retry-After from an upstream: delay-seconds and the three HTTP-date forms
// read relative to a given time, the pause they ask for (429 and 503 only,
// capped, off at 0) and the whole seconds left that a refused client is told.
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";
import { parseRetryAfter, pauseUntil, secondsLeft } from "../lib/limit/retry_after.ts";

/** RFC 9110's example date, Sun, 06 Nov 1994 08:49:37 GMT. */
const RFC_DATE = Date.UTC(1994, 10, 6, 8, 49, 37);
const NOW = Date.UTC(2025, 5, 15, 12, 0, 0);

const DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const two = (n: number) => String(n).padStart(2, "0");
const clock = (d: Date) =>
  `${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())}`;

/** `Sunday, 06-Nov-94 08:49:37 GMT`, written independently of the parser. */
function rfc850(ms: number): string {
  const d = new Date(ms);
  const date = `${two(d.getUTCDate())}-${MONTHS[d.getUTCMonth()]}-${two(d.getUTCFullYear() % 100)}`;
  return `${DAYS[d.getUTCDay()]}, ${date} ${clock(d)} GMT`;
}

/** `Sun Nov  6 08:49:37 1994`. */
function asctime(ms: number): string {
  const d = new Date(ms);
  const day = String(d.getUTCDate()).padStart(2, " ");
  const month = MONTHS[d.getUTCMonth()];
  return `${DAYS[d.getUTCDay()].slice(0, 3)} ${month} ${day} ${clock(d)} ${d.getUTCFullYear()}`;
}

Deno.test("parseRetryAfter reads delay-seconds as milliseconds", () => {
  assert.equal(parseRetryAfter("120", NOW), 120_000);
  assert.equal(parseRetryAfter(" 5 ", NOW), 5_000);
  assert.equal(parseRetryAfter("0", NOW), 0);
  assert.equal(parseRetryAfter("007", NOW), 7_000);
});

Deno.test("parseRetryAfter reads the three HTTP-date forms of RFC 9110", () => {
  const now = RFC_DATE - 30_000;
  assert.equal(parseRetryAfter("Sun, 06 Nov 1994 08:49:37 GMT", now), 30_000);
  assert.equal(parseRetryAfter("Sunday, 06-Nov-94 08:49:37 GMT", now), 30_000);
  assert.equal(parseRetryAfter("Sun Nov  6 08:49:37 1994", now), 30_000);
  assert.equal(parseRetryAfter("sun, 06 nov 1994 08:49:37 gmt", now), 30_000);
});

Deno.test("parseRetryAfter gives a past date as a negative delay", () => {
  assert.equal(parseRetryAfter("Sun, 06 Nov 1994 08:49:37 GMT", RFC_DATE + 1_000), -1_000);
});

Deno.test("parseRetryAfter reads a two-digit year as at most 50 years ahead", () => {
  // From mid-2025: 74 is 2074 (49 years ahead), 76 would be 51 years ahead, so 1976.
  const in2074 = parseRetryAfter("Sunday, 01-Jan-74 00:00:00 GMT", NOW);
  assert.equal(in2074, Date.UTC(2074, 0, 1) - NOW);
  const in1976 = parseRetryAfter("Thursday, 01-Jan-76 00:00:00 GMT", NOW);
  assert.equal(in1976, Date.UTC(1976, 0, 1) - NOW);
  // The 50 years count from the date, not the year: from 1 Jan 1970, the end of 2020 is too far.
  const in1920 = parseRetryAfter("Friday, 31-Dec-20 23:59:59 GMT", 0);
  assert.equal(in1920, Date.UTC(1920, 11, 31, 23, 59, 59));
  assert.equal(parseRetryAfter("Wednesday, 01-Jan-20 00:00:00 GMT", 0), Date.UTC(2020, 0, 1));
});

Deno.test("parseRetryAfter refuses anything that is not delay-seconds or an HTTP-date", () => {
  const bad = [
    "",
    " ",
    "soon",
    "-5",
    "+5",
    "1.5",
    "5s",
    "5, 10",
    "0x10",
    "1e3",
    "2025-06-15T12:00:00Z",
    "Sun, 06 Nov 1994 08:49:37",
    "Sun, 06 Nov 1994 08:49:37 UTC",
    "Sun, 6 Nov 1994 08:49:37 GMT",
    "Sun, 31 Feb 1994 08:49:37 GMT",
    "Sun, 06 Nov 1994 24:00:00 GMT",
    "Sun, 06 Nov 1994 08:60:00 GMT",
    "Sun, 06 Nov 0094 08:49:37 GMT",
    "Sun, 06 Foo 1994 08:49:37 GMT",
    "Sunny, 06-Nov-94 08:49:37 GMT",
    "Sun, 06-Nov-94 08:49:37 GMT",
    "Sun Nov 6 08:49:37 1994",
    "Sun, 06 Nov 1994 08:49:37 GMT, 30",
  ];
  for (const value of bad) assert.equal(parseRetryAfter(value, NOW), undefined, value);
  assert.equal(parseRetryAfter(null, NOW), undefined);
  assert.equal(parseRetryAfter(undefined, NOW), undefined);
});

Deno.test("parseRetryAfter accepts a leap second", () => {
  assert.equal(parseRetryAfter("Wed, 31 Dec 2025 23:59:60 GMT", NOW), Date.UTC(2026, 0, 1) - NOW);
});

Deno.test("pauseUntil pauses on 429 and 503 with Retry-After, capped by max", () => {
  assert.equal(pauseUntil({ status: 429, retryAfter: "30", now: NOW, max: 60_000 }), NOW + 30_000);
  const date = new Date(NOW + 45_000).toUTCString();
  assert.equal(pauseUntil({ status: 503, retryAfter: date, now: NOW, max: 60_000 }), NOW + 45_000);
  assert.equal(
    pauseUntil({ status: 429, retryAfter: "3600", now: NOW, max: 60_000 }),
    NOW + 60_000,
  );
  const far = "9".repeat(400);
  assert.equal(pauseUntil({ status: 429, retryAfter: far, now: NOW, max: 60_000 }), NOW + 60_000);
});

Deno.test("pauseUntil makes no pause for other statuses, bad or past values, or max 0", () => {
  const none = [
    { status: 500, retryAfter: "30", now: NOW, max: 60_000 },
    { status: 200, retryAfter: "30", now: NOW, max: 60_000 },
    { status: 502, retryAfter: "30", now: NOW, max: 60_000 },
    { status: 429, retryAfter: null, now: NOW, max: 60_000 },
    { status: 503, retryAfter: undefined, now: NOW, max: 60_000 },
    { status: 429, retryAfter: "soon", now: NOW, max: 60_000 },
    { status: 429, retryAfter: "0", now: NOW, max: 60_000 },
    { status: 503, retryAfter: new Date(NOW - 1_000).toUTCString(), now: NOW, max: 60_000 },
    { status: 503, retryAfter: new Date(NOW).toUTCString(), now: NOW, max: 60_000 },
    { status: 429, retryAfter: "30", now: NOW, max: 0 },
    { status: 429, retryAfter: "30", now: NOW, max: -1 },
    { status: 429, retryAfter: "30", now: NOW, max: NaN },
  ];
  for (const options of none) assert.equal(pauseUntil(options), undefined, JSON.stringify(options));
});

Deno.test("secondsLeft rounds up to whole seconds, at least 1", () => {
  assert.equal(secondsLeft(NOW + 30_000, NOW), 30);
  assert.equal(secondsLeft(NOW + 29_001, NOW), 30);
  assert.equal(secondsLeft(NOW + 1, NOW), 1);
  assert.equal(secondsLeft(NOW, NOW), 1);
  assert.equal(secondsLeft(NOW - 5_000, NOW), 1);
  assert.equal(secondsLeft(NaN, NOW), 1);
});

// Properties.

/** Whole-second times from 1970 to 9999. */
const wholeSecond = fc.integer({ min: 0, max: 253_402_300_799 }).map((s) => s * 1000);
const anyNow = fc.integer({ min: 0, max: 253_402_300_799_999 });

Deno.test("property: an IMF-fixdate reads back as its distance from now", () => {
  fc.assert(
    fc.property(wholeSecond, anyNow, (date, now) => {
      assert.equal(parseRetryAfter(new Date(date).toUTCString(), now), date - now);
    }),
  );
});

Deno.test("property: an asctime date reads back as its distance from now", () => {
  fc.assert(
    fc.property(wholeSecond, anyNow, (date, now) => {
      assert.equal(parseRetryAfter(asctime(date), now), date - now);
    }),
  );
});

Deno.test("property: an RFC 850 date within 49 years of now reads back exactly", () => {
  const year = 365.25 * 24 * 3600 * 1000;
  fc.assert(
    fc.property(
      fc.integer({ min: Date.UTC(1900, 0, 1), max: Date.UTC(9900, 0, 1) }),
      fc.integer({ min: -49 * year, max: 49 * year }),
      (now, offset) => {
        const date = Math.floor((now + offset) / 1000) * 1000;
        assert.equal(parseRetryAfter(rfc850(date), now), date - now);
      },
    ),
    { numRuns: 1000 },
  );
});

Deno.test("property: delay-seconds read back as milliseconds", () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 40 }), anyNow, (seconds, now) => {
      assert.equal(parseRetryAfter(String(seconds), now), seconds * 1000);
    }),
  );
});

Deno.test("property: a pause ends at now plus the delay, never past now plus max", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 10_000_000 }),
      fc.integer({ min: 1, max: 3_600_000 }),
      fc.constantFrom(429, 503),
      fc.boolean(),
      fc.integer({ min: 0, max: Date.UTC(9000, 0, 1) }),
      (seconds, max, status, asDate, now) => {
        const retryAfter = asDate ? new Date(now + seconds * 1000).toUTCString() : String(seconds);
        const exact = asDate
          ? Math.floor(now / 1000) * 1000 + seconds * 1000 - now
          : seconds * 1000;
        const until = pauseUntil({ status, retryAfter, now, max });
        assert.equal(until, now + Math.min(exact, max));
        const left = secondsLeft(until!, now);
        assert.ok(left >= 1 && left <= Math.ceil(max / 1000));
      },
    ),
  );
});

Deno.test("property: secondsLeft covers the time left, by less than a second too much", () => {
  fc.assert(
    fc.property(anyNow, fc.integer({ min: 1, max: 10_000_000 }), (now, ms) => {
      const left = secondsLeft(now + ms, now);
      assert.ok(left * 1000 >= ms && left * 1000 < ms + 1000);
    }),
  );
});
