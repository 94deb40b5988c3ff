import assert from "node:assert/strict";
import {
  configure,
  getLogger,
  getTextFormatter,
  type LogRecord,
  reset,
  type TextFormatter,
} from "@logtape/logtape";
import { formatAccessLine, jsonLinesFormatter, logAccess } from "../lib/log_format.ts";

/** Runs `fn` with LogTape writing every record of `dprl` through `formatter` into a list. */
async function capture(formatter: TextFormatter, fn: () => void): Promise<string[]> {
  const lines: string[] = [];
  await configure({
    reset: true,
    sinks: { list: (record: LogRecord) => lines.push(formatter(record)) },
    loggers: [
      { category: ["dprl"], lowestLevel: "debug", sinks: ["list"] },
      { category: ["logtape", "meta"], lowestLevel: "error", sinks: ["list"] },
    ],
  });
  try {
    fn();
  } finally {
    await reset();
  }
  return lines;
}

Deno.test("JSON log lines carry time, level, category, message and the fields", async () => {
  const before = Date.now();
  const lines = await capture(jsonLinesFormatter, () => {
    getLogger(["dprl", "redis"]).warn("Redis is {state} after {ms} ms", {
      state: "down",
      ms: 1000,
      big: 12345678901234567890n,
      err: new Error("connect ECONNREFUSED"),
      message: "a field named message",
    });
  });
  assert.equal(lines.length, 1);
  assert.ok(lines[0].endsWith("\n"));
  assert.equal(lines[0].indexOf("\n"), lines[0].length - 1, "one line");
  const entry = JSON.parse(lines[0]);
  assert.deepEqual(Object.keys(entry).slice(0, 4), ["time", "level", "category", "message"]);
  assert.ok(Date.parse(entry.time) >= before - 1);
  assert.equal(entry.level, "warning");
  assert.equal(entry.category, "dprl.redis");
  assert.equal(entry.message, "Redis is down after 1000 ms");
  assert.equal(entry.state, "down");
  assert.equal(entry.ms, 1000);
  assert.equal(entry.big, "12345678901234567890");
  assert.deepEqual(entry.err, { name: "Error", message: "connect ECONNREFUSED" });
  assert.equal(entry._message, "a field named message");
});

Deno.test("JSON log lines survive circular fields", async () => {
  const loop: Record<string, unknown> = {};
  loop.self = loop;
  const lines = await capture(jsonLinesFormatter, () => {
    getLogger(["dprl"]).info("state {loop}", { loop });
  });
  const entry = JSON.parse(lines[0]);
  assert.equal(entry.category, "dprl");
  assert.equal(typeof entry.message, "string");
});

Deno.test("the access log is one text line, and its fields in JSON", async () => {
  const entry = {
    client: "127.0.0.1:50312",
    method: "CONNECT",
    host: "api.example.com",
    status: 200,
    bytesUp: 517,
    bytesDown: 6120,
    durationMs: 1234.5,
  };
  const line = "127.0.0.1:50312 CONNECT api.example.com 200 up=517 down=6120 duration=1.235";
  assert.equal(formatAccessLine(entry), line);
  assert.equal(formatAccessLine({ ...entry, waitMs: 20 }), `${line} wait=0.02`);

  const text = await capture(getTextFormatter({ value: "bare" }), () => {
    logAccess(getLogger(["dprl", "access"]), entry);
  });
  assert.equal(text.length, 1);
  assert.ok(text[0].trimEnd().endsWith(`dprl·access: ${line}`), text[0]);

  const json = await capture(jsonLinesFormatter, () => {
    logAccess(getLogger(["dprl", "access"]), { ...entry, waitMs: 20 });
  });
  const parsed = JSON.parse(json[0]);
  assert.equal(parsed.message, `${line} wait=0.02`);
  assert.equal(parsed.category, "dprl.access");
  assert.equal(parsed.level, "info");
  assert.deepEqual(
    [parsed.client, parsed.method, parsed.host, parsed.status],
    ["127.0.0.1:50312", "CONNECT", "api.example.com", 200],
  );
  assert.deepEqual([parsed.bytesUp, parsed.bytesDown, parsed.duration, parsed.wait], [
    517,
    6120,
    1.235,
    0.02,
  ]);
});
