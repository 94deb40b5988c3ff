/**
 * A bare CONNECT relay in Deno, the ceiling for one tunnel's throughput in
 * this runtime: reads the CONNECT head, dials, answers 200, then in each
 * direction `read` into one buffer of `--buffer` bytes and `write` it all.
 * No limits, no policy, no timeouts: only the bytes. With `--forward
 * HOST:PORT` it reads no head and pipes every connection to that address:
 * the floor of plain-HTTP forwarding in Deno (two reads and two writes per
 * keep-alive request, nothing parsed).
 *
 *     deno run -A bench/bare_relay.ts --port 8099 --buffer 262144
 *     deno run -A bench/bare_relay.ts --port 8099 --forward 127.0.0.1:8080
 *
 * @module
 */

import { parseArgs } from "node:util";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    port: { type: "string" },
    buffer: { type: "string", default: "65536" },
    forward: { type: "string" },
  },
});
const size = Number(values.buffer);
const listener = Deno.listen({ hostname: "127.0.0.1", port: Number(values.port) });

/** Copies `from` to `to` until the end, then half-closes `to`. */
async function copy(from: Deno.Conn, to: Deno.TcpConn): Promise<void> {
  const buf = new Uint8Array(size);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      let off = 0;
      while (off < n) off += await to.write(buf.subarray(off, n));
    }
    await to.closeWrite();
  } catch { /* reset */ }
}

async function forward(client: Deno.TcpConn, to: string): Promise<void> {
  const [hostname, port] = to.split(":");
  const upstream = await Deno.connect({ hostname, port: Number(port) });
  // As a proxy must: a small answer goes out at once.
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  await Promise.all([copy(client, upstream), copy(upstream, client)]);
  client.close();
  upstream.close();
}

async function serve(client: Deno.TcpConn): Promise<void> {
  const head = new Uint8Array(8192);
  let text = "";
  while (!text.includes("\r\n\r\n")) {
    const n = await client.read(head);
    if (n === null) return client.close();
    text += new TextDecoder().decode(head.subarray(0, n));
  }
  const [host, port] = text.split(" ")[1].split(":");
  const upstream = await Deno.connect({ hostname: host, port: Number(port) });
  await client.write(new TextEncoder().encode("HTTP/1.1 200 Connection Established\r\n\r\n"));
  await Promise.all([copy(client, upstream), copy(upstream, client)]);
  client.close();
  upstream.close();
}

for await (const client of listener) {
  (values.forward ? forward(client, values.forward) : serve(client)).catch(() => client.close());
}
