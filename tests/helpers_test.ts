// Checks the test helpers themselves against real sockets and fetch, without
// the proxy, so that a failing proxy test points at the proxy.
import assert from "node:assert/strict";
import {
  BufferedConn,
  header,
  rawExchange,
  readHead,
  readResponse,
  request,
  sha256,
  text,
  utf8,
} from "./_helpers/raw.ts";
import {
  CHUNKS,
  FIXED_BODY,
  GZIP_PLAIN,
  startUpstream,
  startWebSocketUpstream,
  testCertificates,
} from "./_helpers/upstream.ts";

Deno.test("upstream helper serves fixed, gzip, chunked, 204, 304, HEAD and close-delimited bodies", async () => {
  await using up = await startUpstream();
  const addr = { hostname: up.hostname, port: up.port };
  const host = { Host: up.authority };

  const fixed = await rawExchange(addr, request("GET", "/fixed", host));
  assert.equal(fixed.status, 200);
  assert.equal(text(fixed.body), FIXED_BODY);

  const gz = await rawExchange(addr, request("GET", "/gzip", host));
  assert.equal(header(gz.head, "content-encoding"), "gzip");
  assert.deepEqual(gz.body, up.gzipBody);
  const plain = await new Response(
    new Blob([gz.body as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
      new DecompressionStream("gzip"),
    ),
  ).text();
  assert.equal(plain, GZIP_PLAIN);

  const ch = await rawExchange(addr, request("GET", "/chunked", host));
  assert.equal(text(ch.body), CHUNKS.join(""));
  assert.deepEqual(ch.trailers, [[
    "X-Checksum",
    await sha256(utf8(CHUNKS.join(""))),
  ]]);

  const c = await BufferedConn.connect(addr);
  try {
    await c.write(
      request("GET", "/204", host) + request("GET", "/304", host) +
        request("HEAD", "/fixed", host) + request("GET", "/conn", host),
    );
    assert.equal((await readResponse(c)).status, 204);
    assert.equal((await readResponse(c)).status, 304);
    const h = await readResponse(c, { method: "HEAD" });
    assert.equal(header(h.head, "content-length"), String(FIXED_BODY.length));
    assert.equal(text((await readResponse(c)).body), String(up.accepted));
  } finally {
    c.close();
  }

  const cd = await rawExchange(addr, request("GET", "/close", host));
  assert.ok(cd.closeDelimited);
  assert.equal(text(cd.body), "close-delimited body\n".repeat(50));
});

Deno.test("upstream helper holds /slow until released and records the peak", async () => {
  await using up = await startUpstream();
  const addr = { hostname: up.hostname, port: up.port };
  const pending = [1, 2, 3].map(() =>
    rawExchange(addr, request("GET", "/slow?ms=60000", { Host: up.authority }))
  );
  await up.waitHeld(3);
  assert.equal(up.peak, 3);
  up.release();
  for (const r of await Promise.all(pending)) assert.equal(r.status, 200);
});

Deno.test("upstream helper echoes a chunked request with trailers and answers 100-continue", async () => {
  await using up = await startUpstream();
  const c = await BufferedConn.connect({
    hostname: up.hostname,
    port: up.port,
  });
  try {
    await c.write(
      `POST /echo HTTP/1.1\r\nHost: ${up.authority}\r\n` +
        "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    );
    const seen = JSON.parse(text((await readResponse(c)).body));
    assert.equal(seen.body, "abc");
    assert.deepEqual(seen.trailers, [["X-T", "1"]]);
    await c.write(
      `POST /echo HTTP/1.1\r\nHost: ${up.authority}\r\n` +
        "Expect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    );
    const interim = await readHead(c);
    assert.equal(interim?.startLine, "HTTP/1.1 100 Continue");
    await c.write("hi");
    const final = await readResponse(c);
    assert.equal(JSON.parse(text(final.body)).body, "hi");
  } finally {
    c.close();
  }
});

Deno.test("TLS upstream is trusted by fetch with the test CA", async () => {
  const certs = await testCertificates();
  await using up = await startUpstream({
    tls: { cert: certs.cert, key: certs.key },
  });
  using client = Deno.createHttpClient({ caCerts: [certs.ca] });
  const res = await fetch(up.url("/fixed"), { client });
  assert.equal(await res.text(), FIXED_BODY);
});

Deno.test("WebSocket upstream echoes", async () => {
  await using ws = await startWebSocketUpstream();
  const sock = new WebSocket(`ws://${ws.authority}/ws`);
  const got = await new Promise<string>((resolve, reject) => {
    sock.onopen = () => sock.send("ping");
    sock.onmessage = (e) => resolve(String(e.data));
    sock.onerror = () => reject(new Error("websocket error"));
  });
  assert.equal(got, "ping");
  const closed = new Promise((r) => (sock.onclose = r));
  sock.close();
  await closed;
});
