// Adaptive limits through one real proxy: an upstream that serves 4
// requests at a time and fails past 12 in flight, 40 clients hammering it
// through dprl with --adaptive --max-connections 64 --queue-timeout 10s.
// The limit finds what the host serves: few 503s, a small queue at the
// host, and the goodput of a well-chosen static limit. The signals that
// move it: latency, 503s, tunnels' connect times, connect errors.
import assert from "node:assert/strict";
import { connectRequest, startProxy } from "./_helpers/proxy.ts";
import { BufferedConn, readHead, statusOf, waitFor } from "./_helpers/raw.ts";
import { startEchoUpstream } from "./_helpers/upstream.ts";
import { startCapacityUpstream } from "./_helpers/capacity_upstream.ts";
import {
  ADAPTIVE,
  adaptiveView,
  assertGoal,
  hammer,
  staticGoodput,
  UPSTREAM,
} from "./_helpers/adaptive_goal.ts";

Deno.test("--adaptive through one proxy: few 503s, a short queue at the host, the goodput of a static 4", async () => {
  await using up = startCapacityUpstream(UPSTREAM);
  await using tp = await startProxy(ADAPTIVE);
  const [run, goodput] = await Promise.all([hammer(up, [tp.url]), staticGoodput()]);
  assertGoal(run, goodput);
  const res = await tp.proxy.adminHandler()(
    new Request(`http://admin/api/hosts/${encodeURIComponent(up.authority)}`),
  );
  const view = await res.json();
  assert.ok(view.effectiveLimit >= 1 && view.effectiveLimit <= 64, JSON.stringify(view));
  assert.equal(view.limit, 64);
  assert.match(view.limitReason, /^(probe|restore|grow|backoff-drop|backoff-latency|hold)$/);
  const metrics = await (await tp.proxy.adminHandler()(new Request("http://admin/metrics"))).text();
  assert.match(
    metrics,
    /dprl_host_effective_limit\{host="127\.0\.0\.1:\d+",reason="[a-z-]+"\} \d+/,
  );
});

Deno.test("--adaptive: a host that serves fast grows its limit, and 503s back it off at once", async () => {
  let failing = false;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async () => {
    if (failing) return new Response("down\n", { status: 503 });
    await new Promise((done) => setTimeout(done, 5)); // the host's service time
    return new Response("ok\n");
  });
  await using _server = { [Symbol.asyncDispose]: () => server.shutdown() };
  const { port } = server.addr as Deno.NetAddr;
  const host = `127.0.0.1:${port}`;
  await using tp = await startProxy({ adaptive: true, defaultMaxConnectionsPerHost: 16 });
  let stop = false;
  const clients = Array.from({ length: 16 }, async () => {
    const client = Deno.createHttpClient({ proxy: { url: tp.url } });
    try {
      // Bounded in count; stopped once the test has seen what it waits for.
      for (let n = 0; n < 20_000 && !stop; n++) {
        const res = await fetch(`http://${host}/`, { client });
        await res.body?.cancel();
      }
    } finally {
      client.close();
    }
  });
  try {
    let seen = await adaptiveView(tp.proxy, host);
    await waitFor(
      async () => ((seen = await adaptiveView(tp.proxy, host)).limit ?? 0) >= 4,
      () => `a limit of 4 or more (seen ${JSON.stringify(seen)})`,
    );
    failing = true;
    await waitFor(
      async () => (seen = await adaptiveView(tp.proxy, host)).reason === "backoff-drop",
      () => `a back-off on 503s (seen ${JSON.stringify(seen)})`,
    );
  } finally {
    stop = true;
    await Promise.all(clients);
  }
});

Deno.test("--adaptive: tunnels feed their connect times, so a host reached by CONNECT grows too", async () => {
  await using echo = startEchoUpstream();
  const host = `127.0.0.1:${echo.port}`;
  await using tp = await startProxy({ adaptive: true, defaultMaxConnectionsPerHost: 16 });
  let stop = false;
  const loops = Array.from({ length: 16 }, async () => {
    for (let n = 0; n < 20_000 && !stop; n++) {
      const conn = await BufferedConn.connect(tp.addr);
      try {
        await conn.write(connectRequest(host));
        const head = await readHead(conn);
        if (head === null || statusOf(head) !== 200) continue;
      } finally {
        conn.close();
      }
    }
  });
  try {
    let seen = await adaptiveView(tp.proxy, host);
    await waitFor(
      async () => ((seen = await adaptiveView(tp.proxy, host)).limit ?? 0) >= 4,
      () => `a limit of 4 or more (seen ${JSON.stringify(seen)})`,
    );
  } finally {
    stop = true;
    await Promise.all(loops);
  }
});

Deno.test("--adaptive: a connect error is a drop, and the host shows its back-off with no connection open", async () => {
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const host = `127.0.0.1:${(closed.addr as Deno.NetAddr).port}`;
  closed.close();
  await using tp = await startProxy({ adaptive: true, defaultMaxConnectionsPerHost: 16 });
  const conn = await BufferedConn.connect(tp.addr);
  try {
    await conn.write(connectRequest(host));
    assert.equal(statusOf((await readHead(conn))!), 502);
  } finally {
    conn.close();
  }
  assert.deepEqual(await adaptiveView(tp.proxy, host), { limit: 1, reason: "backoff-drop" });
});
