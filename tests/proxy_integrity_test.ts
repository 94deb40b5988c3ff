// Engine integrity against misbehaving upstreams and clients: a pooled
// connection is clean or closed, only replayable requests are retried, a
// broken response gets a 502, a client that leaves frees its slot at once,
// and replies carry no internal detail.
import assert from "node:assert/strict";
import {
  BufferedConn,
  header,
  rawExchange,
  type RawResponse,
  readResponse,
  request,
  text,
  waitFor,
} from "./_helpers/raw.ts";
import { blackHole } from "./_helpers/upstream.ts";
import { type ScriptedUpstream, startScriptedUpstream } from "./_helpers/scripted_upstream.ts";
import { connectRequest, startProxy } from "./_helpers/proxy.ts";

const CLEAN = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean";

/** Answers the first request with `first`, every later one with CLEAN. */
function firstThenClean(first: string) {
  let served = 0;
  return startScriptedUpstream(async (c) => {
    while (await c.readHead() !== null) {
      await c.write(served++ === 0 ? first : CLEAN);
    }
  });
}

for (
  const [name, method, first] of [
    [
      "a Content-Length body",
      "GET",
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" +
      "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npoison",
    ],
    [
      "a HEAD response",
      "HEAD",
      "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n" +
      "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npoison",
    ],
    [
      "a 204 response",
      "GET",
      "HTTP/1.1 204 No Content\r\n\r\n" +
      "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npoison",
    ],
    [
      "a 304 response",
      "GET",
      "HTTP/1.1 304 Not Modified\r\n\r\n" +
      "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npoison",
    ],
  ] as const
) {
  Deno.test(`bytes after ${name} close the upstream connection; the next client gets its own answer`, async () => {
    await using up = firstThenClean(first);
    await using tp = await startProxy();
    const a = await rawExchange(
      tp.addr,
      request(method, up.url("/a"), { Host: up.authority }),
      { method },
    );
    assert.ok(a.status === 200 || a.status === 204 || a.status === 304);
    const b = await rawExchange(tp.addr, request("GET", up.url("/b"), { Host: up.authority }));
    assert.equal(b.status, 200);
    assert.equal(text(b.body), "clean");
    assert.equal(up.accepted, 2, "the dirty connection was not reused");
  });
}

/** Answers the first request, then closes unanswered on the second. */
function answerOnceThenDrop() {
  return startScriptedUpstream(async (c) => {
    if (await c.readHead() === null) return;
    await c.write(CLEAN);
    if (c.id === 1) await c.readHead(); // then close without an answer
    else while (await c.readHead() !== null) await c.write(CLEAN);
  });
}

/**
 * Through a fresh proxy: a GET, then a `method` request on the same client
 * connection (and so on the pooled upstream connection); its response.
 */
async function onReusedConnection(
  up: ScriptedUpstream,
  method: string,
  headers: Record<string, string>,
): Promise<RawResponse> {
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(request("GET", up.url("/first"), { Host: up.authority }));
    assert.equal((await readResponse(c)).status, 200);
    await c.write(request(method, up.url("/again"), headers));
    return await readResponse(c);
  } finally {
    c.close();
  }
}

for (
  const [what, extra] of [
    ["a POST", { "Content-Length": "0" }],
    [
      "a POST whose Idempotency-Key the Connection field strips",
      { "Idempotency-Key": "abc123", Connection: "Idempotency-Key" },
    ],
  ] as const
) {
  Deno.test(`${what} on a reused connection that closes unanswered is sent once and answered 502`, async () => {
    await using up = answerOnceThenDrop();
    const res = await onReusedConnection(up, "POST", { Host: up.authority, ...extra });
    assert.equal(res.status, 502);
    assert.match(header(res.head, "proxy-status") ?? "", /error=http_response_incomplete/);
    const posts = up.heads.filter((h) => h.startsWith("POST"));
    assert.equal(posts.length, 1, "sent once");
    assert.doesNotMatch(posts[0], /idempotency-key/i, "a stripped key stays stripped");
  });
}

for (
  const [what, method, extra] of [
    ["a GET", "GET", {}],
    ["a POST with Idempotency-Key", "POST", { "Idempotency-Key": "k1", "Content-Length": "0" }],
  ] as const
) {
  Deno.test(`${what} on a reused connection that closes unanswered is retried on a fresh one`, async () => {
    await using up = answerOnceThenDrop();
    const res = await onReusedConnection(up, method, { Host: up.authority, ...extra });
    assert.equal(res.status, 200);
    assert.equal(text(res.body), "clean");
    assert.equal(up.accepted, 2);
  });
}

for (
  const [name, response] of [
    [
      "a 101 nobody asked for",
      "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n",
    ],
    [
      "a bad chunk size",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ],
    [
      "both Content-Length and Transfer-Encoding",
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ["a status line that is not HTTP", "ICY 200 OK\r\n\r\n"],
  ] as const
) {
  Deno.test(`${name} from the upstream gets a 502 with Proxy-Status and frees the slot`, async () => {
    await using up = startScriptedUpstream(async (c) => {
      if (await c.readHead() !== null) await c.write(response);
    });
    await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
    const res = await rawExchange(tp.addr, request("GET", up.url("/"), { Host: up.authority }));
    assert.equal(res.status, 502);
    assert.match(header(res.head, "proxy-status") ?? "", /^dprl; error=http_/);
    await tp.waitCount(up.authority, 0);
  });
}

Deno.test("a client that leaves while the dial hangs frees its slot at once, no upstream failure", async () => {
  using hole = await blackHole();
  await using tp = await startProxy({
    defaultMaxConnectionsPerHost: 1,
    timeouts: { connect: 120_000 },
    admin: { port: 0 },
  });
  const metrics = async () => await (await fetch(new URL("/metrics", tp.proxy.adminUrl!))).text();
  for (
    const req of [
      connectRequest(hole.authority),
      request("GET", `http://${hole.authority}/`, { Host: hole.authority }),
    ]
  ) {
    const c = await BufferedConn.connect(tp.addr);
    await c.write(req);
    await tp.waitCount(hole.authority, 1);
    c.close();
    await tp.waitCount(hole.authority, 0);
  }
  await waitFor(async () => /^dprl_client_connections 0$/m.test(await metrics()), "clients gone");
  assert.doesNotMatch(await metrics(), /^dprl_upstream_errors_total\{.*\} [1-9]/m);
});

/** Reads a request head and holds it unanswered until the proxy closes. */
function holdingUpstream() {
  return startScriptedUpstream(async (c) => {
    if (await c.readHead() !== null) await c.conn.readToEnd(120_000);
  });
}

Deno.test("a client that leaves during an Upgrade request frees its slot at once", async () => {
  await using up = holdingUpstream();
  await using tp = await startProxy({ timeouts: { idle: 120_000 } });
  const c = await BufferedConn.connect(tp.addr);
  await c.write(request("GET", up.url("/ws"), {
    Host: up.authority,
    Connection: "Upgrade",
    Upgrade: "websocket",
  }));
  await tp.waitCount(up.authority, 1);
  c.close();
  await tp.waitCount(up.authority, 0);
});

Deno.test("a client that leaves with pipelined requests queued frees its slot at once", async () => {
  await using up = holdingUpstream();
  await using tp = await startProxy({ timeouts: { idle: 120_000 } });
  const c = await BufferedConn.connect(tp.addr);
  const one = request("GET", up.url("/one"), { Host: up.authority });
  await c.write(one + request("GET", up.url("/two"), { Host: up.authority }));
  await tp.waitCount(up.authority, 1);
  c.close();
  await tp.waitCount(up.authority, 0);
});

Deno.test("error replies name the problem without internal detail", async () => {
  await using tp = await startProxy();
  for (const target of ["http://a..b/", "http://255.255.255.255:9/"]) {
    const res = await rawExchange(tp.addr, request("GET", target, { Host: new URL(target).host }));
    assert.ok(res.status >= 400, `${target}: ${res.status}`);
    const said = text(res.body) + (header(res.head, "proxy-status") ?? "");
    assert.doesNotMatch(said, /FQDN|os error|label/i, `${target}: ${said}`);
  }
});

Deno.test("an HTTP/1.0 client never receives Transfer-Encoding: chunked", async () => {
  await using up = startScriptedUpstream(async (c) => {
    if (await c.readHead() === null) return;
    await c.write(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
    );
    await c.conn.readToEnd(10_000);
  });
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(`GET ${up.url("/")} HTTP/1.0\r\nHost: ${up.authority}\r\n\r\n`);
    const res = await readResponse(c);
    assert.equal(res.status, 200);
    assert.equal(header(res.head, "transfer-encoding"), null);
    assert.equal(text(res.body), "hello world");
    assert.ok(res.closeDelimited);
  } finally {
    c.close();
  }
});

Deno.test("a chunked HTTP/1.0 response is relayed whole and its connection is not reused", async () => {
  await using up = startScriptedUpstream(async (c) => {
    while (await c.readHead() !== null) {
      await c.write(
        "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      );
    }
  });
  await using tp = await startProxy();
  for (let i = 0; i < 2; i++) {
    const res = await rawExchange(tp.addr, request("GET", up.url("/"), { Host: up.authority }));
    assert.equal(res.status, 200);
    assert.equal(text(res.body), "hello");
  }
  assert.equal(up.accepted, 2);
});
