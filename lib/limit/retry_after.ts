/**
 * `Retry-After` from an upstream (RFC 9110, section 10.2.3) turned into the
 * end of a pause of its host, and the seconds left of a pause as a client's
 * `Retry-After`. Pure: the time is always given.
 *
 * @module
 */

const MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAY = "(mon|tue|wed|thu|fri|sat|sun)";
const MONTH = "(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)";
const TIME = "([0-9]{2}):([0-9]{2}):([0-9]{2})";

/** IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`. */
const IMF_FIXDATE = new RegExp(`^${DAY}, ([0-9]{2}) ${MONTH} ([0-9]{4}) ${TIME} GMT$`, "i");
/** The obsolete RFC 850 form: `Sunday, 06-Nov-94 08:49:37 GMT`. */
const RFC850_DATE = new RegExp(
  `^${DAY}[a-z]{3,6}, ([0-9]{2})-${MONTH}-([0-9]{2}) ${TIME} GMT$`,
  "i",
);
/** The obsolete asctime form: `Sun Nov  6 08:49:37 1994`. */
const ASCTIME_DATE = new RegExp(`^${DAY} ${MONTH} ([0-9]{2}| [0-9]) ${TIME} ([0-9]{4})$`, "i");
const FULL_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];

/** The parts of an HTTP-date, as written. */
interface DateParts {
  year: number;
  month: number;
  day: number;
  hour: number;
  minute: number;
  second: number;
}

/** Milliseconds since the epoch of valid parts, or `undefined`. */
function partsToMs(p: DateParts): number | undefined {
  // Date.UTC maps years 0 to 99 to 1900 to 1999; second 60 is a leap second.
  if (p.year < 100 || p.hour > 23 || p.minute > 59 || p.second > 60) return undefined;
  const ms = Date.UTC(p.year, p.month, p.day, p.hour, p.minute);
  const check = new Date(ms);
  // Date.UTC rolls 31 Feb over into March.
  if (check.getUTCDate() !== p.day || check.getUTCMonth() !== p.month) return undefined;
  return ms + p.second * 1000;
}

/**
 * The year of an RFC 850 date, whose year has two digits: as RFC 9110
 * section 5.6.7 says, a date more than 50 years in the future is the one in
 * the most recent past year with the same last two digits.
 */
function fullYear(p: DateParts, now: number): number {
  const horizon = new Date(now);
  horizon.setUTCFullYear(horizon.getUTCFullYear() + 50);
  const century = horizon.getUTCFullYear() - (horizon.getUTCFullYear() % 100);
  let year = century + 100 + p.year;
  while (Date.UTC(year, p.month, p.day, p.hour, p.minute, p.second) > horizon.getTime()) {
    year -= 100;
  }
  return year;
}

/** Reads the date parts of one of the three forms, or `undefined`. */
function dateParts(text: string, now: number): DateParts | undefined {
  const month = (name: string) => MONTHS.indexOf(name.toLowerCase());
  let m = IMF_FIXDATE.exec(text);
  if (m) {
    const [, , d, mon, y, hh, mm, ss] = m;
    return { year: +y, month: month(mon), day: +d, hour: +hh, minute: +mm, second: +ss };
  }
  m = RFC850_DATE.exec(text);
  if (m && FULL_DAYS.includes(text.slice(0, text.indexOf(",")).toLowerCase())) {
    const [, , d, mon, y, hh, mm, ss] = m;
    const parts = { year: +y, month: month(mon), day: +d, hour: +hh, minute: +mm, second: +ss };
    return { ...parts, year: fullYear(parts, now) };
  }
  m = ASCTIME_DATE.exec(text);
  if (m) {
    const [, , mon, d, hh, mm, ss, y] = m;
    return { year: +y, month: month(mon), day: +d, hour: +hh, minute: +mm, second: +ss };
  }
  return undefined;
}

/**
 * Reads a `Retry-After` value, delay-seconds (`120`) or an HTTP-date in any
 * of the three forms that RFC 9110 section 5.6.7 makes recipients accept,
 * and returns the delay from `now` in milliseconds: negative or zero for a
 * date that has passed, `undefined` for anything else (an empty or missing
 * value, a fraction, a sign, a list, an impossible date). Dates are read
 * without regard to case; surrounding whitespace is ignored.
 *
 * @example
 * ```ts
 * import { parseRetryAfter } from "./retry_after.ts";
 * const now = Date.UTC(2025, 0, 1, 12, 0, 0);
 * parseRetryAfter("30", now); // 30000
 * parseRetryAfter("Wed, 01 Jan 2025 12:01:00 GMT", now); // 60000
 * parseRetryAfter("soon", now); // undefined
 * ```
 */
export function parseRetryAfter(value: string | null | undefined, now: number): number | undefined {
  if (value === null || value === undefined) return undefined;
  const text = value.trim();
  if (/^[0-9]+$/.test(text)) return Number(text) * 1000;
  const parts = dateParts(text, now);
  if (parts === undefined) return undefined;
  const ms = partsToMs(parts);
  return ms === undefined ? undefined : ms - now;
}

/** Options of {@linkcode pauseUntil}. */
export interface PauseOptions {
  /** The upstream's status code; only 429 and 503 pause a host. */
  status: number;
  /** The upstream's `Retry-After` value, if it sent one. */
  retryAfter: string | null | undefined;
  /** The current time, in milliseconds since the epoch. */
  now: number;
  /** The longest pause, in milliseconds; 0 or less turns pauses off. */
  max: number;
}

/**
 * The end of the pause that an upstream's answer asks for, in milliseconds
 * since the epoch, or `undefined` for no pause: not a 429 or 503, no or an
 * unreadable `Retry-After`, a delay of zero or a date that has passed, or
 * `max` of 0 (the feature turned off). The pause lasts at most `max`.
 *
 * @example
 * ```ts
 * import { pauseUntil } from "./retry_after.ts";
 * pauseUntil({ status: 429, retryAfter: "30", now: 1_000, max: 60_000 }); // 31000
 * pauseUntil({ status: 503, retryAfter: "3600", now: 1_000, max: 60_000 }); // 61000
 * pauseUntil({ status: 500, retryAfter: "30", now: 1_000, max: 60_000 }); // undefined
 * ```
 */
export function pauseUntil({ status, retryAfter, now, max }: PauseOptions): number | undefined {
  if (status !== 429 && status !== 503) return undefined;
  if (!(max > 0)) return undefined;
  const delay = parseRetryAfter(retryAfter, now);
  if (delay === undefined || delay <= 0) return undefined;
  return now + Math.min(delay, max);
}

/**
 * The whole seconds left until `until`, rounded up and at least 1: the
 * `Retry-After` to send a client refused during a pause.
 *
 * @example
 * ```ts
 * import { secondsLeft } from "./retry_after.ts";
 * secondsLeft(31_000, 1_000); // 30
 * secondsLeft(1_500, 1_000); // 1
 * secondsLeft(900, 1_000); // 1
 * ```
 */
export function secondsLeft(until: number, now: number): number {
  const seconds = Math.ceil((until - now) / 1000);
  return Number.isFinite(seconds) && seconds > 1 ? seconds : 1;
}
