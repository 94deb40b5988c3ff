// Waiting for a slot: requests over a host's limit wait in line, first come
// first served, up to the queue timeout; a full line, a timeout and a plain
// refusal carry Retry-After; a client that leaves its place holds nothing.
import assert from "node:assert/strict";
import {
  BufferedConn,
  header,
  readResponse,
  request,
  sleep,
  text,
  waitFor,
} from "./_helpers/raw.ts";
import { startUpstream } from "./_helpers/upstream.ts";
import { connectRequest, startProxy } from "./_helpers/proxy.ts";

/** Sends one request on a fresh connection; resolves its status and body. */
async function exchange(
  addr: { hostname: string; port: number },
  req: string,
): Promise<{ status: number; body: string; retryAfter: string | null; proxyStatus: string }> {
  const c = await BufferedConn.connect(addr);
  try {
    await c.write(req);
    const res = await readResponse(c, { ms: 30_000 });
    return {
      status: res.status,
      body: text(res.body),
      retryAfter: header(res.head, "retry-after"),
      proxyStatus: header(res.head, "proxy-status") ?? "",
    };
  } finally {
    c.close();
  }
}

Deno.test("20 clients at limit 2 all succeed in arrival order, never more than 2 at once", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 2, queueTimeout: 20_000 });
  const started = performance.now();
  const finished: number[] = [];
  const all: Promise<void>[] = [];
  for (let i = 0; i < 20; i++) {
    const req = request("GET", up.url("/slow?ms=150"), { Host: up.authority, Connection: "close" });
    all.push(
      exchange(tp.addr, req).then((r) => {
        assert.equal(r.status, 200, r.body);
        finished.push(i);
      }),
    );
    // A clear arrival order: the next client comes once this one waits in line or reached the
    // upstream.
    await waitFor(
      async () => up.requests.length + await tp.queued(up.authority) > i,
      `client ${i} in line`,
    );
  }
  await Promise.all(all);
  const seconds = (performance.now() - started) / 1000;
  console.log(`20 requests at limit 2 took ${seconds.toFixed(2)} s (10 x 150 ms = 1.5 s)`);
  assert.ok(up.peakInFlight <= 2, `upstream peak ${up.peakInFlight}`);
  assert.ok(seconds >= 1.45, "the upstream held each pair for 150 ms");
  // First come, first served: each request ends within one place of its turn.
  finished.forEach((client, place) => assert.ok(Math.abs(client - place) <= 1, `${finished}`));
  assert.ok(await tp.proxy.activeConnectionsForHost(up.authority) <= 2);
});

Deno.test("a CONNECT over the limit waits and gets its tunnel when the slot frees", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1, queueTimeout: 20_000 });
  const first = await BufferedConn.connect(tp.addr);
  const second = await BufferedConn.connect(tp.addr);
  try {
    await first.write(connectRequest(up.authority));
    assert.match((await first.readLine())!, /^HTTP\/1\.1 200/);
    await second.write(connectRequest(up.authority));
    await tp.waitQueued(up.authority, 1);
    assert.equal(second.buffered.length, 0, "the second waits");
    first.close();
    assert.match((await second.readLine())!, /^HTTP\/1\.1 200/);
    await tp.waitCount(up.authority, 1);
  } finally {
    first.close();
    second.close();
  }
  await tp.waitCount(up.authority, 0);
});

Deno.test("a client that disconnects while queued leaves the line and holds nothing", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1, queueTimeout: 20_000 });
  const holder = exchange(tp.addr, request("GET", up.url("/slow"), { Host: up.authority }));
  await up.waitHeld(1);
  const leaver = await BufferedConn.connect(tp.addr);
  await leaver.write(request("GET", up.url("/fixed"), { Host: up.authority }));
  await tp.waitQueued(up.authority, 1);
  leaver.close();
  await tp.waitQueued(up.authority, 0);
  const third = exchange(tp.addr, request("GET", up.url("/fixed"), { Host: up.authority }));
  await tp.waitQueued(up.authority, 1);
  up.release();
  assert.equal((await holder).status, 200);
  assert.equal((await third).status, 200);
  assert.equal(
    up.requests.filter((r) => r.target === "/fixed").length,
    1,
    "the leaver sent nothing",
  );
  assert.equal(up.accepted, 1, "one upstream connection served both");
});

Deno.test("clients that leave the line count as no upstream failure", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({
    defaultMaxConnectionsPerHost: 1,
    queueTimeout: 20_000,
    admin: { port: 0 },
  });
  const metrics = async () => await (await fetch(new URL("/metrics", tp.proxy.adminUrl!))).text();
  const gauge = async (name: string) =>
    Number((await metrics()).match(new RegExp(`^${name} (\\d+)$`, "m"))?.[1]);
  const holder = exchange(tp.addr, request("GET", up.url("/slow"), { Host: up.authority }));
  await up.waitHeld(1);
  const leavers = await Promise.all([0, 1, 2].map(() => BufferedConn.connect(tp.addr)));
  for (const c of leavers) await c.write(request("GET", up.url("/fixed"), { Host: up.authority }));
  await waitFor(async () => await gauge('dprl_queued\\{host="[^"]+"\\}') === 3, "3 in line");
  for (const c of leavers) c.close();
  // Their sessions have ended once only the holder's connection is open.
  await waitFor(async () => await gauge("dprl_client_connections") === 1, "leavers gone");
  up.release();
  assert.equal((await holder).status, 200);
  const text = await metrics();
  assert.doesNotMatch(text, /^dprl_upstream_errors_total\{.*\} [1-9]/m);
  assert.doesNotMatch(text, /^dprl_client_errors_total/m);
});

Deno.test("a full line is refused at once with Retry-After and details queue full", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({
    defaultMaxConnectionsPerHost: 1,
    queueTimeout: 20_000,
    queueMax: 1,
  });
  const holder = exchange(tp.addr, request("GET", up.url("/slow"), { Host: up.authority }));
  await up.waitHeld(1);
  const waiter = exchange(tp.addr, request("GET", up.url("/fixed"), { Host: up.authority }));
  await tp.waitQueued(up.authority, 1);
  const refused = await exchange(tp.addr, request("GET", up.url("/fixed"), { Host: up.authority }));
  assert.equal(refused.status, 500);
  assert.match(refused.proxyStatus, /error=connection_limit_reached; details="queue full"/);
  assert.match(refused.retryAfter ?? "", /^[1-9][0-9]*$/);
  up.release();
  assert.equal((await holder).status, 200);
  assert.equal((await waiter).status, 200);
});

Deno.test("a wait past the queue timeout gets the reject status, Retry-After and how long it waited", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({
    defaultMaxConnectionsPerHost: 1,
    queueTimeout: 500,
    rejectStatus: 429,
  });
  const holder = exchange(tp.addr, request("GET", up.url("/slow"), { Host: up.authority }));
  await up.waitHeld(1);
  const late = await exchange(tp.addr, request("GET", up.url("/fixed"), { Host: up.authority }));
  assert.equal(late.status, 429);
  assert.match(late.proxyStatus, /error=connection_limit_reached; details="waited [0-9.]+s"/);
  assert.match(late.retryAfter ?? "", /^[1-9][0-9]*$/);
  up.release();
  assert.equal((await holder).status, 200);
});

Deno.test("a wait past the queue timeout lasts the full timeout and reports what it waited", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1, queueTimeout: 1000 });
  const holder = exchange(tp.addr, request("GET", up.url("/slow"), { Host: up.authority }));
  await up.waitHeld(1);
  // Arrivals at different offsets (not a synchronisation): a wait must not
  // depend on where it starts relative to any periodic timer of the proxy.
  for (const offset of [0, 80, 160]) {
    await sleep(offset);
    const started = performance.now();
    const late = await exchange(tp.addr, request("GET", up.url("/fixed"), { Host: up.authority }));
    const elapsed = performance.now() - started;
    const waited = 1000 * Number(late.proxyStatus.match(/details="waited ([0-9.]+)s"/)?.[1]);
    assert.ok(elapsed >= 1000, `refused after ${elapsed.toFixed(1)} ms`);
    assert.ok(waited >= 1000 && waited <= elapsed, `said ${waited} ms, took ${elapsed.toFixed(1)}`);
  }
  up.release();
  assert.equal((await holder).status, 200);
});

Deno.test("a refusal without a queue carries Retry-After", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1 });
  const holder = exchange(tp.addr, request("GET", up.url("/slow"), { Host: up.authority }));
  await up.waitHeld(1);
  const refused = await exchange(tp.addr, request("GET", up.url("/fixed"), { Host: up.authority }));
  assert.equal(refused.status, 500);
  assert.match(refused.retryAfter ?? "", /^[1-9][0-9]*$/);
  up.release();
  await holder;
});

Deno.test("an idle pooled connection serves a waiting plain-HTTP request before anything else", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 1, queueTimeout: 20_000 });
  const holder = exchange(tp.addr, request("GET", up.url("/slow"), { Host: up.authority }));
  await up.waitHeld(1);
  const waiter = exchange(tp.addr, request("GET", up.url("/conn"), { Host: up.authority }));
  await tp.waitQueued(up.authority, 1);
  up.release();
  assert.equal((await holder).status, 200);
  const w = await waiter;
  assert.equal(w.status, 200);
  assert.equal(w.body, "1", "the waiter got the first upstream connection");
  assert.equal(up.accepted, 1);
});

Deno.test("waiting requests show in dprl_queued, /api/hosts and dprl_queue_wait_seconds; timeouts and full lines count as refusals", async () => {
  await using up = await startUpstream();
  await using tp = await startProxy({
    defaultMaxConnectionsPerHost: 1,
    queueTimeout: 600,
    queueMax: 2,
    admin: { port: 0 },
  });
  const base = tp.proxy.adminUrl!;
  const metrics = async () => await (await fetch(new URL("/metrics", base))).text();
  const host = up.authority;
  const holder = exchange(tp.addr, request("GET", up.url("/slow"), { Host: host }));
  await up.waitHeld(1);
  const waiters = [0, 1].map(() =>
    exchange(tp.addr, request("GET", up.url("/fixed"), { Host: host }))
  );
  await tp.waitQueued(host, 2);
  const full = await exchange(tp.addr, request("GET", up.url("/fixed"), { Host: host }));
  assert.match(full.proxyStatus, /queue full/);
  const text = await metrics();
  assert.match(text, new RegExp(`^dprl_queued\\{host="${host}"\\} 2$`, "m"));
  const hosts = await (await fetch(new URL("/api/hosts", base))).json();
  assert.equal(hosts.hosts.find((h: { host: string }) => h.host === host).queued, 2);
  // Both time out (600 ms) while the holder keeps the slot.
  for (const w of await Promise.all(waiters)) assert.match(w.proxyStatus, /waited/);
  up.release();
  assert.equal((await holder).status, 200);
  const served = exchange(tp.addr, request("GET", up.url("/slow"), { Host: host }));
  await up.waitHeld(1);
  const waited = exchange(tp.addr, request("GET", up.url("/fixed"), { Host: host }));
  await tp.waitQueued(host, 1);
  up.release();
  assert.equal((await served).status, 200);
  assert.equal((await waited).status, 200);
  const after = await metrics();
  assert.match(after, new RegExp(`^dprl_queued\\{host="${host}"\\} 0$`, "m"));
  assert.match(after, /^dprl_queue_wait_seconds_count 1$/m);
  assert.match(
    after,
    new RegExp(
      `^dprl_connections_refused_total\\{host="${host}",reason="queue_timeout"\\} 2$`,
      "m",
    ),
  );
  assert.match(
    after,
    new RegExp(`^dprl_connections_refused_total\\{host="${host}",reason="queue_full"\\} 1$`, "m"),
  );
});
