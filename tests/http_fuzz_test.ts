// Property-based tests of the head parser and the chunked decoder: they
// throw nothing but HttpError, always finish, and accept every well-formed
// message generated. DPRL_FUZZ_RUNS sets the runs per property.
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";
import {
  bodyFraming,
  endToEndLines,
  HttpError,
  parseRequestHead,
  parseResponseHead,
} from "../lib/proxy/http_head.ts";
import { BufferedReader, TooLargeError } from "../lib/proxy/buffered_reader.ts";
import { ChunkedDecoder } from "../lib/proxy/body.ts";
import { parseConnectTarget, parseTarget } from "../lib/proxy/target.ts";
import { latin1Bytes, latin1Text, memoryConn } from "./_helpers/memory_conn.ts";

const RUNS = Number(Deno.env.get("DPRL_FUZZ_RUNS") ?? 300);
const params = { numRuns: RUNS };

/** Runs `fn`; an error other than HttpError fails the property. */
function onlyHttpErrors(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof HttpError)) throw err;
  }
}

/** Splits `bytes` at the given cut points (as fractions). */
function cut(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const at = [...new Set(cuts.map((c) => Math.floor(c * bytes.length)))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let from = 0;
  for (const a of at) {
    out.push(bytes.subarray(from, a));
    from = a;
  }
  out.push(bytes.subarray(from));
  return out;
}

// Bytes that matter to HTTP framing, to make random input interesting.
const SPECIAL = '\r\n\t :;,="\\\x00\x7f\x80\xff0123456789abcdefABCDEF-';
const byte = fc.oneof(
  fc.integer({ min: 0, max: 255 }),
  fc.constantFrom(...[...SPECIAL].map((c) => c.charCodeAt(0))),
);
const noise = fc.array(byte, { maxLength: 300 }).map((a) => new Uint8Array(a));
const cuts = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 6 });

const tchar = fc.constantFrom(..."!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFXYZ");
const token = fc.string({ unit: tchar, minLength: 1, maxLength: 12 });
const vchar = fc.constantFrom(..."abcXYZ019!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\xe9\xff");
// A field value: visible characters with spaces and tabs only inside.
const fieldValue = fc.tuple(
  fc.string({ unit: vchar, maxLength: 20 }),
  fc.string({ unit: fc.constantFrom("a", " ", "\t"), maxLength: 5 }),
  fc.string({ unit: vchar, maxLength: 20 }),
).map(([a, mid, b]) => (a && b ? a + mid + b : a + b));
const fieldName = token.filter((n) =>
  !/^(connection|content-length|transfer-encoding|host|keep-alive|te|trailer|upgrade|proxy-.*)$/i
    .test(n)
);
const hostLabel = fc.string({ unit: fc.constantFrom(..."abcxyz-"), minLength: 1, maxLength: 8 })
  .map((l) => `a${l}z`);
const host = fc.oneof(
  fc.array(hostLabel, { minLength: 1, maxLength: 3 }).map((ls) => ls.join(".")),
  fc.tuple(
    fc.integer({ min: 0, max: 255 }),
    fc.integer({ min: 0, max: 255 }),
    fc.integer({ min: 0, max: 255 }),
    fc.integer({ min: 0, max: 255 }),
  ).map((p) => p.join(".")),
  fc.constant("[::1]"),
);
const pchar = fc.constantFrom(..."abc/019-._~!$&'()*+,;=:@%?");
const ows = fc.string({ unit: fc.constantFrom(" ", "\t"), maxLength: 3 });
const request = fc.record({
  method: token,
  host,
  port: fc.option(fc.integer({ min: 1, max: 65535 })),
  path: fc.string({ unit: pchar, maxLength: 30 }),
  minor: fc.constantFrom(0, 1),
  fields: fc.array(fc.tuple(fieldName, fieldValue, ows, ows), { maxLength: 30 }),
  length: fc.option(fc.integer({ min: 0, max: 1_000_000 })),
  leading: fc.constantFrom("", "\r\n", "\r\n\r\n"),
});

Deno.test("every well-formed request head is read and parsed as generated", async () => {
  await fc.assert(
    fc.asyncProperty(request, cuts, async (r, cs) => {
      const target = `http://${r.host}${r.port === null ? "" : `:${r.port}`}/${r.path}`;
      const fields = r.fields.map(([n, v, a, b]) => `${n}:${a}${v}${b}`);
      if (r.length !== null) fields.push(`Content-Length: ${r.length}`);
      const head = [`${r.method} ${target} HTTP/1.${r.minor}`, ...fields].join("\r\n");
      const wire = latin1Bytes(r.leading + head + "\r\n\r\nBODY");
      const reader = new BufferedReader(memoryConn(cut(wire, cs)).conn);
      const got = await reader.readHead(64 * 1024);
      assert.equal(latin1Text(got!), head);
      const req = parseRequestHead(got!);
      assert.equal(req.method, r.method);
      assert.equal(req.target, target);
      assert.equal(req.minor, r.minor);
      assert.deepEqual(
        req.names,
        r.fields.map(([n]) => n.toLowerCase()).concat(
          r.length === null ? [] : ["content-length"],
        ),
      );
      assert.deepEqual(req.values.slice(0, r.fields.length), r.fields.map(([, v]) => v));
      const framing = bodyFraming(req, (m) => new HttpError(400, m), true);
      assert.equal(framing.kind, r.length ? "length" : "none");
      assert.deepEqual(endToEndLines(req), fields);
      assert.equal(parseTarget(target).path, `/${r.path}`);
    }),
    params,
  );
});

Deno.test("the head reader and parsers throw only their own errors on any bytes", async () => {
  await fc.assert(
    fc.asyncProperty(noise, cuts, async (bytes, cs) => {
      const reader = new BufferedReader(memoryConn(cut(bytes, cs)).conn);
      let head: Uint8Array | null = null;
      try {
        head = await reader.readHead(256);
      } catch (err) {
        if (err instanceof TooLargeError || err instanceof Deno.errors.UnexpectedEof) return;
        throw err;
      }
      for (const input of [head ?? bytes, bytes]) {
        onlyHttpErrors(() => {
          const req = parseRequestHead(input);
          bodyFraming(req, (m) => new HttpError(400, m), true);
          endToEndLines(req);
          parseTarget(req.target);
        });
        onlyHttpErrors(() => {
          const res = parseResponseHead(input);
          bodyFraming(res, (m) => new HttpError(502, m), false);
          endToEndLines(res);
        });
        onlyHttpErrors(() => parseConnectTarget(latin1Text(input)));
      }
    }),
    params,
  );
});

const extension = fc.tuple(
  token,
  fc.option(
    fc.oneof(
      token,
      fc.string({ unit: fc.constantFrom(..."ab ;=,\\"), maxLength: 6 }).map((s) =>
        `"${s.replace(/[\\"]/g, "\\$&")}"`
      ),
    ),
  ),
).map(([n, v]) => `;${n}${v === null ? "" : `=${v}`}`);
const chunkData = fc.uint8Array({ minLength: 1, maxLength: 200 });
const chunked = fc.record({
  chunks: fc.array(
    fc.tuple(chunkData, fc.array(extension, { maxLength: 2 }), fc.boolean()),
    { maxLength: 12 },
  ),
  lastExt: fc.array(extension, { maxLength: 2 }),
  trailers: fc.array(fc.tuple(fieldName, fieldValue), { maxLength: 4 }),
});

Deno.test("every well-formed chunked body decodes to its data, in any pieces", async () => {
  await fc.assert(
    fc.asyncProperty(chunked, cuts, (body, cs) => {
      let wire = "";
      let data = "";
      for (const [bytes, exts, upper] of body.chunks) {
        const size = bytes.length.toString(16);
        wire += `${upper ? size.toUpperCase() : size}${exts.join("")}\r\n${latin1Text(bytes)}\r\n`;
        data += latin1Text(bytes);
      }
      wire += `0${body.lastExt.join("")}\r\n`;
      for (const [n, v] of body.trailers) wire += `${n}: ${v}\r\n`;
      wire += "\r\n";
      for (const dechunk of [false, true]) {
        const dec = new ChunkedDecoder({ dechunk, error: (m) => new HttpError(400, m) });
        let out = "";
        let consumed = 0;
        for (const piece of cut(latin1Bytes(wire + "NEXT"), cs)) {
          consumed += dec.feed(piece, (b) => out += latin1Text(b));
          if (dec.done) break;
        }
        assert.ok(dec.done);
        assert.equal(consumed, wire.length);
        assert.equal(out, dechunk ? data : wire);
      }
      return Promise.resolve();
    }),
    params,
  );
});

Deno.test("the chunked decoder throws only HttpError and never reads past the end", async () => {
  const chunkNoise = fc.oneof(
    noise,
    fc.tuple(chunked, fc.integer({ min: 0, max: 400 }), byte).map(([body, at, b]) => {
      // A well-formed body with one byte changed.
      let wire = "";
      for (const [bytes] of body.chunks) {
        wire += `${bytes.length.toString(16)}\r\n${latin1Text(bytes)}\r\n`;
      }
      const bytes = latin1Bytes(wire + "0\r\n\r\n");
      if (bytes.length > 0) bytes[at % bytes.length] = b;
      return bytes;
    }),
  );
  await fc.assert(
    fc.asyncProperty(chunkNoise, cuts, fc.boolean(), (bytes, cs, dechunk) => {
      const dec = new ChunkedDecoder({ dechunk, error: (m) => new HttpError(400, m) });
      onlyHttpErrors(() => {
        let emitted = 0;
        for (const piece of cut(bytes, cs)) {
          const n = dec.feed(piece, (b) => emitted += b.length);
          assert.ok(n >= 0 && n <= piece.length);
          if (dec.done) break;
        }
        // Framing kept: never more out than in, plus a trailer section's end.
        assert.ok(emitted <= bytes.length + 2);
      });
      return Promise.resolve();
    }),
    params,
  );
});
