/**
 * Log records captured in a test file: one LogTape configuration that keeps
 * what the loggers under `category` write, from `lowestLevel` up.
 *
 * @module
 */

import { configure, type LogLevel, type LogRecord } from "@logtape/logtape";

/** Configures LogTape to keep the records of `category`; returns the list they go to. */
export async function captureLogs(
  category: string[] = ["dprl"],
  lowestLevel: LogLevel = "info",
): Promise<LogRecord[]> {
  const records: LogRecord[] = [];
  await configure({
    reset: true,
    sinks: { capture: (r: LogRecord) => records.push(r) },
    loggers: [
      { category, sinks: ["capture"], lowestLevel },
      { category: ["logtape", "meta"], sinks: [], lowestLevel: "warning" },
    ],
  });
  return records;
}

/** A record's message as one line: its text, and its values as JSON. */
export function messageText(r: LogRecord): string {
  return r.message.map((p) => typeof p === "string" ? p : JSON.stringify(p)).join("");
}
