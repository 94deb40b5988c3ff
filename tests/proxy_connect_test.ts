// CONNECT tunnels: establishment, raw piping with half-close, limits,
// slot release from either side, idle timeout and real HTTPS clients.
import assert from "node:assert/strict";
import {
  BufferedConn,
  header,
  readHead,
  readResponse,
  request,
  sha256,
  statusOf,
  text,
  waitFor,
} from "./_helpers/raw.ts";
import {
  closedPort,
  FIXED_BODY,
  patternBytes,
  startEofUpstream,
  startUpstream,
  testCertificates,
  type Upstream,
} from "./_helpers/upstream.ts";
import { connectRequest, startProxy, type TestProxy } from "./_helpers/proxy.ts";

const CI = Deno.env.get("CI") === "true";

/** Opens a tunnel to `authority`; asserts the 200 and returns the socket. */
async function openTunnel(
  tp: TestProxy,
  authority: string,
): Promise<BufferedConn> {
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(connectRequest(authority));
    const head = await readHead(c);
    assert.ok(head, "the proxy closed instead of answering CONNECT");
    assert.equal(head.startLine, "HTTP/1.1 200 Connection Established");
    return c;
  } catch (e) {
    c.close();
    throw e;
  }
}

function inner(up: Upstream, path: string, extra = ""): string {
  return `GET ${path} HTTP/1.1\r\nHost: ${up.authority}\r\n${extra}\r\n`;
}

Deno.test("CONNECT answers 200 Connection Established and pipes raw bytes", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const c = await openTunnel(tp, up.authority);
  try {
    assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 1);
    await c.write(inner(up, "/fixed") + inner(up, "/gzip"));
    const a = await readResponse(c);
    assert.equal(text(a.body), FIXED_BODY);
    const b = await readResponse(c);
    assert.deepEqual(b.body, up.gzipBody);
    // Inside a tunnel nothing is rewritten: the origin-form target arrives.
    assert.deepEqual(up.requests.map((r) => r.target), ["/fixed", "/gzip"]);
  } finally {
    c.close();
  }
  await tp.waitCount(up.authority, 0);
});

Deno.test("CONNECT over the limit gets 500 and Proxy-Status", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  // The only slot is held by a tunnel whose request to /slow is blocked.
  const first = await openTunnel(tp, up.authority);
  try {
    await first.write(inner(up, "/slow?ms=60000"));
    await up.waitHeld(1);

    const c = await BufferedConn.connect(tp.addr);
    try {
      await c.write(connectRequest(up.authority));
      const res = await readResponse(c);
      assert.equal(res.status, 500);
      assert.match(
        header(res.head, "proxy-status") ?? "",
        /^dprl;.*error=connection_limit_reached/,
      );
      const body = text(res.body);
      assert.equal(body.trim().split("\n").length, 1, `one line: ${body}`);
      assert.ok(body.includes(up.authority), `names the host: ${body}`);
      assert.match(body, /\b1\b/, `names the limit: ${body}`);
    } finally {
      c.close();
    }
    assert.equal(up.accepted, 1, "no dial happened for the refused tunnel");

    up.release();
    assert.equal(text((await readResponse(first)).body), "slow done\n");
  } finally {
    first.close();
  }
  // After the first tunnel is gone, tunnels pass again.
  await tp.waitCount(up.authority, 0);
  const again = await openTunnel(tp, up.authority);
  try {
    await again.write(inner(up, "/fixed"));
    assert.equal(text((await readResponse(again)).body), FIXED_BODY);
  } finally {
    again.close();
  }
});

Deno.test("CONNECT passes a client half-close on and the reply still flows back", async () => {
  await using up = startEofUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const c = await openTunnel(tp, up.authority);
  try {
    const data = patternBytes(300_000, 3);
    await c.write(data);
    await c.closeWrite();
    const reply = text(await c.readToEnd());
    assert.equal(
      reply,
      `received ${data.length} bytes ${await sha256(data)}\n`,
    );
    assert.equal(up.sawEof, 1);
  } finally {
    c.close();
  }
  await tp.waitCount(up.authority, 0);
});

Deno.test("closing a tunnel from the client side frees its slot", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const c = await openTunnel(tp, up.authority);
  await up.waitOpen(1);
  assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 1);
  c.close();
  await tp.waitCount(up.authority, 0);
  await up.waitOpen(0);
});

Deno.test("a tunnel the upstream closes frees its slot once the client half-closes too", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const c = await openTunnel(tp, up.authority);
  try {
    // /close answers close-delimited, then the upstream closes the socket:
    // the client reads to EOF, then ends its own side with a FIN (the
    // socket itself stays open). Both directions are done: the tunnel ends.
    await c.write(inner(up, "/close"));
    const res = await readResponse(c);
    assert.equal(res.status, 200);
    assert.ok(res.closeDelimited);
    await c.closeWrite();
    await tp.waitCount(up.authority, 0);
  } finally {
    c.close();
  }
});

/** Tries to open a tunnel; true on 200, false on a refusal. */
async function tunnelOpens(tp: TestProxy, authority: string): Promise<boolean> {
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(connectRequest(authority));
    const head = await readHead(c);
    return head !== null && statusOf(head) === 200;
  } finally {
    c.close();
  }
}

Deno.test("a client that vanishes right after CONNECT frees its slot", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  for (let i = 0; i < 5; i++) {
    const c = await BufferedConn.connect(tp.addr);
    await c.write(connectRequest(up.authority));
    c.close();
  }
  // Whatever the vanished clients took comes back: a tunnel opens again.
  await waitFor(
    () => tunnelOpens(tp, up.authority),
    "a tunnel to open after the vanished clients",
  );
  await tp.waitCount(up.authority, 0);
  await up.waitOpen(0);
});

Deno.test("idle tunnel timeout closes an idle tunnel and frees its slot", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({
    defaultMaxConnectionsPerHost: 1,
    timeouts: { idle: 300 },
  });
  const c = await openTunnel(tp, up.authority);
  try {
    await c.waitClosed();
  } finally {
    c.close();
  }
  await tp.waitCount(up.authority, 0);
  await up.waitOpen(0);
});

Deno.test("a busy tunnel is not closed by the idle timeout while bytes flow", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ timeouts: { idle: 2_000 } });
  const c = await openTunnel(tp, up.authority);
  try {
    // Each round trip is well inside the idle timeout; together they last
    // longer than it only if the machine is slow, which is fine either way.
    for (let i = 0; i < 20; i++) {
      await c.write(inner(up, "/fixed"));
      assert.equal(text((await readResponse(c)).body), FIXED_BODY);
    }
  } finally {
    c.close();
  }
});

Deno.test("CONNECT to a refused port gets 502 and Proxy-Status connection_refused", async () => {
  const port = closedPort();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(connectRequest(`127.0.0.1:${port}`));
    const res = await readResponse(c);
    assert.equal(res.status, 502);
    assert.match(
      header(res.head, "proxy-status") ?? "",
      /^dprl;.*error=connection_refused/,
    );
  } finally {
    c.close();
  }
  await tp.waitCount(`127.0.0.1:${port}`, 0);
});

Deno.test("fetch over HTTPS through CONNECT reaches the local TLS server", async () => {
  const certs = await testCertificates();
  await using up = await startUpstream({
    tls: { cert: certs.cert, key: certs.key },
  });
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  {
    using client = Deno.createHttpClient({
      caCerts: [certs.ca],
      proxy: { url: tp.url },
    });
    const res = await fetch(up.url("/fixed"), { client });
    assert.equal(await res.text(), FIXED_BODY);
    const echo = await fetch(up.url("/echo"), {
      client,
      method: "POST",
      body: "over tls",
    });
    assert.equal(JSON.parse(await echo.text()).body, "over tls");
    assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 1);
  }
  // Closing the client closes its tunnel.
  await tp.waitCount(up.authority, 0);
});

Deno.test("fetch over HTTPS through CONNECT over the limit fails while the slot is held", async () => {
  const certs = await testCertificates();
  await using up = await startUpstream({
    tls: { cert: certs.cert, key: certs.key },
  });
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const holder = await BufferedConn.connect(tp.addr);
  try {
    await holder.write(connectRequest(up.authority));
    const head = await readHead(holder);
    assert.ok(head);
    assert.equal(statusOf(head), 200);
    using client = Deno.createHttpClient({
      caCerts: [certs.ca],
      proxy: { url: tp.url },
    });
    await assert.rejects(fetch(up.url("/fixed"), { client }));
  } finally {
    holder.close();
  }
  await tp.waitCount(up.authority, 0);
});

const curl = await new Deno.Command("curl", { args: ["--version"] }).output()
  .then((o) => o.success, () => false);
if (!curl) {
  console.warn(
    "\n!!! curl is not on PATH: the curl -x HTTPS test is SKIPPED" +
      (CI ? " (and fails, because CI=true)" : "") + "\n",
  );
}

Deno.test({
  name: "curl -x gets HTTPS through CONNECT to the local TLS server",
  ignore: !curl && !CI,
  fn: async () => {
    if (!curl) throw new Error("curl is required when CI=true");
    const certs = await testCertificates();
    await using up = await startUpstream({
      tls: { cert: certs.cert, key: certs.key },
    });
    await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
    const dir = await Deno.makeTempDir({ prefix: "dprl_curl_" });
    try {
      await Deno.writeTextFile(`${dir}/ca.pem`, certs.ca);
      const out = await new Deno.Command("curl", {
        args: [
          "-sS",
          "--max-time",
          "20",
          "--noproxy",
          "",
          "--cacert",
          `${dir}/ca.pem`,
          "-x",
          tp.url,
          up.url("/fixed"),
        ],
        env: { https_proxy: "", HTTPS_PROXY: "", NO_PROXY: "", no_proxy: "" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(out.success, text(out.stderr));
      assert.equal(text(out.stdout), FIXED_BODY);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    await tp.waitCount(up.authority, 0);
  },
});

Deno.test("CONNECT with a request body-less head but extra header fields still tunnels", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(
      request("CONNECT", up.authority, [
        ["Host", up.authority],
        ["User-Agent", "raw/1"],
        ["Proxy-Connection", "keep-alive"],
      ]) +
        // Bytes sent right behind the head belong to the tunnel.
        inner(up, "/fixed"),
    );
    const head = await readHead(c);
    assert.ok(head);
    assert.equal(statusOf(head), 200);
    assert.equal(text((await readResponse(c)).body), FIXED_BODY);
  } finally {
    c.close();
  }
});
