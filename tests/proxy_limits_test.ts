// Per-host connection limits: the original's scenarios, overrides, runtime
// changes, the idle pool giving up its slots, release on vanishing clients
// and the upstream's view of concurrency.
import assert from "node:assert/strict";
import {
  BufferedConn,
  header,
  rawExchange,
  readHead,
  readResponse,
  request,
  statusOf,
  text,
  waitFor,
} from "./_helpers/raw.ts";
import { FIXED_BODY, startUpstream, type Upstream } from "./_helpers/upstream.ts";
import { connectRequest, startProxy, type TestProxy } from "./_helpers/proxy.ts";

function get(up: Upstream, path: string): string {
  return request("GET", up.url(path), { Host: up.authority });
}

/** Sends GET /slow through the proxy and waits until the upstream holds it. */
async function holdSlot(tp: TestProxy, up: Upstream): Promise<BufferedConn> {
  const before = up.held;
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(get(up, "/slow?ms=60000"));
    await up.waitHeld(before + 1);
    return c;
  } catch (e) {
    c.close();
    throw e;
  }
}

/** Asserts a refusal: status, Proxy-Status, a one-line body naming host and limit. */
function assertRefused(
  res: { status: number; head: Parameters<typeof header>[0]; body: Uint8Array },
  host: string,
  limit: number,
  status = 500,
): void {
  assert.equal(res.status, status);
  assert.match(
    header(res.head, "proxy-status") ?? "",
    /^dprl;.*error=connection_limit_reached/,
  );
  const body = text(res.body);
  assert.equal(body.trim().split("\n").length, 1, `one line: ${JSON.stringify(body)}`);
  assert.ok(body.includes(host), `the body names ${host}: ${body}`);
  assert.match(body, new RegExp(`\\b${limit}\\b`), `the body names the limit ${limit}: ${body}`);
}

Deno.test("plain HTTP over the limit gets 500 and Proxy-Status; after the first finishes requests pass again", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const first = await holdSlot(tp, up);
  try {
    assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 1);
    const refused = await rawExchange(tp.addr, get(up, "/fixed"));
    assertRefused(refused, up.authority, 1);
    assert.equal(up.accepted, 1, "no dial happened for the refused request");
    up.release();
    const res = await readResponse(first);
    assert.equal(text(res.body), "slow done\n");
  } finally {
    first.close();
  }
  const again = await rawExchange(tp.addr, get(up, "/fixed"));
  assert.equal(again.status, 200);
  assert.equal(text(again.body), FIXED_BODY);
});

Deno.test("plain HTTP over the limit via fetch gets 500 with Proxy-Status", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const first = await holdSlot(tp, up);
  try {
    using client = Deno.createHttpClient({ proxy: { url: tp.url } });
    const res = await fetch(up.url("/fixed"), { client });
    const body = await res.text();
    assert.equal(res.status, 500);
    assert.match(res.headers.get("proxy-status") ?? "", /error=connection_limit_reached/);
    assert.ok(body.includes(up.authority));
  } finally {
    first.close();
  }
});

Deno.test("the reject status is configurable", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1, rejectStatus: 503 });
  const first = await holdSlot(tp, up);
  try {
    assertRefused(await rawExchange(tp.addr, get(up, "/fixed")), up.authority, 1, 503);
    const c = await BufferedConn.connect(tp.addr);
    try {
      await c.write(connectRequest(up.authority));
      assertRefused(await readResponse(c), up.authority, 1, 503);
    } finally {
      c.close();
    }
  } finally {
    first.close();
  }
});

Deno.test("per-host override beats the default", async () => {
  await using a = await startUpstream();
  await using b = await startUpstream();
  await using tp = await startProxy({
    defaultMaxConnectionsPerHost: 1,
    hostLimits: { [a.authority]: 2 },
  });
  const held: BufferedConn[] = [];
  try {
    held.push(await holdSlot(tp, a));
    held.push(await holdSlot(tp, a));
    assertRefused(await rawExchange(tp.addr, get(a, "/fixed")), a.authority, 2);
    held.push(await holdSlot(tp, b));
    assertRefused(await rawExchange(tp.addr, get(b, "/fixed")), b.authority, 1);
    assert.equal(a.peak, 2);
    assert.equal(b.peak, 1);
  } finally {
    a.release();
    b.release();
    for (const c of held) c.close();
  }
});

Deno.test("a per-host override below the default applies", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({
    defaultMaxConnectionsPerHost: 10,
    hostLimits: { [up.authority]: 1 },
  });
  const first = await holdSlot(tp, up);
  try {
    assertRefused(await rawExchange(tp.addr, get(up, "/fixed")), up.authority, 1);
  } finally {
    up.release();
    first.close();
  }
});

Deno.test("a host limit configured as localhost-style spelling matches its host key", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 5 });
  tp.proxy.setHostLimit(`127.0.0.1:${up.port}`.toUpperCase(), 1);
  const first = await holdSlot(tp, up);
  try {
    assertRefused(await rawExchange(tp.addr, get(up, "/fixed")), up.authority, 1);
  } finally {
    up.release();
    first.close();
  }
});

Deno.test("runtime limit changes apply to the next connection", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const held: BufferedConn[] = [];
  try {
    held.push(await holdSlot(tp, up));
    assertRefused(await rawExchange(tp.addr, get(up, "/fixed")), up.authority, 1);

    tp.proxy.setDefaultMaxConnectionsPerHost(2);
    held.push(await holdSlot(tp, up));
    assertRefused(await rawExchange(tp.addr, get(up, "/fixed")), up.authority, 2);

    tp.proxy.setHostLimit(up.authority, 3);
    held.push(await holdSlot(tp, up));
    assertRefused(await rawExchange(tp.addr, get(up, "/fixed")), up.authority, 3);

    tp.proxy.setHostLimits({ [up.authority]: 4, "other.example": 1 });
    held.push(await holdSlot(tp, up));
    assertRefused(await rawExchange(tp.addr, get(up, "/fixed")), up.authority, 4);

    // Back to the default (2): 4 are open, nothing new passes.
    tp.proxy.removeHostLimit(up.authority);
    assertRefused(await rawExchange(tp.addr, get(up, "/fixed")), up.authority, 2);

    // 0 means unlimited.
    tp.proxy.setDefaultMaxConnectionsPerHost(0);
    held.push(await holdSlot(tp, up));
    assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 5);
  } finally {
    up.release();
    for (const c of held) c.close();
  }
});

Deno.test("a limit of 0 or less is unlimited", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: -1 });
  const held: BufferedConn[] = [];
  try {
    for (let i = 0; i < 6; i++) held.push(await holdSlot(tp, up));
    assert.equal(up.peak, 6);
    assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 6);
  } finally {
    up.release();
    for (const c of held) c.close();
  }
});

Deno.test("many concurrent clients never push the upstream's peak above the limit", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 3 });
  const clients = await Promise.all(
    Array.from({ length: 20 }, () => BufferedConn.connect(tp.addr)),
  );
  try {
    await Promise.all(clients.map((c) => c.write(get(up, "/slow?ms=60000"))));
    // Three are held upstream; the other 17 are refused at once.
    const statuses: number[] = [];
    const reads = clients.map(async (c) => {
      statuses.push((await readResponse(c, { ms: 30_000 })).status);
    });
    await up.waitHeld(3);
    await waitFor(() => statuses.length === 17, () => `17 refusals (have ${statuses.length})`);
    up.release();
    await Promise.all(reads);
    assert.equal(statuses.filter((s) => s === 200).length, 3);
    assert.equal(statuses.filter((s) => s === 500).length, 17);
    assert.equal(up.peak, 3);
  } finally {
    up.release();
    for (const c of clients) c.close();
  }
});

Deno.test("under a burst of fetches every answer is 200 or 500 and the peak stays within the limit", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 2 });
  using client = Deno.createHttpClient({ proxy: { url: tp.url } });
  const results = await Promise.all(
    Array.from({ length: 60 }, async () => {
      const res = await fetch(up.url("/bytes?n=65536"), { client });
      const body = new Uint8Array(await res.arrayBuffer());
      return { status: res.status, length: body.length };
    }),
  );
  for (const r of results) {
    assert.ok(r.status === 200 || r.status === 500, `status ${r.status}`);
    if (r.status === 200) assert.equal(r.length, 65536);
  }
  assert.ok(results.some((r) => r.status === 200));
  // Requests in flight at the upstream, not its TCP peak: a socket the proxy
  // closed to free its slot may still look open there until its FIN lands.
  assert.ok(up.peakInFlight <= 2, `peak in flight ${up.peakInFlight} exceeds the limit 2`);
});

Deno.test("an idle pooled socket gives its slot to a new request that cannot reuse it", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  // Leaves one idle upstream socket in the pool, holding the only slot.
  assert.equal((await rawExchange(tp.addr, get(up, "/fixed"))).status, 200);
  assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 1);
  // A tunnel to the same host cannot reuse it: the proxy closes it instead.
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(connectRequest(up.authority));
    const head = await readHead(c);
    assert.ok(head);
    assert.equal(statusOf(head), 200, head.startLine);
    assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 1);
    await c.write(`GET /conn HTTP/1.1\r\nHost: ${up.authority}\r\n\r\n`);
    assert.equal(text((await readResponse(c)).body), "2");
    // The evicted idle socket really was closed.
    await up.waitOpen(1);
  } finally {
    c.close();
  }
  await tp.waitCount(up.authority, 0);
});

Deno.test("idle keep-alive never starves live traffic: busy plus idle stays within the limit", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 2 });
  // Two sockets end up idle in the pool.
  const a = await holdSlot(tp, up);
  const b = await holdSlot(tp, up);
  up.release();
  try {
    assert.equal((await readResponse(a)).status, 200);
    assert.equal((await readResponse(b)).status, 200);
  } finally {
    a.close();
    b.close();
  }
  assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 2);
  // Two tunnels need two new sockets: each evicts one idle socket.
  const t1 = await BufferedConn.connect(tp.addr);
  const t2 = await BufferedConn.connect(tp.addr);
  try {
    await t1.write(connectRequest(up.authority));
    await t2.write(connectRequest(up.authority));
    assert.equal(statusOf((await readHead(t1))!), 200);
    assert.equal(statusOf((await readHead(t2))!), 200);
    assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 2);
    // Both evicted idle sockets really were closed: two remain, the tunnels'.
    await up.waitOpen(2);
    assert.equal(up.accepted, 4);
  } finally {
    t1.close();
    t2.close();
  }
  await tp.waitCount(up.authority, 0);
});

Deno.test("idle pooled sockets are closed by the upstream idle timeout and free their slots", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({
    defaultMaxConnectionsPerHost: 1,
    timeouts: { upstreamIdle: 200 },
  });
  assert.equal((await rawExchange(tp.addr, get(up, "/fixed"))).status, 200);
  await tp.waitCount(up.authority, 0);
  await up.waitOpen(0);
});

Deno.test("a client that vanishes mid-request frees its slot and the exchange is not pooled", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const c = await holdSlot(tp, up);
  assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 1);
  c.close();
  // The upstream is still answering: the proxy must drop that socket.
  await tp.waitCount(up.authority, 0);
  const again = await rawExchange(tp.addr, get(up, "/conn"));
  assert.equal(again.status, 200);
  assert.equal(text(again.body), "2", "the aborted socket was not reused");
});

Deno.test("a client that vanishes mid-body frees its slot", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(
      `POST ${up.url("/echo")} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
        "Content-Length: 100000\r\n\r\n" + "x".repeat(1000),
    );
    await up.waitOpen(1);
  } finally {
    c.close();
  }
  await tp.waitCount(up.authority, 0);
  await up.waitOpen(0);
  assert.equal(up.requests.length, 0);
  assert.equal((await rawExchange(tp.addr, get(up, "/fixed"))).status, 200);
});

Deno.test("a client that vanishes mid-head takes no slot and breaks nothing", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const c = await BufferedConn.connect(tp.addr);
  await c.write(`GET ${up.url("/fixed")} HTTP/1.1\r\nHost: 127.0.`);
  c.close();
  const res = await rawExchange(tp.addr, get(up, "/fixed"));
  assert.equal(res.status, 200);
  assert.equal(up.accepted, 1);
});

Deno.test("slots are released exactly once: the count never drops below the truth", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  // Tunnels closed from both ends at once, repeatedly.
  for (let i = 0; i < 5; i++) {
    const c = await BufferedConn.connect(tp.addr);
    await c.write(connectRequest(up.authority));
    assert.equal(statusOf((await readHead(c))!), 200);
    await c.write(`GET /close HTTP/1.1\r\nHost: ${up.authority}\r\n\r\n`);
    await c.closeWrite();
    await c.readToEnd();
    c.close();
    await tp.waitCount(up.authority, 0);
  }
  // With the one slot held, the next connection is still refused: a double
  // release would have let it through.
  const held = await holdSlot(tp, up);
  try {
    assertRefused(await rawExchange(tp.addr, get(up, "/fixed")), up.authority, 1);
    assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 1);
  } finally {
    up.release();
    held.close();
  }
});

Deno.test("activeConnectionsForHost counts tunnels and accepts any spelling of the host", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy();
  const tunnels: BufferedConn[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const c = await BufferedConn.connect(tp.addr);
      tunnels.push(c);
      await c.write(connectRequest(up.authority));
      assert.equal(statusOf((await readHead(c))!), 200);
    }
    assert.equal(await tp.proxy.activeConnectionsForHost(up.authority), 3);
    assert.equal(await tp.proxy.activeConnectionsForHost(`127.0.0.1:${up.port}`), 3);
    assert.equal(await tp.proxy.activeConnectionsForHost("127.0.0.1"), 0);
  } finally {
    for (const c of tunnels) c.close();
  }
  await tp.waitCount(up.authority, 0);
});

Deno.test("stop() closes open tunnels after the grace period and frees the port", async () => {
  await using up = await startUpstream();
  const tp = await startProxy();
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(connectRequest(up.authority));
    assert.equal(statusOf((await readHead(c))!), 200);
    await tp.proxy.stop({ graceMs: 100 });
    await c.waitClosed();
    assert.equal(tp.proxy.proxyUrl, null);
    await up.waitOpen(0);
  } finally {
    c.close();
    await tp.proxy.stop();
  }
});
