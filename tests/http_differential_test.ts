// Differential test against llhttp (Node's strict HTTP parser) over a
// generated corpus of smuggling-style messages: wherever llhttp rejects,
// dprl rejects. Node runs once for the whole corpus. Without `node` on
// PATH the test fails under CI=true and warns otherwise.
import assert from "node:assert/strict";
import { BufferedReader } from "../lib/proxy/buffered_reader.ts";
import { relayBody } from "../lib/proxy/body.ts";
import {
  bodyFraming,
  HttpError,
  parseRequestHead,
  parseResponseHead,
  responseFraming,
} from "../lib/proxy/http_head.ts";
import { parseTarget } from "../lib/proxy/target.ts";
import { DEFAULTS } from "../lib/defaults.ts";
import { latin1Bytes, memoryConn } from "./_helpers/memory_conn.ts";

/** Parses every message of `input` as llhttp does, strictly; prints verdicts. */
const LLHTTP = `
const { HTTPParser } = require("_http_common");
const corpus = JSON.parse(require("fs").readFileSync(0, "latin1"));
const out = corpus.map(({ kind, wire }) => {
  const p = new HTTPParser();
  p.initialize(kind === "request" ? HTTPParser.REQUEST : HTTPParser.RESPONSE, {}, ${DEFAULTS.maxHeadSize}, 0);
  p[HTTPParser.kOnHeaders] = () => {};
  p[HTTPParser.kOnHeadersComplete] = () => 0;
  p[HTTPParser.kOnBody] = () => {};
  p[HTTPParser.kOnMessageComplete] = () => {};
  p[HTTPParser.kOnExecute] = () => {};
  const r = p.execute(Buffer.from(wire, "base64"));
  if (r instanceof Error) return r.code;
  const f = p.finish();
  return f instanceof Error ? "finish " + f.code : null;
});
process.stdout.write(JSON.stringify(out));
`;

/**
 * Where dprl accepts on purpose what llhttp refuses, and why: identical
 * Content-Length values (RFC 9110, 8.6 lets a recipient take them as one;
 * dprl forwards exactly one `Content-Length` line), and framing fields in a
 * trailer section (RFC 9110, 6.5.1; dprl drops them, so the next hop never
 * sees them). Nothing else may differ.
 */
function deliberate(wire: string): boolean {
  const head = wire.slice(0, wire.indexOf("\r\n\r\n"));
  const identicalLengths = /\r\nContent-Length: 5(, ?5|\r\nContent-Length: 5)\r\n/.test(
    head + "\r\n",
  );
  const trailerLength = /\r\n0\r\nContent-Length: 9\r\n\r\n$/.test(wire);
  return identicalLengths || trailerLength;
}

interface Case {
  kind: "request" | "response";
  wire: string;
  /** Known good: both parsers must accept it. */
  good?: boolean;
}

const T = "http://127.0.0.1:8080/p";
const HOST = "Host: 127.0.0.1:8080\r\n";

function corpus(): Case[] {
  const cases: Case[] = [];
  const req = (wire: string, good = false) => cases.push({ kind: "request", wire, good });
  const res = (wire: string, good = false) => cases.push({ kind: "response", wire, good });

  // Framing fields, each alone and in pairs, with bodies of both framings.
  const te = [
    "Transfer-Encoding: chunked",
    "Transfer-Encoding:chunked",
    "Transfer-Encoding: chunked ",
    "Transfer-Encoding:\tchunked",
    "Transfer-Encoding: CHUNKED",
    "Transfer-Encoding : chunked",
    " Transfer-Encoding: chunked",
    "Transfer-Encoding: xchunked",
    "Transfer-Encoding: chunkedx",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding: identity, chunked",
    "Transfer-Encoding: chunked, chunked",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
    "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked",
    'Transfer-Encoding: "chunked"',
    "Transfer-Encoding: chunked;q=1",
    "Transfer-Encoding: \x0bchunked",
    "Transfer-Encoding:\x00chunked",
    "Transfer-Encoding: chunk\x00ed",
    "Transfer-Encoding: \xa0chunked",
    "Transfer-Encoding\r\n : chunked",
    "Transfer-Encoding: \r\n chunked",
    "X: y\r\n Transfer-Encoding: chunked",
    "Transfer_Encoding: chunked",
    "Transfer-Encoding: gzip",
    "Transfer-Encoding:",
  ];
  const cl = [
    "Content-Length: 5",
    "Content-Length: 5, 5",
    "Content-Length: 5,5",
    "Content-Length: 5\r\nContent-Length: 5",
    "Content-Length: 5\r\nContent-Length: 6",
    "Content-Length: 5, 6",
    "Content-Length: +5",
    "Content-Length: -5",
    "Content-Length: 0x5",
    "Content-Length: 5 5",
    "Content-Length:  5  ",
    "Content-Length : 5",
    "Content-Length: 05",
    "Content-Length: 5\x00",
    "Content-Length: 5\xa0",
    "Content-Length: 99999999999999999999",
    "Content-Length: 5,",
    "Content-Length:",
    "Content-Length\r\n : 5",
  ];
  const chunkedBody = "5\r\nhello\r\n0\r\n\r\n";
  for (const t of te) req(`POST ${T} HTTP/1.1\r\n${HOST}${t}\r\n\r\n${chunkedBody}`);
  for (const c of cl) req(`POST ${T} HTTP/1.1\r\n${HOST}${c}\r\n\r\nhello`);
  for (const t of te.slice(0, 12)) {
    for (const c of cl.slice(0, 6)) {
      req(`POST ${T} HTTP/1.1\r\n${HOST}${c}\r\n${t}\r\n\r\n${chunkedBody}`);
      req(`POST ${T} HTTP/1.1\r\n${HOST}${t}\r\n${c}\r\n\r\n${chunkedBody}`);
    }
  }
  // HTTP/1.0 with Transfer-Encoding.
  req(`POST ${T} HTTP/1.0\r\n${HOST}Transfer-Encoding: chunked\r\n\r\n${chunkedBody}`);

  // Chunk-size tricks.
  const chunks = [
    "5 \r\nhello\r\n0\r\n\r\n",
    " 5\r\nhello\r\n0\r\n\r\n",
    "5\t\r\nhello\r\n0\r\n\r\n",
    "5;ext\r\nhello\r\n0\r\n\r\n",
    '5;ext="a b"\r\nhello\r\n0\r\n\r\n',
    "5;ext=a b\r\nhello\r\n0\r\n\r\n",
    "5 ;ext\r\nhello\r\n0\r\n\r\n",
    "5; ext\r\nhello\r\n0\r\n\r\n",
    "5;\r\nhello\r\n0\r\n\r\n",
    "5;ext\x00\r\nhello\r\n0\r\n\r\n",
    "5;ext\nhello\r\n0\r\n\r\n",
    "0x5\r\nhello\r\n0\r\n\r\n",
    "-5\r\nhello\r\n0\r\n\r\n",
    "+5\r\nhello\r\n0\r\n\r\n",
    "5\nhello\n0\n\n",
    "5\r\nhello\n0\r\n\r\n",
    "5\rhello\r\n0\r\n\r\n",
    "5\r\nhello0\r\n\r\n",
    "5\r\nhelloXX0\r\n\r\n",
    "5\r\nhell\r\n0\r\n\r\n",
    "fffffffffffffffff5\r\nhello\r\n0\r\n\r\n",
    "10000000000000000\r\nhello\r\n0\r\n\r\n",
    "000005\r\nhello\r\n0\r\n\r\n",
    "5\r\nhello\r\n0\r\nX: y\r\n\r\n",
    "5\r\nhello\r\n0\r\nX y\r\n\r\n",
    "5\r\nhello\r\n0\r\nX : y\r\n\r\n",
    "5\r\nhello\r\n0\r\nX: y\r\n z\r\n\r\n",
    "5\r\nhello\r\n0\r\nX: a\x00b\r\n\r\n",
    "5\r\nhello\r\n0\r\nContent-Length: 9\r\n\r\n",
    "5\r\nhello\r\n0\r\n\n",
    "5\r\nhello\r\n0\r\n",
    "5\r\nhello\r\n0\r\n\r",
    "\r\n5\r\nhello\r\n0\r\n\r\n",
    "g\r\nhello\r\n0\r\n\r\n",
    "5\r\nhello\r\n\r\n0\r\n\r\n",
    "5\r\nhello\r\n 0\r\n\r\n",
  ];
  for (const body of chunks) {
    req(`POST ${T} HTTP/1.1\r\n${HOST}Transfer-Encoding: chunked\r\n\r\n${body}`);
    res(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${body}`);
  }

  // Head tricks: bare CR and LF, NUL, white space, folding, request lines.
  const heads = [
    `GET ${T} HTTP/1.1\n${HOST}\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}\n`,
    `GET ${T} HTTP/1.1\n${HOST}\r\n`,
    `GET ${T} HTTP/1.1\r${HOST}\r\n`,
    `GET ${T} HTTP/1.1\r\nHost: 127.0.0.1\r8080\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X: a\rb\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X: a\nb\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X: a\x00b\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X\x00: a\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X : a\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X\t: a\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X: a\r\n b\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X: a\r\n\tb\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n ${HOST}\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}: a\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X-\x7f: a\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X: a\x7fb\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X: \x01\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X(y): a\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X{y}: a\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}X"y": a\r\n\r\n`,
    `GET  ${T} HTTP/1.1\r\n${HOST}\r\n`,
    `GET ${T}  HTTP/1.1\r\n${HOST}\r\n`,
    `GET ${T} HTTP/1.1 \r\n${HOST}\r\n`,
    ` GET ${T} HTTP/1.1\r\n${HOST}\r\n`,
    `GET\t${T} HTTP/1.1\r\n${HOST}\r\n`,
    `GET ${T}\tHTTP/1.1\r\n${HOST}\r\n`,
    `GET ${T} http/1.1\r\n${HOST}\r\n`,
    `GET ${T} HTTP/1.2\r\n${HOST}\r\n`,
    `GET ${T} HTTP/2.0\r\n${HOST}\r\n`,
    `GET ${T} HTTP/1.01\r\n${HOST}\r\n`,
    `GET ${T} HTTP/11\r\n${HOST}\r\n`,
    `GET ${T}\r\n${HOST}\r\n`,
    `GET http://127.0.0.1:8080/a\tb HTTP/1.1\r\n${HOST}\r\n`,
    `GET http://127.0.0.1:8080/a\x01b HTTP/1.1\r\n${HOST}\r\n`,
    `GET http://127.0.0.1:8080/a\x7fb HTTP/1.1\r\n${HOST}\r\n`,
    `GET http://127.0.0.1:8080/a\x80b HTTP/1.1\r\n${HOST}\r\n`,
    `GET http://127.0.0.1:8080/a\xffb HTTP/1.1\r\n${HOST}\r\n`,
    `GET http://127.0.0.1:8080/a\x00b HTTP/1.1\r\n${HOST}\r\n`,
    `GET http://127.0.0.1:8080/a b HTTP/1.1\r\n${HOST}\r\n`,
    `G\x00ET ${T} HTTP/1.1\r\n${HOST}\r\n`,
    `GE T ${T} HTTP/1.1\r\n${HOST}\r\n`,
    `G(ET ${T} HTTP/1.1\r\n${HOST}\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}\r\n\x00`,
    `GET ${T} HTTP/1.1\r\n${HOST}\r\nGARBAGE\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}\r\nGET ${T} HTTP/1.1\n\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}Content-Length: 5\r\n\r\nhelloGET /x HTTP/1.1\r\n\r\n`,
    `GET ${T} HTTP/1.1\r\n${HOST}`,
    `GET ${T} HTTP/1.1\r\n${HOST}\r`,
    `GET ${T} HTTP/1.1\r\n${HOST}X: ${"a".repeat(70_000)}\r\n\r\n`,
  ];
  for (const h of heads) req(h);

  // Responses: status lines and framing.
  const statusLines = [
    "HTTP/1.1 200 OK",
    "HTTP/1.1 200",
    "HTTP/1.1 200 ",
    "HTTP/1.1  200 OK",
    "HTTP/1.1 20 OK",
    "HTTP/1.1 2000 OK",
    "HTTP/1.1 abc OK",
    "HTTP/1.2 200 OK",
    "HTTP/2 200 OK",
    "http/1.1 200 OK",
    "HTTP/1.1 200 O\x00K",
    "HTTP/1.1 200 O\rK",
  ];
  for (const s of statusLines) res(`${s}\r\nContent-Length: 2\r\n\r\nok`);
  for (const t of te.slice(0, 16)) res(`HTTP/1.1 200 OK\r\n${t}\r\n\r\n${chunkedBody}`);
  for (const c of cl) res(`HTTP/1.1 200 OK\r\n${c}\r\n\r\nhello`);
  res(`HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n${chunkedBody}`);
  res(`HTTP/1.1 200 OK\nContent-Length: 2\n\nok`);
  res(`HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok`);

  // Known good: both must accept these.
  req(`GET ${T} HTTP/1.1\r\n${HOST}\r\n`, true);
  req(`GET ${T} HTTP/1.0\r\n\r\n`, true);
  req(`\r\nGET ${T} HTTP/1.1\r\n${HOST}\r\n`, true);
  req(`POST ${T} HTTP/1.1\r\n${HOST}Content-Length: 5\r\n\r\nhello`, true);
  req(`POST ${T} HTTP/1.1\r\n${HOST}Transfer-Encoding: chunked\r\n\r\n${chunkedBody}`, true);
  req(`POST ${T} HTTP/1.1\r\n${HOST}Transfer-Encoding: gzip, chunked\r\n\r\n${chunkedBody}`, true);
  req(
    `POST ${T} HTTP/1.1\r\n${HOST}Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX: y\r\n\r\n`,
    true,
  );
  req(`GET ${T} HTTP/1.1\r\n${HOST}X: caf\xe9\r\nY:\r\nZ: a\tb\r\n\r\n`, true);
  req(`GET ${T} HTTP/1.1\r\n${HOST}\r\nGET ${T} HTTP/1.1\r\n${HOST}\r\n`, true);
  res(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok`, true);
  res(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${chunkedBody}`, true);
  res(`HTTP/1.1 204 No Content\r\n\r\n`, true);
  res(`HTTP/1.0 200 OK\r\n\r\nclose-delimited`, true);
  return cases;
}

/** dprl's verdict over every message of `wire`: null when all are accepted. */
async function dprl({ kind, wire }: Case): Promise<string | null> {
  const reader = new BufferedReader(memoryConn([latin1Bytes(wire)]).conn);
  const sink = memoryConn([]).conn;
  const error = (m: string) => new HttpError(kind === "request" ? 400 : 502, m);
  try {
    for (;;) {
      const head = await reader.readHead(DEFAULTS.maxHeadSize);
      if (head === null) return null;
      let framing;
      if (kind === "request") {
        const req = parseRequestHead(head);
        parseTarget(req.target);
        framing = bodyFraming(req, error, true);
      } else {
        framing = responseFraming(parseResponseHead(head), "GET");
      }
      await relayBody(reader, sink, framing, null, () => {}, error);
    }
  } catch (err) {
    return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  }
}

async function llhttp(cases: Case[]): Promise<(string | null)[] | null> {
  let child;
  try {
    child = new Deno.Command("node", {
      args: ["-e", LLHTTP],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
  const input = JSON.stringify(cases.map((c) => ({ kind: c.kind, wire: btoa(c.wire) })));
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(input));
  await w.close();
  const out = await child.output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

Deno.test("wherever llhttp rejects a message, dprl rejects it too", async () => {
  const cases = corpus();
  assert.ok(cases.length >= 200, `corpus of ${cases.length}`);
  const reference = await llhttp(cases);
  if (reference === null) {
    if (Deno.env.get("CI") === "true") {
      assert.fail("node is not on PATH: the differential test cannot run");
    }
    console.warn("node is not on PATH: differential test against llhttp skipped");
    return;
  }
  const missed: string[] = [];
  let rejected = 0;
  for (let i = 0; i < cases.length; i++) {
    const mine = await dprl(cases[i]);
    if (reference[i] !== null) rejected++;
    if (reference[i] !== null && mine === null && !deliberate(cases[i].wire)) {
      missed.push(
        `${cases[i].kind} ${JSON.stringify(cases[i].wire.slice(0, 200))}: llhttp ${reference[i]}`,
      );
    }
    if (cases[i].good) {
      assert.equal(
        reference[i],
        null,
        `llhttp refuses a good case: ${JSON.stringify(cases[i].wire)}`,
      );
      assert.equal(mine, null, `dprl refuses a good case: ${JSON.stringify(cases[i].wire)}`);
    }
  }
  assert.deepEqual(missed, [], `${missed.length} messages llhttp rejects and dprl accepts`);
  // The corpus is about rejection: most of it must be refused by llhttp.
  assert.ok(rejected > cases.length / 3, `llhttp rejected ${rejected} of ${cases.length}`);
});
