// Plain HTTP through the proxy: fidelity of what is forwarded, keep-alive,
// pipelining, upgrades, upstream failures and real proxy clients.
import assert from "node:assert/strict";
import {
  BufferedConn,
  header,
  headerAll,
  rawExchange,
  readHead,
  readResponse,
  request,
  sha256,
  statusOf,
  text,
  utf8,
  waitFor,
} from "./_helpers/raw.ts";
import {
  blackHole,
  CHUNKS,
  closedPort,
  FIXED_BODY,
  ipv6Available,
  patternBytes,
  type SeenRequest,
  startUpstream,
  startWebSocketUpstream,
} from "./_helpers/upstream.ts";
import { startProxy } from "./_helpers/proxy.ts";

const CI = Deno.env.get("CI") === "true";

function get(
  up: { url(p: string): string; authority: string },
  path: string,
  extra: Record<string, string> = {},
): string {
  return request("GET", up.url(path), { Host: up.authority, ...extra });
}

function seen(body: Uint8Array): SeenRequest {
  return JSON.parse(text(body));
}

Deno.test("plain HTTP GET is forwarded in origin form with Host kept", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const res = await rawExchange(
    tp.addr,
    get(up, "/echo?x=1&y=two", { "X-Custom": "kept", "User-Agent": "t/1" }),
  );
  assert.equal(res.status, 200);
  const s = seen(res.body);
  assert.equal(s.method, "GET");
  assert.equal(s.target, "/echo?x=1&y=two");
  assert.equal(s.version, "HTTP/1.1");
  const fields = new Map(s.fields.map(([k, v]) => [k.toLowerCase(), v]));
  assert.equal(fields.get("host"), up.authority);
  assert.equal(fields.get("x-custom"), "kept");
  assert.equal(fields.get("user-agent"), "t/1");
});

Deno.test("request heads smaller and larger than a spare buffer reach the upstream whole, in turn and at once", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  // 4 KiB is the size of the spare buffers a head is encoded into; a larger one gets its own.
  const sizes = [10, 4000, 4096, 5000, 12000];
  const check = async (n: number) => {
    const res = await rawExchange(tp.addr, get(up, `/echo?n=${n}`, { "X-Pad": "p".repeat(n) }));
    assert.equal(res.status, 200);
    const fields = new Map(seen(res.body).fields.map(([k, v]) => [k.toLowerCase(), v]));
    assert.equal(fields.get("x-pad"), "p".repeat(n), `a head with ${n} bytes of padding`);
  };
  for (const n of sizes) await check(n);
  await Promise.all([...sizes, ...sizes, ...sizes].map(check));
});

Deno.test("plain HTTP drops hop-by-hop request headers and keeps end-to-end ones", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const res = await rawExchange(
    tp.addr,
    request("GET", up.url("/echo"), [
      ["Host", up.authority],
      ["Connection", "keep-alive, X-Hop"],
      ["X-Hop", "must go"],
      ["Keep-Alive", "timeout=5"],
      ["Proxy-Authorization", "Basic dXNlcjpwYXNz"],
      ["Proxy-Connection", "keep-alive"],
      ["TE", "trailers"],
      ["Trailer", "X-Foo"],
      ["X-End-To-End", "stays"],
      ["Accept", "*/*"],
    ]),
  );
  assert.equal(res.status, 200);
  const names = seen(res.body).fields.map(([k]) => k.toLowerCase());
  for (
    const hop of [
      "x-hop",
      "keep-alive",
      "proxy-authorization",
      "proxy-connection",
      "te",
      "trailer",
    ]
  ) {
    assert.ok(!names.includes(hop), `${hop} reached the upstream: ${names}`);
  }
  assert.ok(names.includes("x-end-to-end"));
  assert.ok(names.includes("accept"));
  assert.ok(names.includes("host"));
});

Deno.test("gzip response body is byte-identical and stays gzip", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const res = await rawExchange(
    tp.addr,
    get(up, "/gzip", { "Accept-Encoding": "gzip" }),
  );
  assert.equal(res.status, 200);
  assert.equal(header(res.head, "content-encoding"), "gzip");
  assert.deepEqual(res.body, up.gzipBody);
  const cl = header(res.head, "content-length");
  if (cl !== null) assert.equal(Number(cl), up.gzipBody.length);
});

Deno.test("chunked response is relayed with its trailers", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const res = await rawExchange(tp.addr, get(up, "/chunked"));
  assert.equal(res.status, 200);
  assert.match(header(res.head, "transfer-encoding") ?? "", /chunked/i);
  assert.equal(text(res.body), CHUNKS.join(""));
  const sum = await sha256(utf8(CHUNKS.join("")));
  assert.deepEqual(
    res.trailers.map(([k, v]) => [k.toLowerCase(), v]),
    [["x-checksum", sum]],
  );
});

Deno.test("chunked request body reaches the upstream with its trailers", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const res = await rawExchange(
    tp.addr,
    `POST ${up.url("/echo")} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
      "Transfer-Encoding: chunked\r\n\r\n" +
      "5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Req-Sum: 42\r\n\r\n",
  );
  assert.equal(res.status, 200);
  const s = seen(res.body);
  assert.equal(s.body, "hello world");
  assert.deepEqual(s.trailers, [["X-Req-Sum", "42"]]);
});

Deno.test("a 20 MiB upload arrives byte-identical (SHA-256)", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const body = patternBytes(20 * 1024 * 1024, 11);
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(
      `POST ${up.url("/echo")} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
        `Content-Type: application/octet-stream\r\n` +
        `Content-Length: ${body.length}\r\n\r\n`,
    );
    await c.write(body, 60_000);
    const res = await readResponse(c, { ms: 60_000 });
    assert.equal(res.status, 200);
    const s = seen(res.body);
    assert.equal(s.bodyLength, body.length);
    assert.equal(s.bodySha256, await sha256(body));
  } finally {
    c.close();
  }
});

Deno.test("a 20 MiB download arrives byte-identical (SHA-256)", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const n = 20 * 1024 * 1024;
  const res = await rawExchange(tp.addr, get(up, `/bytes?n=${n}`), {
    ms: 60_000,
  });
  assert.equal(res.status, 200);
  assert.equal(res.body.length, n);
  assert.equal(await sha256(res.body), await sha256(patternBytes(n)));
});

Deno.test("HEAD, 204 and 304 have no body and the connection goes on", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(request("HEAD", up.url("/fixed"), { Host: up.authority }));
    const head = await readResponse(c, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(
      header(head.head, "content-length"),
      String(FIXED_BODY.length),
    );

    await c.write(get(up, "/204"));
    assert.equal((await readResponse(c)).status, 204);

    await c.write(get(up, "/304", { "If-None-Match": '"v1"' }));
    const nm = await readResponse(c);
    assert.equal(nm.status, 304);
    assert.equal(header(nm.head, "etag"), '"v1"');

    // Had the proxy waited for a body after any of these, this would hang.
    await c.write(get(up, "/fixed"));
    const after = await readResponse(c);
    assert.equal(after.status, 200);
    assert.equal(text(after.body), FIXED_BODY);
  } finally {
    c.close();
  }
});

Deno.test("three pipelined requests in one write are answered in order", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(
      get(up, "/fixed") +
        request("POST", up.url("/echo"), { Host: up.authority }, "second") +
        get(up, "/chunked"),
    );
    const a = await readResponse(c);
    const b = await readResponse(c);
    const d = await readResponse(c);
    assert.equal(text(a.body), FIXED_BODY);
    assert.equal(seen(b.body).body, "second");
    assert.equal(text(d.body), CHUNKS.join(""));
  } finally {
    c.close();
  }
});

Deno.test("keep-alive reuses the upstream socket within and across client connections", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  let first: string;
  try {
    await c.write(get(up, "/conn"));
    first = text((await readResponse(c)).body);
    await c.write(get(up, "/conn"));
    assert.equal(text((await readResponse(c)).body), first);
  } finally {
    c.close();
  }
  const again = await rawExchange(tp.addr, get(up, "/conn"));
  assert.equal(text(again.body), first);
  assert.equal(up.accepted, 1);
  assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 1);
});

Deno.test("Expect: 100-continue gets the interim 100 before the body is sent", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(
      `POST ${up.url("/echo")} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
        "Expect: 100-continue\r\nContent-Length: 9\r\n\r\n",
    );
    const interim = await readHead(c);
    assert.ok(interim, "connection closed instead of 100 Continue");
    assert.equal(statusOf(interim), 100);
    await c.write("continued");
    const res = await readResponse(c);
    assert.equal(res.status, 200);
    const s = seen(res.body);
    assert.equal(s.body, "continued");
    assert.ok(
      s.fields.some(([k, v]) => k.toLowerCase() === "expect" && /100-continue/i.test(v)),
    );
  } finally {
    c.close();
  }
});

function wsFrame(payload: string): Uint8Array {
  const data = utf8(payload);
  if (data.length > 125) throw new RangeError("Test frames stay short");
  const mask = crypto.getRandomValues(new Uint8Array(4));
  const out = new Uint8Array(2 + 4 + data.length);
  out[0] = 0x81; // FIN + text
  out[1] = 0x80 | data.length;
  out.set(mask, 2);
  for (let i = 0; i < data.length; i++) out[6 + i] = data[i] ^ mask[i % 4];
  return out;
}

async function readWsText(c: BufferedConn): Promise<string> {
  const [b0, b1] = await c.readExact(2);
  assert.equal(b0 & 0x0f, 1, "expected a text frame");
  assert.equal(b1 & 0x80, 0, "server frames are not masked");
  const len = b1 & 0x7f;
  assert.ok(len <= 125);
  return text(await c.readExact(len));
}

Deno.test("WebSocket upgrade through the proxy echoes a message and frees its slot on close", async () => {
  await using ws = await startWebSocketUpstream();
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(
      `GET http://${ws.authority}/ws HTTP/1.1\r\nHost: ${ws.authority}\r\n` +
        "Upgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
        "Sec-WebSocket-Version: 13\r\n\r\n",
    );
    const head = await readHead(c);
    assert.ok(head);
    assert.equal(statusOf(head), 101);
    assert.equal(
      header(head, "sec-websocket-accept"),
      "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    );
    assert.match(header(head, "upgrade") ?? "", /websocket/i);
    await c.write(wsFrame("hello through dprl"));
    assert.equal(await readWsText(c), "hello through dprl");
    await c.write(wsFrame("twice"));
    assert.equal(await readWsText(c), "twice");
    assert.equal(await tp.proxy.activeConnectionsForHost(ws.authority), 1);
  } finally {
    c.close();
  }
  await tp.waitCount(ws.authority, 0);
});

Deno.test("close-delimited response is relayed whole", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const res = await rawExchange(tp.addr, get(up, "/close"));
  assert.equal(res.status, 200);
  assert.equal(text(res.body), "close-delimited body\n".repeat(50));
  await tp.waitCount(up.authority, 0);
});

Deno.test({
  name: "IPv6 literal upstream [::1] is reached and counted as [::1]:port",
  ignore: !ipv6Available(),
  fn: async () => {
    await using up = await startUpstream({ hostname: "::1" });
    const key = `[::1]:${up.port}`;
    await using tp = await startProxy({
      defaultMaxConnectionsPerHost: 5,
      hostLimits: { [key]: 1 },
    });
    const res = await rawExchange(tp.addr, get(up, "/fixed"));
    assert.equal(res.status, 200);
    assert.equal(text(res.body), FIXED_BODY);
    const c = await BufferedConn.connect(tp.addr);
    try {
      // The pooled idle socket gives its slot to this request.
      await c.write(get(up, "/slow?ms=60000"));
      await up.waitHeld(1);
      assert.equal(await tp.proxy.activeConnectionsForHost(key), 1);
      const refused = await rawExchange(tp.addr, get(up, "/fixed"));
      assert.equal(refused.status, 500);
      assert.match(text(refused.body), /\[::1\]:\d+/);
      up.release();
      assert.equal((await readResponse(c)).status, 200);
    } finally {
      c.close();
    }
  },
});

Deno.test("upstream connection refused gets 502 and Proxy-Status connection_refused", async () => {
  const port = closedPort();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const res = await rawExchange(
    tp.addr,
    request("GET", `http://127.0.0.1:${port}/`, {
      Host: `127.0.0.1:${port}`,
    }),
  );
  assert.equal(res.status, 502);
  assert.match(
    header(res.head, "proxy-status") ?? "",
    /^dprl;.*error=connection_refused/,
  );
  await tp.waitCount(`127.0.0.1:${port}`, 0);
});

for (const denyPrivate of [false, true]) {
  Deno.test(`a name that does not resolve gets 502 dns_error and no system text (denyPrivate ${denyPrivate})`, async () => {
    await using tp = await startProxy({ timeouts: { connect: 20_000 }, denyPrivate });
    const res = await rawExchange(
      tp.addr,
      request("GET", "http://dprl-no-such-host.invalid/", {
        Host: "dprl-no-such-host.invalid",
      }),
      { ms: 30_000 },
    );
    assert.equal(res.status, 502);
    const proxyStatus = header(res.head, "proxy-status") ?? "";
    assert.equal(
      proxyStatus,
      'dprl; error=dns_error; details="Cannot resolve dprl-no-such-host.invalid"',
    );
    assert.equal(text(res.body), "Cannot resolve dprl-no-such-host.invalid\n");
  });
}

Deno.test("upstream connect timeout gets 504 and Proxy-Status connection_timeout", async () => {
  // A listener with a full accept queue: the proxy's connect hangs until
  // its connect timeout.
  using hole = await blackHole();
  await using tp = await startProxy({
    defaultMaxConnectionsPerHost: 1,
    timeouts: { connect: 300 },
  });
  const res = await rawExchange(
    tp.addr,
    request("GET", `http://${hole.authority}/`, { Host: hole.authority }),
  );
  assert.equal(res.status, 504);
  assert.match(
    header(res.head, "proxy-status") ?? "",
    /^dprl;.*error=connection_timeout/,
  );
  await tp.waitCount(hole.authority, 0);
});

Deno.test("CONNECT whose upstream connect times out gets 504", async () => {
  using hole = await blackHole();
  await using tp = await startProxy({ timeouts: { connect: 300 } });
  const res = await rawExchange(
    tp.addr,
    `CONNECT ${hole.authority} HTTP/1.1\r\nHost: ${hole.authority}\r\n\r\n`,
  );
  assert.equal(res.status, 504);
  assert.match(header(res.head, "proxy-status") ?? "", /error=connection_timeout/);
  await tp.waitCount(hole.authority, 0);
});

Deno.test("fetch through the proxy (Deno.createHttpClient proxy) gets the upstream's answer", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 2 });
  using client = Deno.createHttpClient({ proxy: { url: tp.url } });
  const res = await fetch(up.url("/echo"), {
    client,
    method: "POST",
    body: "from fetch",
    headers: { "X-From": "fetch" },
  });
  assert.equal(res.status, 200);
  const s = seen(new Uint8Array(await res.arrayBuffer()));
  assert.equal(s.body, "from fetch");
  assert.equal(s.target, "/echo");
  assert.ok(s.fields.some(([k, v]) => k.toLowerCase() === "x-from" && v === "fetch"));
  const gz = await fetch(up.url("/gzip"), { client });
  await gz.arrayBuffer();
  assert.equal(gz.status, 200);
});

const curl = await new Deno.Command("curl", { args: ["--version"] }).output()
  .then((o) => o.success, () => false);
if (!curl) {
  console.warn(
    "\n!!! curl is not on PATH: the curl -x tests are SKIPPED" +
      (CI ? " (and fail, because CI=true)" : "") + "\n",
  );
}

/** Runs curl with a clean proxy environment; returns stdout. */
async function runCurl(args: string[]): Promise<string> {
  const out = await new Deno.Command("curl", {
    args: ["-sS", "--max-time", "20", "--noproxy", "", ...args],
    env: {
      http_proxy: "",
      https_proxy: "",
      HTTP_PROXY: "",
      HTTPS_PROXY: "",
      ALL_PROXY: "",
      NO_PROXY: "",
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`curl ${args.join(" ")} failed: ${text(out.stderr)}`);
  }
  return text(out.stdout);
}

Deno.test({
  name: "curl -x gets plain HTTP through the proxy",
  ignore: !curl && !CI,
  fn: async () => {
    if (!curl) throw new Error("curl is required when CI=true");
    await using up = await startUpstream();
    await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
    assert.equal(await runCurl(["-x", tp.url, up.url("/fixed")]), FIXED_BODY);
    const echoed = JSON.parse(
      await runCurl(["-x", tp.url, "--data-binary", "curl body", up.url("/echo")]),
    );
    assert.equal(echoed.body, "curl body");
  },
});

Deno.test("responses keep their end-to-end headers; a repeated header stays repeated", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const res = await rawExchange(tp.addr, get(up, "/gzip"));
  assert.equal(header(res.head, "vary"), "Accept-Encoding");
  assert.equal(header(res.head, "content-type"), "text/plain");
  assert.equal(headerAll(res.head, "content-encoding").length, 1);
});

Deno.test("a client connection can talk to two upstream hosts in turn", async () => {
  await using a = await startUpstream();
  await using b = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(get(a, "/conn"));
    assert.equal((await readResponse(c)).status, 200);
    await c.write(get(b, "/fixed"));
    assert.equal(text((await readResponse(c)).body), FIXED_BODY);
  } finally {
    c.close();
  }
  await waitFor(
    () => a.requests.length === 1 && b.requests.length === 1,
    "one request at each upstream",
  );
});

Deno.test("an upstream that stalls past the idle timeout gets 504 and its slot is freed", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({
    defaultMaxConnectionsPerHost: 1,
    timeouts: { idle: 300 },
  });
  const res = await rawExchange(tp.addr, get(up, "/slow?ms=60000"));
  assert.equal(res.status, 504);
  assert.match(header(res.head, "proxy-status") ?? "", /^dprl;.*error=/);
  await tp.waitCount(up.authority, 0);
});

Deno.test("an HTTP/1.0 request gets its answer and the connection closes", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(`GET ${up.url("/fixed")} HTTP/1.0\r\nHost: ${up.authority}\r\n\r\n`);
    const res = await readResponse(c);
    assert.equal(res.status, 200);
    assert.equal(text(res.body), FIXED_BODY);
    await c.waitClosed();
  } finally {
    c.close();
  }
});
