// The collection a quiet proxy runs: once per quiet spell, only after the
// heap has grown, never while requests keep coming; V8's own collection is
// reachable without start-up flags or permissions; the command line runs it
// and counts it in its metrics.
import assert from "node:assert/strict";
import { fullCollection, heapUsed, IdleCollector } from "../lib/idle_collector.ts";
import { startCli } from "./_helpers/spawn.ts";
import { BufferedConn, readHead, statusOf, waitFor } from "./_helpers/raw.ts";
import { connectRequest } from "./_helpers/proxy.ts";

const MIB = 1024 * 1024;

/** A collector over a pretend heap: `grow` adds garbage, a collection frees it. */
function pretend(live = 10 * MIB) {
  let heap = live;
  let collections = 0;
  const collector = new IdleCollector({
    collect: () => {
      collections++;
      heap = live;
    },
    heapUsed: () => heap,
  });
  return {
    collector,
    grow: (bytes: number) => heap += bytes,
    get collections() {
      return collections;
    },
  };
}

Deno.test("a quiet proxy collects once, after a second with no new request, when its heap grew", () => {
  const p = pretend();
  p.grow(20 * MIB);
  assert.equal(p.collector.tick(0, 500), false);
  assert.equal(p.collector.tick(750, 500), false, "quiet for less than a second");
  assert.equal(p.collector.tick(1000, 500), true);
  assert.equal(p.collections, 1);
  for (let t = 1250; t <= 10_000; t += 250) p.collector.tick(t, 500);
  assert.equal(p.collections, 1, "once per quiet spell");
});

Deno.test("no collection while requests keep coming, nor when the heap has hardly grown", () => {
  const p = pretend();
  p.grow(50 * MIB);
  for (let t = 0, n = 0; t <= 10_000; t += 250, n++) p.collector.tick(t, n);
  assert.equal(p.collections, 0, "busy: requests begin every tick");
  p.grow(-50 * MIB + 3 * MIB);
  for (let t = 10_250; t <= 20_000; t += 250) p.collector.tick(t, 40);
  assert.equal(p.collections, 0, "3 MiB of growth is not worth a pause");
  p.grow(2 * MIB);
  p.collector.tick(20_250, 40);
  assert.equal(p.collections, 1, "5 MiB is");
});

Deno.test("the next burst makes the next quiet spell collect again", () => {
  const p = pretend();
  p.grow(8 * MIB);
  p.collector.tick(0, 1);
  p.collector.tick(1000, 1);
  assert.equal(p.collections, 1);
  p.grow(8 * MIB);
  p.collector.tick(1250, 300);
  p.collector.tick(2250, 300);
  assert.equal(p.collections, 2);
});

Deno.test("V8's full collection is reachable and frees what is no longer held", () => {
  const gc = fullCollection();
  assert.ok(gc, "a full collection");
  assert.equal(fullCollection(), gc, "one for the whole process");
  let garbage: object[] | null = Array.from({ length: 200_000 }, (_, i) => ({ i }));
  const held = heapUsed();
  assert.ok(garbage.length > 0);
  garbage = null;
  gc();
  assert.ok(heapUsed() < held - 4 * MIB, `${heapUsed()} < ${held} - 4 MiB`);
});

/** The URLs the CLI logged (JSON lines) for `message`, in order. */
function loggedUrl(stderr: string, message: RegExp): string | undefined {
  for (const line of stderr.split("\n").filter(Boolean)) {
    const record = JSON.parse(line);
    if (message.test(record.message)) return record.url as string;
  }
  return undefined;
}

Deno.test("the command line collects once it falls quiet holding many idle tunnels, and counts it", async () => {
  // An upstream that holds every connection and says nothing.
  const upstream = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const c of upstream) held.push(c);
  })();
  await using cli = startCli(["--port", "0", "--admin-port", "0", "--log-format", "json"]);
  const clients: BufferedConn[] = [];
  try {
    const [proxyUrl, adminUrl] = await waitFor(() => {
      const proxy = loggedUrl(cli.stderr, /^Proxy listening on /);
      const admin = loggedUrl(cli.stderr, /^Admin server listening on /);
      return proxy && admin ? [new URL(proxy), new URL(admin)] : undefined;
    }, () => `the proxy and admin URLs in:\n${cli.stderr}`) as URL[];
    const collections = async (): Promise<number> => {
      const text = await (await fetch(new URL("/metrics", adminUrl))).text();
      return Number(/^dprl_idle_collections_total (\d+)$/m.exec(text)?.[1]);
    };
    const before = await collections();
    // About 8 KiB of heap each: enough growth for a collection once they idle.
    const authority = `127.0.0.1:${(upstream.addr as Deno.NetAddr).port}`;
    for (let i = 0; i < 1000; i++) {
      const c = await BufferedConn.connect({
        hostname: proxyUrl.hostname,
        port: Number(proxyUrl.port),
      });
      clients.push(c);
      await c.write(connectRequest(authority));
      const head = await readHead(c);
      assert.ok(head);
      assert.equal(statusOf(head), 200);
    }
    await waitFor(
      async () => await collections() > before,
      () => "dprl_idle_collections_total to grow once the tunnels idle",
    );
  } finally {
    for (const c of clients) c.close();
    upstream.close();
    for (const c of held) c.close();
    await accepting.catch(() => {});
  }
});
