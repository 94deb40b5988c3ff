// Malformed and hostile input over raw sockets: each gets its error status
// and a closed connection, reaches no upstream, and leaves the proxy serving.
import assert from "node:assert/strict";
import { BufferedConn, CRLFCRLF, headerAll, readResponse, request, text } from "./_helpers/raw.ts";
import { FIXED_BODY, startUpstream, type Upstream } from "./_helpers/upstream.ts";
import { startProxy, type TestProxy } from "./_helpers/proxy.ts";

/**
 * Sends `bytes` on a fresh connection, expects `status` then the close of
 * the connection, then proves the proxy still serves a normal request.
 */
async function expectRejected(
  tp: TestProxy,
  up: Upstream,
  bytes: string | Uint8Array,
  status = 400,
  ms?: number,
): Promise<void> {
  const c = await BufferedConn.connect(tp.addr);
  try {
    try {
      await c.write(bytes);
    } catch {
      // The proxy may close before reading everything; the answer counts.
    }
    const res = await readResponse(c, { ms });
    const shown = typeof bytes === "string" ? bytes : latin1(bytes);
    assert.equal(res.status, status, `answer to ${JSON.stringify(shown.slice(0, 120))}`);
    await c.waitClosed(ms);
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

/** Waits for the proxy to close `c`; what it sent before, as text. */
async function closedWith(c: BufferedConn): Promise<string> {
  try {
    return text(await c.waitClosed());
  } finally {
    c.close();
  }
}

/** Asserts that `said` is exactly one 408 answer that closes the connection. */
function assertRequestTimeout(said: string): void {
  const [head, body] = said.split("\r\n\r\n");
  assert.match(head, /^HTTP\/1\.1 408 Request Timeout\r\n/, said);
  assert.match(head, /\r\nConnection: close(\r\n|$)/, said);
  assert.match(head, /\r\nProxy-Status: dprl; error=http_request_error;/, said);
  const length = Number(head.match(/\r\nContent-Length: (\d+)/)?.[1]);
  assert.equal(body.length, length, said);
}

Deno.test("head timeout closes a silent client quietly and answers a half-sent head 408", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ timeouts: { head: 300 } });
  const silent = await BufferedConn.connect(tp.addr);
  assert.equal(await closedWith(silent), "");
  const partial = await BufferedConn.connect(tp.addr);
  await partial.write(`GET ${up.url("/fixed")} HTTP/1.1\r\nHost: `);
  assertRequestTimeout(await closedWith(partial));
  assert.equal(up.requests.length, 0);
  await assertStillServes(tp, up);
});

Deno.test("keep-alive timeout closes a client idle between requests; a half-sent next head gets 408", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ timeouts: { keepAlive: 300 } });
  for (const next of ["", `GET ${up.url("/fixed")} HTTP/1.1\r\n`]) {
    const c = await BufferedConn.connect(tp.addr);
    await c.write(request("GET", up.url("/fixed"), { Host: up.authority }));
    assert.equal((await readResponse(c)).status, 200);
    if (next) await c.write(next);
    const said = await closedWith(c);
    if (next) assertRequestTimeout(said);
    else assert.equal(said, "");
  }
  assert.equal(up.requests.length, 2);
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

function latin1(bytes: Uint8Array): string {
  return String.fromCharCode(...bytes);
}

function latin1Bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

Deno.test("Connection listing Content-Length, Transfer-Encoding or Host gets 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  // Without its length the body would reach the upstream as a second request.
  const smuggled = `GET ${up.url("/fixed")} HTTP/1.1\r\nHost: ${up.authority}\r\n\r\n`;
  await expectRejected(
    tp,
    up,
    post(up, `Content-Length: ${smuggled.length}\r\nConnection: content-length\r\n`, smuggled),
  );
  await expectRejected(
    tp,
    up,
    post(up, "Transfer-Encoding: chunked\r\nConnection: close, Transfer-Encoding\r\n", "0\r\n\r\n"),
  );
  await expectRejected(
    tp,
    up,
    `GET ${up.url("/fixed")} HTTP/1.1\r\nHost: ${up.authority}\r\nConnection: host\r\n\r\n`,
  );
});

Deno.test("Transfer-Encoding in an HTTP/1.0 request gets 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  await expectRejected(
    tp,
    up,
    `POST ${up.url("/echo")} HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
  );
});

Deno.test("a tab, control byte or byte >= 0x80 in the request target gets 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  for (const ch of ["\t", "\x01", "\x7f", "\x80", "\xff"]) {
    await expectRejected(
      tp,
      up,
      latin1Bytes(`GET ${up.url("/fixed")}?a${ch}b HTTP/1.1\r\nHost: ${up.authority}\r\n\r\n`),
    );
  }
});

Deno.test("a head with bare-LF line endings gets 400 at once", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ timeouts: { head: 60_000 } });
  // Far below the head timeout: the answer comes without waiting for CRLF CRLF.
  await expectRejected(
    tp,
    up,
    `GET ${up.url("/fixed")} HTTP/1.1\nHost: ${up.authority}\n\n`,
    400,
    3000,
  );
  await expectRejected(
    tp,
    up,
    `GET ${up.url("/fixed")} HTTP/1.1\r\nHost: ${up.authority}\n\r\n`,
    400,
    3000,
  );
});

Deno.test("CONNECT targets with credentials or odd characters get 400 and close", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  for (
    const target of [
      `user@127.0.0.1:${up.port}`,
      `user:pw@127.0.0.1:${up.port}`,
      `127.0.0.1%2f:${up.port}`,
      `127.0.0.1/x:${up.port}`,
      `::1:${up.port}`,
    ]
  ) {
    await expectRejected(tp, up, `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  }
});

Deno.test("every spelling of the upstream's address shares its host's cap", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const busy = await BufferedConn.connect(tp.addr);
  try {
    await busy.write(request("GET", up.url("/slow?ms=60000"), { Host: up.authority }));
    await up.waitHeld(1);
    await tp.waitCount(`0x7f000001:${up.port}`, 1);
    for (
      const host of [
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.000.000.001",
        "[::ffff:127.0.0.1]",
      ]
    ) {
      const c = await BufferedConn.connect(tp.addr);
      try {
        await c.write(request("GET", `http://${host}:${up.port}/fixed`, { Host: up.authority }));
        assert.equal((await readResponse(c)).status, 500, host);
      } finally {
        c.close();
      }
      const t = await BufferedConn.connect(tp.addr);
      try {
        await t.write(`CONNECT ${host}:${up.port} HTTP/1.1\r\nHost: x\r\n\r\n`);
        assert.equal((await readResponse(t)).status, 500, `CONNECT ${host}`);
      } finally {
        t.close();
      }
    }
    assert.equal(up.requests.length, 1, "only the held request reached the upstream");
    up.release();
    assert.equal((await readResponse(busy)).status, 200);
  } finally {
    busy.close();
  }
});

/** A raw upstream that answers every request head with `answer`. */
function rawUpstream(answer: string): { port: number; heads: string[] } & AsyncDisposable {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const heads: string[] = [];
  const conns = new Set<BufferedConn>();
  const serving = (async () => {
    for await (const conn of listener) {
      const c = new BufferedConn(conn);
      conns.add(c);
      (async () => {
        try {
          for (;;) {
            const head = await c.readUntil(CRLFCRLF);
            if (head === null) break;
            heads.push(text(head));
            await c.write(latin1Bytes(answer));
          }
        } catch {
          /* closed */
        } finally {
          c.close();
          conns.delete(c);
        }
      })();
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    heads,
    async [Symbol.asyncDispose]() {
      listener.close();
      for (const c of conns) c.close();
      await serving.catch(() => {});
    },
  };
}

Deno.test("a response whose Connection lists Content-Length keeps its length", async () => {
  await using raw = rawUpstream(
    "HTTP/1.1 200 OK\r\nConnection: content-length, x-gone\r\nContent-Length: 5\r\nX-Gone: 1\r\n\r\nhello",
  );
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    for (let i = 0; i < 2; i++) {
      await c.write(request("GET", `http://127.0.0.1:${raw.port}/`, { Host: "x" }));
      const res = await readResponse(c, { ms: 3000 });
      assert.deepEqual(headerAll(res.head, "content-length"), ["5"]);
      assert.deepEqual(headerAll(res.head, "x-gone"), []);
      assert.equal(text(res.body), "hello");
    }
  } finally {
    c.close();
  }
});

Deno.test("repeated identical Content-Length values travel as one line", async () => {
  for (
    const lengths of ["Content-Length: 5, 5\r\n", "Content-Length: 5\r\nContent-Length: 5\r\n"]
  ) {
    await using raw = rawUpstream(`HTTP/1.1 200 OK\r\n${lengths}\r\nhello`);
    await using tp = await startProxy();
    const c = await BufferedConn.connect(tp.addr);
    try {
      await c.write(request("GET", `http://127.0.0.1:${raw.port}/`, { Host: "x" }));
      const res = await readResponse(c, { ms: 3000 });
      assert.deepEqual(headerAll(res.head, "content-length"), ["5"], lengths);
      assert.equal(text(res.body), "hello");
    } finally {
      c.close();
    }
  }
  await using up = await startUpstream();
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(post(up, "Content-Length: 5\r\nContent-Length: 5, 5\r\n", "hello"));
    assert.equal((await readResponse(c)).status, 200);
    const seen = up.requests[0].fields.filter(([n]) => /^content-length$/i.test(n));
    assert.deepEqual(seen.map(([, v]) => v), ["5"]);
  } finally {
    c.close();
  }
});

Deno.test("framing and routing fields in trailers are dropped on the way", async () => {
  await using raw = rawUpstream(
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n" +
      "Content-Length: 9\r\nX-Sum: 1\r\nTransfer-Encoding: chunked\r\nHost: evil\r\n\r\n",
  );
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(request("GET", `http://127.0.0.1:${raw.port}/`, { Host: "x" }));
    const res = await readResponse(c, { ms: 3000 });
    assert.equal(text(res.body), "hello");
    assert.deepEqual(res.trailers, [["X-Sum", "1"]]);
  } finally {
    c.close();
  }
  await using up = await startUpstream();
  const d = await BufferedConn.connect(tp.addr);
  try {
    await d.write(
      post(
        up,
        "Transfer-Encoding: chunked\r\n",
        "5\r\nhello\r\n0\r\nContent-Length: 9\r\nX-Sum: 2\r\n\r\n",
      ),
    );
    assert.equal((await readResponse(d)).status, 200);
    assert.deepEqual(up.requests[0].trailers, [["X-Sum", "2"]]);
  } finally {
    d.close();
  }
});
