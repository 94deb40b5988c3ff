// Malformed and hostile input over raw sockets: each gets its error status
// and a closed connection, reaches no upstream, and leaves the proxy serving.
import assert from "node:assert/strict";
import { BufferedConn, readResponse, request, text } from "./_helpers/raw.ts";
import { FIXED_BODY, startUpstream, type Upstream } from "./_helpers/upstream.ts";
import { startProxy, type TestProxy } from "./_helpers/proxy.ts";

/**
 * Sends `bytes` on a fresh connection, expects `status` then the close of
 * the connection, then proves the proxy still serves a normal request.
 */
async function expectRejected(
  tp: TestProxy,
  up: Upstream,
  bytes: string,
  status = 400,
): Promise<void> {
  const c = await BufferedConn.connect(tp.addr);
  try {
    try {
      await c.write(bytes);
    } catch {
      // The proxy may close before reading everything; the answer counts.
    }
    const res = await readResponse(c);
    assert.equal(res.status, status, `answer to ${JSON.stringify(bytes.slice(0, 120))}`);
    await c.waitClosed();
  } finally {
    c.close();
  }
  assert.equal(up.requests.length, 0, "nothing reached the upstream");
  await assertStillServes(tp, up);
}

async function assertStillServes(tp: TestProxy, up: Upstream): Promise<void> {
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(request("GET", up.url("/fixed"), { Host: up.authority }));
    const res = await readResponse(c);
    assert.equal(res.status, 200);
    assert.equal(text(res.body), FIXED_BODY);
  } finally {
    c.close();
  }
  // Forget the proof request so the next case can check again.
  up.requests.length = 0;
}

function post(up: Upstream, fields: string, body = ""): string {
  return `POST ${up.url("/echo")} HTTP/1.1\r\nHost: ${up.authority}\r\n${fields}\r\n${body}`;
}

Deno.test("both Content-Length and Transfer-Encoding get 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  await expectRejected(
    tp,
    up,
    post(up, "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"),
  );
  await expectRejected(
    tp,
    up,
    post(up, "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"),
  );
});

Deno.test("differing duplicate Content-Length gets 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  await expectRejected(tp, up, post(up, "Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"));
  await expectRejected(tp, up, post(up, "Content-Length: 5, 6\r\n", "hello!"));
});

Deno.test("an invalid Content-Length value gets 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  await expectRejected(tp, up, post(up, "Content-Length: abc\r\n", "hello"));
  await expectRejected(tp, up, post(up, "Content-Length: -5\r\n", "hello"));
  await expectRejected(tp, up, post(up, "Content-Length: +5\r\n", "hello"));
});

Deno.test("an invalid chunk size gets 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  await expectRejected(
    tp,
    up,
    post(up, "Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"),
  );
  await expectRejected(
    tp,
    up,
    post(up, "Transfer-Encoding: chunked\r\n", "-1\r\nhello\r\n0\r\n\r\n"),
  );
  // A chunk size that overflows any integer.
  await expectRejected(
    tp,
    up,
    post(up, "Transfer-Encoding: chunked\r\n", "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
  );
});

Deno.test("obs-fold in a header gets 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  await expectRejected(
    tp,
    up,
    `GET ${up.url("/fixed")} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
      "X-Folded: first\r\n  continued\r\n\r\n",
  );
  await expectRejected(
    tp,
    up,
    `GET ${up.url("/fixed")} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
      "X-Folded: first\r\n\tcontinued\r\n\r\n",
  );
});

Deno.test("control characters in a header get 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  for (const ch of ["\x00", "\x01", "\x7f", "\r"]) {
    await expectRejected(
      tp,
      up,
      `GET ${up.url("/fixed")} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
        `X-Bad: a${ch}b\r\n\r\n`,
    );
  }
  // A field name with a space before the colon (RFC 9112, 5.1).
  await expectRejected(
    tp,
    up,
    `GET ${up.url("/fixed")} HTTP/1.1\r\nHost: ${up.authority}\r\nX-Bad : v\r\n\r\n`,
  );
});

Deno.test("a request line that is not HTTP/1.x gets 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const host = `Host: ${up.authority}\r\n\r\n`;
  await expectRejected(tp, up, `GET ${up.url("/fixed")} HTTP/2.0\r\n${host}`);
  await expectRejected(tp, up, `GET ${up.url("/fixed")} FOO/1.1\r\n${host}`);
  await expectRejected(tp, up, `GET ${up.url("/fixed")}\r\n${host}`);
  await expectRejected(tp, up, `this is not http at all\r\n\r\n`);
});

Deno.test("CONNECT without a port gets 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  await expectRejected(tp, up, `CONNECT 127.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  await expectRejected(tp, up, `CONNECT 127.0.0.1: HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  await expectRejected(tp, up, `CONNECT 127.0.0.1:notaport HTTP/1.1\r\nHost: x\r\n\r\n`);
});

Deno.test("an origin-form request on the proxy port gets 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  await expectRejected(tp, up, `GET / HTTP/1.1\r\nHost: ${up.authority}\r\n\r\n`);
  await expectRejected(tp, up, `GET /fixed HTTP/1.1\r\nHost: ${up.authority}\r\n\r\n`);
});

Deno.test("an oversized head gets 431 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ maxHeadSize: 4096 });
  // A complete head just over the limit.
  await expectRejected(
    tp,
    up,
    `GET ${up.url("/fixed")} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
      `X-Big: ${"a".repeat(4200)}\r\n\r\n`,
    431,
  );
  // A head that never ends.
  await expectRejected(
    tp,
    up,
    `GET ${up.url("/fixed")} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
      `X-Big: ${"b".repeat(4200)}`,
    431,
  );
});

Deno.test("an oversized head at the default limit gets 431", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  await expectRejected(
    tp,
    up,
    `GET ${up.url("/fixed")} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
      `X-Big: ${"c".repeat(70 * 1024)}\r\n\r\n`,
    431,
  );
});

Deno.test("head timeout closes a silent client", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ timeouts: { head: 300 } });
  // Silent from the start.
  const silent = await BufferedConn.connect(tp.addr);
  try {
    await silent.waitClosed();
  } finally {
    silent.close();
  }
  // Silent halfway through a head.
  const partial = await BufferedConn.connect(tp.addr);
  try {
    await partial.write(`GET ${up.url("/fixed")} HTTP/1.1\r\nHost: `);
    const rest = text(await partial.waitClosed());
    // An answer before the close is allowed (408); anything else is not.
    assert.ok(rest === "" || /^HTTP\/1\.1 408 /.test(rest), rest);
  } finally {
    partial.close();
  }
  assert.equal(up.requests.length, 0);
  await assertStillServes(tp, up);
});

Deno.test("keep-alive timeout closes a client idle between requests", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ timeouts: { keepAlive: 300 } });
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(request("GET", up.url("/fixed"), { Host: up.authority }));
    assert.equal((await readResponse(c)).status, 200);
    assert.equal(text(await c.waitClosed()), "");
  } finally {
    c.close();
  }
});

Deno.test("a malformed request leaves other connections alone", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 2 });
  const busy = await BufferedConn.connect(tp.addr);
  try {
    await busy.write(request("GET", up.url("/slow?ms=60000"), { Host: up.authority }));
    await up.waitHeld(1);
    const bad = await BufferedConn.connect(tp.addr);
    try {
      await bad.write(post(up, "Content-Length: 1\r\nContent-Length: 2\r\n", "ab"));
      assert.equal((await readResponse(bad)).status, 400);
      await bad.waitClosed();
    } finally {
      bad.close();
    }
    up.release();
    const res = await readResponse(busy);
    assert.equal(text(res.body), "slow done\n");
    // The busy connection is still usable after the other one failed.
    await busy.write(request("GET", up.url("/fixed"), { Host: up.authority }));
    assert.equal(text((await readResponse(busy)).body), FIXED_BODY);
  } finally {
    busy.close();
  }
});

Deno.test("a bad request after a good one on the same connection closes only that connection", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(
      request("GET", up.url("/fixed"), { Host: up.authority }) +
        `GET / HTTP/1.1\r\nHost: x\r\n\r\n`,
    );
    const good = await readResponse(c);
    assert.equal(text(good.body), FIXED_BODY);
    assert.equal((await readResponse(c)).status, 400);
    await c.waitClosed();
  } finally {
    c.close();
  }
  up.requests.length = 0;
  await assertStillServes(tp, up);
});

Deno.test("garbage bytes and an immediate close do not disturb the proxy", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  for (const junk of ["\r\n\r\n", "\x16\x03\x01\x02\x00\x01\x00", "\x00".repeat(100), ""]) {
    const c = await BufferedConn.connect(tp.addr);
    try {
      if (junk) await c.write(junk);
      await c.closeWrite();
      await c.waitClosed();
    } finally {
      c.close();
    }
  }
  assert.equal(up.requests.length, 0);
  await assertStillServes(tp, up);
});
