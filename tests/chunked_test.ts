// The chunked decoder and the body relays, without sockets.
import assert from "node:assert/strict";
import { ChunkedDecoder, relayBody, relayDechunked } from "../lib/proxy/body.ts";
import { BufferedReader } from "../lib/proxy/buffered_reader.ts";
import { HttpError } from "../lib/proxy/http_head.ts";
import { latin1Bytes, latin1Text, memoryConn, pieces } from "./_helpers/memory_conn.ts";

const error = (m: string) => new HttpError(400, m);

interface Decoded {
  /** What the decoder emitted. */
  out: string;
  /** Bytes consumed. */
  consumed: number;
  done: boolean;
}

/** Decodes `wire` fed in pieces of `size`; an HttpError's status on failure. */
function decode(wire: string, dechunk: boolean, size = wire.length || 1): Decoded | number {
  const dec = new ChunkedDecoder({ dechunk, error });
  let out = "";
  let consumed = 0;
  try {
    for (const piece of pieces(latin1Bytes(wire), size)) {
      const n = dec.feed(piece, (b) => out += latin1Text(b));
      consumed += n;
      if (n < piece.length) break;
    }
  } catch (err) {
    if (err instanceof HttpError) return err.status;
    throw err;
  }
  return { out, consumed, done: dec.done };
}

const VALID: [string, string][] = [
  ["0\r\n\r\n", ""],
  ["5\r\nhello\r\n0\r\n\r\n", "hello"],
  ["1\r\na\r\n1\r\nb\r\n0\r\n\r\n", "ab"],
  ["A\r\n0123456789\r\n0\r\n\r\n", "0123456789"],
  ["a\r\n0123456789\r\n0\r\n\r\n", "0123456789"],
  ["005\r\nhello\r\n0000\r\n\r\n", "hello"],
  ["5;ext\r\nhello\r\n0\r\n\r\n", "hello"],
  ["5;a=b;c\r\nhello\r\n0;last\r\n\r\n", "hello"],
  ['5;a="q \\" ;"\r\nhello\r\n0\r\n\r\n', "hello"],
  ["5\r\nhe\r\nl\r\n0\r\n\r\n", "he\r\nl"],
  ["0\r\nX-Sum: 1\r\n\r\n", ""],
];

Deno.test("the decoder reads well-formed chunked bodies in any piece size", () => {
  for (const [wire, data] of VALID) {
    for (const size of [1, 2, 3, 7, wire.length]) {
      const keep = decode(wire + "NEXT", false, size);
      assert.deepEqual(
        keep,
        { out: wire, consumed: wire.length, done: true },
        `${wire} by ${size}`,
      );
      const de = decode(wire + "NEXT", true, size);
      assert.deepEqual(de, { out: data, consumed: wire.length, done: true }, `${wire} by ${size}`);
    }
  }
});

Deno.test("the decoder refuses broken chunked framing, by table", () => {
  const cases = [
    "zz\r\nhello\r\n0\r\n\r\n",
    "-1\r\nx\r\n0\r\n\r\n",
    "+1\r\nx\r\n0\r\n\r\n",
    "0x1\r\nx\r\n0\r\n\r\n",
    " 1\r\nx\r\n0\r\n\r\n",
    "1 \r\nx\r\n0\r\n\r\n",
    "1 ;a\r\nx\r\n0\r\n\r\n",
    "1;\r\nx\r\n0\r\n\r\n",
    "1; a\r\nx\r\n0\r\n\r\n",
    "1;a =b\r\nx\r\n0\r\n\r\n",
    "1;a=\r\nx\r\n0\r\n\r\n",
    '1;a="x\r\nx\r\n0\r\n\r\n',
    '1;a="x"y\r\nx\r\n0\r\n\r\n',
    "1;a\x00\r\nx\r\n0\r\n\r\n",
    "\r\nx\r\n0\r\n\r\n",
    "1\nx\r\n0\r\n\r\n",
    "1\rx\r\n0\r\n\r\n",
    "1\r\nxx\r\n0\r\n\r\n",
    "1\r\nx\n0\r\n\r\n",
    "1\r\nx\r0\r\n\r\n",
    "ffffffffffffffffff\r\nx\r\n0\r\n\r\n",
    "20000000000000\r\nx",
    "0\r\n\n",
    "0\r\nX-Sum 1\r\n\r\n",
    "0\r\n: 1\r\n\r\n",
    "0\r\nX-Sum: a\x01b\r\n\r\n",
    "0\r\nX-Sum: 1\n\r\n",
    "0\r\n folded\r\n\r\n",
    `1;${"a".repeat(5000)}\r\nx\r\n0\r\n\r\n`,
  ];
  for (const wire of cases) {
    for (const size of [1, wire.length]) {
      assert.equal(decode(wire, false, size), 400, JSON.stringify(wire));
      assert.equal(decode(wire, true, size), 400, JSON.stringify(wire));
    }
  }
});

Deno.test("an unfinished chunked body leaves the decoder waiting, not done", () => {
  for (const wire of ["", "5", "5\r\nhel", "5\r\nhello\r\n", "0\r\n", "0\r\nX: 1\r\n"]) {
    const got = decode(wire, false);
    assert.ok(typeof got === "object" && !got.done && got.consumed === wire.length, wire);
  }
});

Deno.test("framing and routing fields in trailers are dropped, others kept", () => {
  const wire = "3\r\nabc\r\n0\r\nContent-Length: 99\r\nX-Sum: 1\r\nTransfer-Encoding: chunked\r\n" +
    "Host: evil\r\nconnection: close\r\nTrailer: X\r\nProxy-Foo: 1\r\nX-Other: \xe9\r\n\r\n";
  assert.deepEqual(decode(wire, false, 5), {
    out: "3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Other: \xe9\r\n\r\n",
    consumed: wire.length,
    done: true,
  });
  assert.deepEqual(decode(wire, true, 5), { out: "abc", consumed: wire.length, done: true });
});

/** Tiny chunks of `data`, one byte each. */
function tiny(data: string): string {
  let wire = "";
  for (const c of data) wire += `1\r\n${c}\r\n`;
  return wire + "0\r\n\r\n";
}

async function relay(
  wire: Uint8Array,
  size: number,
  dechunk: boolean,
): Promise<{ sent: string; rest: string }> {
  const src = memoryConn(pieces(wire, size));
  const dst = memoryConn([]);
  const reader = new BufferedReader(src.conn);
  const head = latin1Bytes("HEAD\r\n\r\n");
  if (dechunk) await relayDechunked(reader, dst.conn, head, () => {}, error);
  else await relayBody(reader, dst.conn, { kind: "chunked" }, head, () => {}, error);
  return { sent: latin1Text(dst.written()), rest: latin1Text(reader.peek()) };
}

Deno.test("relayBody passes 1-byte chunks on byte for byte and stops at the body's end", async () => {
  const data = "0123456789abcdef".repeat(300);
  const wire = tiny(data);
  for (const size of [1, 7, 4096, 100_000]) {
    const got = await relay(latin1Bytes(wire + "GET next"), size, false);
    assert.equal(got.sent, "HEAD\r\n\r\n" + wire, `pieces of ${size}`);
    assert.ok("GET next".startsWith(got.rest));
  }
});

Deno.test("relayDechunked sends only the data of a chunked body", async () => {
  const data = "0123456789abcdef".repeat(300);
  for (const size of [1, 7, 4096]) {
    const got = await relay(latin1Bytes(tiny(data)), size, true);
    assert.equal(got.sent, "HEAD\r\n\r\n" + data, `pieces of ${size}`);
  }
});

Deno.test("large chunks are relayed intact in both modes", async () => {
  const big = new Uint8Array(300_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + 3) & 255;
  const bigText = latin1Text(big);
  const wire = `1;x=y\r\nA\r\n${big.length.toString(16)}\r\n${bigText}\r\n2000\r\n${
    bigText.slice(0, 0x2000)
  }\r\n0\r\nX-Sum: 1\r\n\r\n`;
  for (const size of [1000, 65536]) {
    const keep = await relay(latin1Bytes(wire), size, false);
    assert.equal(keep.sent, "HEAD\r\n\r\n" + wire);
    const de = await relay(latin1Bytes(wire), size, true);
    assert.equal(de.sent, "HEAD\r\n\r\nA" + bigText + bigText.slice(0, 0x2000));
  }
});

Deno.test("a chunked body cut short is an HttpError, not a hang", async () => {
  for (const wire of ["5\r\nhel", "5\r\nhello\r\n", "5", "0\r\nX: 1\r\n"]) {
    for (const dechunk of [false, true]) {
      await assert.rejects(relay(latin1Bytes(wire), 1, dechunk), HttpError, wire);
    }
  }
});
