// Protocol rules the engine keeps towards clients and upstreams: a switched
// protocol carries the request body and the tunnel bytes unchanged, in
// order; interim responses never reach an HTTP/1.0 client; an HTTP/1.1
// request without Host is refused.
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";
import {
  BufferedConn,
  concat,
  header,
  rawExchange,
  readHead,
  statusOf,
  text,
} from "./_helpers/raw.ts";
import { patternBytes } from "./_helpers/upstream.ts";
import { startScriptedUpstream } from "./_helpers/scripted_upstream.ts";
import { startProxy } from "./_helpers/proxy.ts";
import { captureLogs, messageText } from "./_helpers/logs.ts";
import { waitFor } from "./_helpers/raw.ts";

const SWITCH =
  "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";

Deno.test("an upgrade answered before its request body is read relays body and tunnel bytes unchanged", async () => {
  // Each connection: 101 at once, then everything until the end, recorded.
  const recorded: Uint8Array[] = [];
  await using up = startScriptedUpstream(async (c) => {
    if (await c.readHead() === null) return;
    await c.write(SWITCH);
    recorded.push(await c.conn.readToEnd());
  });
  await using tp = await startProxy();
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: 300_000 }),
      fc.integer({ min: 0, max: 5_000 }),
      fc.double({ min: 0, max: 1, noNaN: true }),
      fc.integer({ min: 1, max: 1 << 30 }),
      async (size, tailSize, split, seed) => {
        const body = patternBytes(size, seed);
        const tail = patternBytes(tailSize, seed + 1);
        const c = await BufferedConn.connect(tp.addr);
        try {
          await c.write(
            `POST ${up.url("/ws")} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
              `Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: ${size}\r\n\r\n`,
          );
          // Part of the body before the 101 arrives, the rest after it.
          const before = Math.floor(size * split);
          const sending = c.write(body.subarray(0, before));
          const head = await readHead(c);
          assert.ok(head);
          assert.equal(statusOf(head), 101);
          await sending;
          await c.write(concat([body.subarray(before), tail]));
          await c.closeWrite();
          await c.waitClosed();
        } finally {
          c.close();
        }
        const got = recorded.shift();
        assert.ok(got, "the upstream recorded the connection");
        const want = concat([body, tail]);
        assert.equal(got.length, want.length, "byte count");
        const at = got.findIndex((b, i) => b !== want[i]);
        assert.equal(at, -1, `first differing byte at offset ${at}`);
      },
    ),
    { numRuns: 12, examples: [[200_000, 0, 0.5, 7], [600, 0, 0.1, 7], [600, 100, 0, 3]] },
  );
});

Deno.test("a switched protocol is logged once, at its end, with its bytes both ways, and its connection counted closed", async () => {
  const logs = await captureLogs(["dprl", "access"]);
  await using up = startScriptedUpstream(async (c) => {
    if (await c.readHead() === null) return;
    await c.write(SWITCH + "hello");
    await c.conn.readToEnd(); // "goodbye", then the client's end
  });
  await using tp = await startProxy({ accessLog: true });
  const gauge = async (): Promise<number> => {
    const res = await tp.proxy.adminHandler()(new Request("http://admin/metrics"));
    return Number(/^dprl_client_connections (\d+)$/m.exec(await res.text())?.[1]);
  };
  const c = await BufferedConn.connect(tp.addr);
  try {
    await c.write(
      `GET ${up.url("/ws")} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
        `Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n`,
    );
    const head = await readHead(c);
    assert.ok(head);
    assert.equal(statusOf(head), 101);
    assert.equal(text(await c.readExact(5)), "hello");
    assert.equal(await gauge(), 1);
    assert.equal(logs.length, 0, "nothing logged while the pipe is open");
    await c.write("goodbye");
    await c.closeWrite();
    await c.waitClosed();
  } finally {
    c.close();
  }
  await waitFor(async () => await gauge() === 0, () => "the client connection counted closed");
  await waitFor(() => logs.length > 0, () => "the access line");
  assert.equal(logs.length, 1);
  const line = messageText(logs[0]);
  assert.match(line, new RegExp(`GET ${up.authority} 101 up=\\d+ down=\\d+`));
  const [, upBytes, downBytes] = /up=(\d+) down=(\d+)/.exec(line)!.map(Number);
  assert.ok(upBytes >= "goodbye".length, line);
  assert.ok(downBytes >= "hello".length, line);
});

Deno.test("interim responses reach an HTTP/1.1 client but never an HTTP/1.0 one", async () => {
  await using up = startScriptedUpstream(async (c) => {
    while (await c.readHead() !== null) {
      await c.write(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" +
          "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
      );
    }
  });
  await using tp = await startProxy();
  for (const minor of [0, 1]) {
    const c = await BufferedConn.connect(tp.addr);
    try {
      await c.write(
        `GET ${
          up.url("/hints")
        } HTTP/1.${minor}\r\nHost: ${up.authority}\r\nConnection: close\r\n\r\n`,
      );
      const all = text(await c.readToEnd());
      const statuses = [...all.matchAll(/^HTTP\/1\.1 (\d{3})/gm)].map((m) => Number(m[1]));
      assert.deepEqual(statuses, minor === 0 ? [200] : [100, 103, 200], `HTTP/1.${minor}`);
      assert.ok(all.endsWith("\r\n\r\nfinal"));
    } finally {
      c.close();
    }
  }
});

Deno.test("an HTTP/1.1 request without Host gets 400 and is not forwarded; HTTP/1.0 needs none", async () => {
  await using up = startScriptedUpstream(async (c) => {
    while (await c.readHead() !== null) {
      await c.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    }
  });
  await using tp = await startProxy();
  for (
    const req of [
      `GET ${up.url("/no-host")} HTTP/1.1\r\n\r\n`,
      `POST ${up.url("/no-host")} HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi`,
      `CONNECT ${up.authority} HTTP/1.1\r\n\r\n`,
      `CONNECT ${up.authority} HTTP/1.1\r\nHost: ${up.authority}\r\nHost: ${up.authority}\r\n\r\n`,
    ]
  ) {
    const res = await rawExchange(tp.addr, req);
    assert.equal(res.status, 400, req);
    assert.match(header(res.head, "proxy-status") ?? "", /error=http_request_error/);
    assert.equal(header(res.head, "connection"), "close");
  }
  assert.equal(up.accepted, 0, "nothing reached the upstream");
  const old = await rawExchange(tp.addr, `GET ${up.url("/old")} HTTP/1.0\r\n\r\n`);
  assert.equal(old.status, 200);
  assert.match(up.heads[0], /^GET \/old HTTP\/1\.1\r\nHost: 127\.0\.0\.1:\d+\r\n/);
});
