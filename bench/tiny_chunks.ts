/**
 * The proxy's CPU cost of tiny chunks: a 6 MB body in 1-byte chunks relayed
 * once as a response and once as a request body, through a dprl started
 * from `cli.ts` of this repository (or of `--repo DIR`).
 *
 *     deno run -A bench/tiny_chunks.ts [--repo DIR] [--size BYTES]
 *
 * Prints the proxy's CPU seconds (user + system) per direction.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { cpuSeconds, freePort, spawn, stopAll, waitForPort } from "./process.ts";
import { startTaskV8Flags } from "./proxies.ts";

const { values } = parseArgs({
  options: {
    repo: { type: "string", default: new URL("..", import.meta.url).pathname },
    size: { type: "string", default: String(6 * 1000 * 1000) },
  },
});
const size = Number(values.size);
const encoder = new TextEncoder();

/** `size` bytes of data as chunked framing, one byte per chunk. */
function tinyChunks(size: number): Uint8Array {
  const unit = encoder.encode("1\r\nx\r\n");
  const end = encoder.encode("0\r\n\r\n");
  const wire = new Uint8Array(size * unit.length + end.length);
  for (let i = 0; i < size; i++) wire.set(unit, i * unit.length);
  wire.set(end, size * unit.length);
  return wire;
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) {
    off += await conn.write(data.subarray(off, off + 256 * 1024));
  }
}

/** Reads a head and then `bodyBytes` more bytes; returns the head text. */
async function readHeadAndBody(conn: Deno.Conn, bodyBytes: number): Promise<string> {
  const buf = new Uint8Array(256 * 1024);
  let head = "";
  let body = -1;
  while (body < bodyBytes) {
    const n = await conn.read(buf);
    if (n === null) throw new Error(`Stream ended after ${body} body bytes of ${bodyBytes}`);
    if (body < 0) {
      head += new TextDecoder("latin1").decode(buf.subarray(0, n));
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) continue;
      body = head.length - end - 4;
      head = head.slice(0, end);
    } else body += n;
  }
  return head;
}

/** Reads until the bytes read so far end with `end`. */
async function readUntil(conn: Deno.Conn, end: string, seen = ""): Promise<void> {
  const buf = new Uint8Array(256 * 1024);
  let tail = seen;
  while (!tail.endsWith(end)) {
    const n = await conn.read(buf);
    if (n === null) throw new Error("Stream ended inside a request");
    tail = (tail + String.fromCharCode(...buf.subarray(Math.max(0, n - 16), n))).slice(-16);
  }
}

/** Reads the rest of a GET request's head whose first bytes are `first`. */
function readUntilHeadEnd(conn: Deno.Conn, first: Uint8Array): Promise<void> {
  return readUntil(conn, "\r\n\r\n", String.fromCharCode(...first));
}

const wire = tinyChunks(size);
const upstream = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const upPort = (upstream.addr as Deno.NetAddr).port;
(async () => {
  for await (const conn of upstream) {
    (async () => {
      try {
        // One request per read of its first bytes; the proxy reuses the connection.
        const first = new Uint8Array(16);
        while (await conn.read(first) !== null) {
          if (first[0] === 0x47) { // GET
            await readUntilHeadEnd(conn, first);
            await writeAll(
              conn,
              encoder.encode("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            );
            await writeAll(conn, wire);
          } else {
            // The rest of the request, up to the end of its chunked body.
            await readUntil(conn, "\r\n0\r\n\r\n");
            await writeAll(conn, encoder.encode("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
          }
        }
      } catch { /* the run is over */ }
    })();
  }
})();

const port = freePort();
const proxy = spawn("dprl", Deno.execPath(), [
  "run",
  "--allow-net",
  "--allow-env",
  "--allow-sys",
  ...startTaskV8Flags(),
  `${values.repo}/cli.ts`,
  "--hostname",
  "127.0.0.1",
  "--port",
  String(port),
  "--log-level",
  "warn",
], { cwd: values.repo });

/** Runs `exchange` on a fresh client connection; the proxy's CPU seconds. */
async function measure(exchange: (c: Deno.Conn) => Promise<void>): Promise<number> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  const before = cpuSeconds(proxy.pid);
  const t0 = performance.now();
  await exchange(c);
  const wall = (performance.now() - t0) / 1000;
  const after = cpuSeconds(proxy.pid);
  c.close();
  const cpu = after.user + after.sys - before.user - before.sys;
  console.log(`  wall ${wall.toFixed(2)} s`);
  return cpu;
}

try {
  await waitForPort(port, 60_000, proxy);
  const target = `http://127.0.0.1:${upPort}/tiny`;
  console.log(`${size} bytes in 1-byte chunks (${wire.length} bytes on the wire)`);
  const response = await measure(async (c) => {
    await writeAll(c, encoder.encode(`GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`));
    await readHeadAndBody(c, wire.length);
  });
  console.log(`response: proxy CPU ${response.toFixed(2)} s`);
  const request = await measure(async (c) => {
    await writeAll(
      c,
      encoder.encode(
        `POST ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n`,
      ),
    );
    await writeAll(c, wire);
    await readHeadAndBody(c, 0);
  });
  console.log(`request: proxy CPU ${request.toFixed(2)} s`);
} finally {
  upstream.close();
  await stopAll();
}
