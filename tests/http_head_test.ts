// Table tests of the head parser, the framing decision and the forwarded
// field lines, without sockets.
import assert from "node:assert/strict";
import {
  bodyFraming,
  endToEndLines,
  type Framing,
  HttpError,
  parseRequestHead,
  parseResponseHead,
  responseFraming,
} from "../lib/proxy/http_head.ts";
import { BufferedReader } from "../lib/proxy/buffered_reader.ts";
import { DEFAULTS } from "../lib/defaults.ts";
import { latin1Bytes, latin1Text, memoryConn, pieces } from "./_helpers/memory_conn.ts";

const T = "http://127.0.0.1:8080/x";

/** The request head of `fields` (without its final CRLF CRLF). */
function reqHead(fields: string[], line = `GET ${T} HTTP/1.1`): Uint8Array {
  return latin1Bytes([line, ...fields].join("\r\n"));
}

function status(fn: () => unknown): number | "ok" {
  try {
    fn();
    return "ok";
  } catch (err) {
    if (err instanceof HttpError) return err.status;
    throw err;
  }
}

Deno.test("request heads: accepted and refused, by table", () => {
  const cases: [string, string, number | "ok"][] = [
    ["plain GET", `GET ${T} HTTP/1.1\r\nHost: a`, "ok"],
    ["HTTP/1.0", `GET ${T} HTTP/1.0`, "ok"],
    ["obs-text in a value", `GET ${T} HTTP/1.1\r\nX: caf\xe9`, "ok"],
    ["tab in a value", `GET ${T} HTTP/1.1\r\nX: a\tb`, "ok"],
    ["empty value", `GET ${T} HTTP/1.1\r\nX:`, "ok"],
    ["Connection lists a plain field", `GET ${T} HTTP/1.1\r\nConnection: x-a, close`, "ok"],
    ["Connection lists Content-Length", `GET ${T} HTTP/1.1\r\nConnection: content-length`, 400],
    [
      "Connection lists it among others",
      `GET ${T} HTTP/1.1\r\nConnection: close , Content-Length`,
      400,
    ],
    [
      "Connection lists Transfer-Encoding",
      `GET ${T} HTTP/1.1\r\nConnection: Transfer-Encoding`,
      400,
    ],
    [
      "Connection lists Host",
      `GET ${T} HTTP/1.1\r\nConnection: keep-alive\r\nConnection: host`,
      400,
    ],
    ["tab in the target", `GET http://a/\tb HTTP/1.1`, 400],
    ["control byte in the target", `GET http://a/\x01b HTTP/1.1`, 400],
    ["DEL in the target", `GET http://a/\x7fb HTTP/1.1`, 400],
    ["byte 0x80 in the target", `GET http://a/\x80b HTTP/1.1`, 400],
    ["byte 0xff in the target", `GET http://a/\xffb HTTP/1.1`, 400],
    ["two spaces", `GET  ${T} HTTP/1.1`, 400],
    ["HTTP/2.0", `GET ${T} HTTP/2.0`, 400],
    ["lower-case version", `GET ${T} http/1.1`, 400],
    ["no version", `GET ${T}`, 400],
    ["obs-fold", `GET ${T} HTTP/1.1\r\nX: a\r\n b`, 400],
    ["space before the colon", `GET ${T} HTTP/1.1\r\nX : a`, 400],
    ["no colon", `GET ${T} HTTP/1.1\r\nX`, 400],
    ["empty name", `GET ${T} HTTP/1.1\r\n: a`, 400],
    ["NUL in a value", `GET ${T} HTTP/1.1\r\nX: a\x00b`, 400],
    ["bare CR in a value", `GET ${T} HTTP/1.1\r\nX: a\rb`, 400],
    ["bare LF", `GET ${T} HTTP/1.1\nX: a`, 400],
    ["empty line inside", `GET ${T} HTTP/1.1\r\n\r\nX: a`, 400],
  ];
  for (const [name, head, want] of cases) {
    assert.equal(status(() => parseRequestHead(latin1Bytes(head))), want, name);
  }
});

Deno.test("a request with more header fields than the cap gets 431", () => {
  const fields = (n: number) => Array.from({ length: n }, (_, i) => `X-${i}: v`);
  assert.equal(status(() => parseRequestHead(reqHead(fields(DEFAULTS.maxHeaderFields)))), "ok");
  assert.equal(status(() => parseRequestHead(reqHead(fields(DEFAULTS.maxHeaderFields + 1)))), 431);
  const res = latin1Bytes(
    ["HTTP/1.1 200 OK", ...fields(DEFAULTS.maxHeaderFields + 1)].join("\r\n"),
  );
  assert.equal(status(() => parseResponseHead(res)), 502);
});

Deno.test("response heads: accepted and refused, by table", () => {
  const cases: [string, number | "ok"][] = [
    ["HTTP/1.1 200 OK", "ok"],
    ["HTTP/1.1 200", "ok"],
    ["HTTP/1.0 204 No Content", "ok"],
    ["HTTP/1.1 200 OK\r\nX: a\r\n b", 502],
    ["HTTP/1.1 20 OK", 502],
    ["HTTP/1.1 2000 OK", 502],
    ["HTTP/2 200 OK", 502],
    ["HTTP/1.1 200 OK\nX: a", 502],
    ["HTTP/1.1 200 OK\r\nX\x00: a", 502],
  ];
  for (const [head, want] of cases) {
    assert.equal(status(() => parseResponseHead(latin1Bytes(head))), want, head);
  }
});

function requestFraming(fields: string[], minor = 1): Framing | number {
  try {
    const req = parseRequestHead(reqHead(fields, `POST ${T} HTTP/1.${minor}`));
    return bodyFraming(req, (m) => new HttpError(400, m), true);
  } catch (err) {
    if (err instanceof HttpError) return err.status;
    throw err;
  }
}

Deno.test("request framing: length, chunked, none or 400, by table", () => {
  const cases: [string[], number, Framing | number][] = [
    [[], 1, { kind: "none" }],
    [["Content-Length: 0"], 1, { kind: "none" }],
    [["Content-Length: 5"], 1, { kind: "length", length: 5 }],
    [["Content-Length: 5, 5"], 1, { kind: "length", length: 5 }],
    [["Content-Length: 5", "Content-Length: 5"], 1, { kind: "length", length: 5 }],
    [["Content-Length: 5", "Content-Length: 6"], 1, 400],
    [["Content-Length: 5, 6"], 1, 400],
    [["Content-Length: 5,"], 1, 400],
    [["Content-Length: +5"], 1, 400],
    [["Content-Length: 0x5"], 1, 400],
    [["Content-Length: 5 5"], 1, 400],
    [["Content-Length: 5\xa0"], 1, 400],
    [["Content-Length: \xa05"], 1, 400],
    [["Content-Length: 1234567890123456"], 1, 400],
    [["Transfer-Encoding: chunked"], 1, { kind: "chunked" }],
    [["Transfer-Encoding: CHUNKED"], 1, { kind: "chunked" }],
    [["Transfer-Encoding: gzip, chunked"], 1, { kind: "chunked" }],
    [["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"], 1, { kind: "chunked" }],
    [["Transfer-Encoding: chunked, identity"], 1, 400],
    [["Transfer-Encoding: chunked, chunked"], 1, 400],
    [["Transfer-Encoding: xchunked"], 1, 400],
    [["Transfer-Encoding: chunked\xa0"], 1, 400],
    [["Transfer-Encoding: identity"], 1, 400],
    [["Transfer-Encoding:"], 1, 400],
    [["Transfer-Encoding: chunked", "Content-Length: 5"], 1, 400],
    [["Transfer-Encoding: chunked"], 0, 400],
    [["Transfer-Encoding: identity"], 0, 400],
    [["Content-Length: 5"], 0, { kind: "length", length: 5 }],
  ];
  for (const [fields, minor, want] of cases) {
    assert.deepEqual(
      requestFraming(fields, minor),
      want,
      `${JSON.stringify(fields)} HTTP/1.${minor}`,
    );
  }
});

function resFraming(head: string, method = "GET"): Framing | number {
  try {
    return responseFraming(parseResponseHead(latin1Bytes(head)), method);
  } catch (err) {
    if (err instanceof HttpError) return err.status;
    throw err;
  }
}

Deno.test("response framing: none, length, chunked, close or 502, by table", () => {
  const cases: [string, string, Framing | number][] = [
    ["HTTP/1.1 200 OK", "GET", { kind: "close" }],
    ["HTTP/1.1 200 OK\r\nContent-Length: 0", "GET", { kind: "none" }],
    ["HTTP/1.1 200 OK\r\nContent-Length: 3", "GET", { kind: "length", length: 3 }],
    ["HTTP/1.1 200 OK\r\nContent-Length: 3", "HEAD", { kind: "none" }],
    ["HTTP/1.1 204 No Content", "GET", { kind: "none" }],
    ["HTTP/1.1 304 Not Modified\r\nContent-Length: 9", "GET", { kind: "none" }],
    ["HTTP/1.1 100 Continue", "GET", { kind: "none" }],
    ["HTTP/1.1 200 OK\r\nContent-Length: 3, 4", "HEAD", 502],
    ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", "GET", { kind: "chunked" }],
    ["HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip", "GET", { kind: "close" }],
    ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip", "GET", { kind: "close" }],
    ["HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked", "GET", { kind: "chunked", reusable: false }],
    ["HTTP/1.0 200 OK\r\nContent-Length: 3", "GET", { kind: "length", length: 3 }],
    ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3", "GET", 502],
  ];
  for (const [head, method, want] of cases) {
    assert.deepEqual(resFraming(head, method), want, `${method}: ${head}`);
  }
});

Deno.test("forwarded lines keep framing fields that Connection lists", () => {
  const res = parseResponseHead(latin1Bytes(
    "HTTP/1.1 200 OK\r\nConnection: content-length, transfer-encoding, x-a\r\n" +
      "Content-Length: 5\r\nX-A: 1\r\nX-B: 2\r\nKeep-Alive: timeout=5\r\nProxy-Foo: 1",
  ));
  assert.deepEqual(endToEndLines(res), ["Content-Length: 5", "X-B: 2"]);
  const chunked = parseResponseHead(latin1Bytes(
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding",
  ));
  assert.deepEqual(endToEndLines(chunked), ["Transfer-Encoding: chunked"]);
});

Deno.test("forwarded lines carry repeated Content-Length values as one line", () => {
  const lines = (head: string) => endToEndLines(parseResponseHead(latin1Bytes(head)));
  assert.deepEqual(lines("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nX: 1"), [
    "Content-Length: 5",
    "X: 1",
  ]);
  assert.deepEqual(
    lines("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nX: 1\r\nContent-Length: 5"),
    ["Content-Length: 5", "X: 1"],
  );
  assert.deepEqual(lines("HTTP/1.1 200 OK\r\ncontent-length:  5 "), ["content-length:  5 "]);
  const req = parseRequestHead(reqHead(["Content-Length: 7,7 , 7", "Host: a"]));
  assert.deepEqual(endToEndLines(req), ["Content-Length: 7", "Host: a"]);
});

Deno.test("a 64 KiB head with thousands of Connection tokens parses and filters right", () => {
  // Linear work: every field is checked against a Set of the listed tokens.
  const listed = Array.from({ length: 8700 }, (_, i) => `x-${i}`);
  const fields = [`Connection: ${listed.join(",")}`];
  for (let i = 0; i < 250; i++) fields.push(`X-${i * 20}: v`, ...(i < 3 ? [`Y-${i}: kept`] : []));
  const head = reqHead(fields.slice(0, DEFAULTS.maxHeaderFields));
  assert.ok(head.length > 60_000 && head.length <= DEFAULTS.maxHeadSize, String(head.length));
  const req = parseRequestHead(head);
  assert.deepEqual(endToEndLines(req), ["Y-0: kept", "Y-1: kept", "Y-2: kept"]);
});

/** Reads one head from `bytes` cut into pieces of `size`. */
async function readHead(bytes: string, size: number, end: "eof" | "throw" = "throw") {
  const mc = memoryConn(pieces(latin1Bytes(bytes), size), { end });
  const reader = new BufferedReader(mc.conn);
  const head = await reader.readHead(DEFAULTS.maxHeadSize);
  return { head: head && latin1Text(head), rest: latin1Text(reader.peek()) };
}

Deno.test("readHead returns a CRLF head in any piece size and keeps what follows", async () => {
  for (const size of [1, 2, 3, 5, 1000]) {
    const got = await readHead(`\r\n\r\nGET ${T} HTTP/1.1\r\nHost: a\r\n\r\nBODY`, size);
    assert.equal(got.head, `GET ${T} HTTP/1.1\r\nHost: a`, `pieces of ${size}`);
    // Pieces after the head are not read: at most what arrived with its end.
    assert.ok("BODY".startsWith(got.rest), got.rest);
  }
});

Deno.test("readHead ends a head with a bare LF at once, and the parser refuses it", async () => {
  // The connection throws on any read past these bytes: nothing waits for CRLF CRLF.
  for (
    const bytes of [
      `GET ${T} HTTP/1.1\nHost: a\n\n`,
      `GET ${T} HTTP/1.1\r\nHost: a\n\n`,
      `GET ${T} HTTP/1.1\r\nHost: a\r\n\n`,
      `GET ${T} HTTP/1.1\r\nHost: a\r\n\rX`,
      `\nGET ${T} HTTP/1.1`,
    ]
  ) {
    for (const size of [1, 4, 1000]) {
      const { head } = await readHead(bytes, size);
      assert.ok(head !== null);
      assert.equal(status(() => parseRequestHead(latin1Bytes(head))), 400, JSON.stringify(bytes));
    }
  }
});

Deno.test("readHead gives null at a clean end and refuses an oversized head", async () => {
  assert.equal((await readHead("", 1, "eof")).head, null);
  assert.equal((await readHead("\r\n", 1, "eof")).head, null);
  const mc = memoryConn([latin1Bytes(`GET ${T} HTTP/1.1\r\nX: ${"a".repeat(5000)}\r\n\r\n`)]);
  await assert.rejects(new BufferedReader(mc.conn).readHead(4096), /too large/);
});

Deno.test("a head of up to 4 KiB arriving after a watch is read in two reads, then the next one too", async () => {
  // A watch (a keep-alive client, a pooled upstream) waits with a 512-byte
  // buffer; a longer head, as most real ones are, moves to a 4 KiB one.
  const head = `GET ${T} HTTP/1.1\r\nHost: a\r\nX-Pad: ${"p".repeat(1400)}`;
  const mc = memoryConn([latin1Bytes(`${head}\r\n\r\n`), latin1Bytes(`${head}\r\n\r\n`)]);
  const reader = new BufferedReader(mc.conn);
  for (let round = 1; round <= 2; round++) {
    reader.watch();
    const got = await reader.readHead(DEFAULTS.maxHeadSize);
    assert.equal(got && latin1Text(got), head);
    assert.equal(mc.reads(), 2 * round, `reads by the end of head ${round}`);
  }
});
