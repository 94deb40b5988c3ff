// Access control and abuse limits over real sockets, through a real proxy:
// the client allow-list, proxy authentication (raw and with curl), destination
// rules, --deny-private, the proxy's own port and its Redis always refused,
// client connection caps and the fin timeout of half-closed tunnels.
import assert from "node:assert/strict";
import bcrypt from "bcryptjs";
import { Redis } from "ioredis";
import { configure, type LogRecord, reset } from "@logtape/logtape";
import {
  BufferedConn,
  header,
  rawExchange,
  type RawResponse,
  readHead,
  readResponse,
  request,
  statusOf,
  text,
  waitFor,
} from "./_helpers/raw.ts";
import { connectRequest, startProxy, type TestProxy } from "./_helpers/proxy.ts";
import { FIXED_BODY, startUpstream, type Upstream } from "./_helpers/upstream.ts";
import { startScriptedUpstream } from "./_helpers/scripted_upstream.ts";
import { RedisServer, redisTest } from "./_helpers/redis_server.ts";

const PASSWORD = "correct horse battery staple";
const HASH = bcrypt.hashSync(PASSWORD, 4);
const CREDENTIALS = btoa(`alice:${PASSWORD}`);

function hasCommand(name: string): boolean {
  try {
    new Deno.Command(name, { args: ["--version"], stdout: "null", stderr: "null" }).outputSync();
    return true;
  } catch {
    return false;
  }
}

/** A GET of `url` through the proxy, with extra header fields. */
function get(url: string, fields: Record<string, string> = {}): string {
  return request("GET", url, { Host: new URL(url).host, ...fields });
}

/** Sends `req` on a fresh connection; the reply and whether the proxy then closed. */
async function refusal(
  proxy: TestProxy,
  req: string,
): Promise<RawResponse & { closed: boolean; proxyStatus: string }> {
  const c = await BufferedConn.connect(proxy.addr);
  try {
    await c.write(req);
    const res = await readResponse(c);
    const rest = await c.waitClosed(5_000);
    return {
      ...res,
      closed: rest.length === 0,
      proxyStatus: header(res.head, "proxy-status") ?? "",
    };
  } finally {
    c.close();
  }
}

/** Runs curl through the proxy; resolves `"<http_code> <http_connect>"`. */
async function curl(proxy: TestProxy, ...args: string[]): Promise<string> {
  const { stdout } = await new Deno.Command("curl", {
    args: [
      "-s",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code} %{http_connect}",
      "--max-time",
      "10",
      "--proxy",
      proxy.url,
      ...args,
    ],
    env: { NO_PROXY: "", no_proxy: "" },
  }).output();
  return text(stdout);
}

/** The status of the answer to a CONNECT; tunnel bytes stay buffered. */
async function tunnelStatus(c: BufferedConn): Promise<number> {
  const head = await readHead(c);
  if (head === null) throw new Error("Connection closed before the CONNECT answer");
  return statusOf(head);
}

Deno.test("a client outside --allow-clients gets 403 with a one-line reason and is closed", async () => {
  await using up = await startUpstream();
  await using proxy = await startProxy({ allowClients: ["10.0.0.0/8"] });
  for (const req of [get(up.url("/fixed")), connectRequest(up.authority)]) {
    const res = await refusal(proxy, req);
    assert.equal(res.status, 403);
    assert.equal(text(res.body), "Client address 127.0.0.1 is not allowed to use this proxy\n");
    assert.match(res.proxyStatus, /error=http_request_denied/);
    assert.ok(res.closed, "the proxy closes the connection");
  }
  assert.equal(up.accepted, 0);
});

Deno.test("a client outside --allow-clients is refused before it sends a byte", async () => {
  await using proxy = await startProxy({ allowClients: ["10.0.0.0/8"] });
  const c = await BufferedConn.connect(proxy.addr);
  try {
    // Sends nothing: the answer does not wait for a request (or the head timeout).
    const res = await readResponse(c, { ms: 3_000 });
    assert.equal(res.status, 403);
    assert.equal(text(await c.waitClosed(3_000)), "");
  } finally {
    c.close();
  }
});

Deno.test("a raw request without credentials gets 407 with the Basic challenge, plain and CONNECT", async () => {
  await using up = await startUpstream();
  await using proxy = await startProxy({ users: { alice: HASH } });
  const wrong = btoa("alice:guess");
  for (
    const req of [
      get(up.url("/fixed")),
      get(up.url("/fixed"), { "Proxy-Authorization": `Basic ${wrong}` }),
      connectRequest(up.authority),
      `CONNECT ${up.authority} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
      `Proxy-Authorization: Basic ${wrong}\r\n\r\n`,
    ]
  ) {
    const res = await refusal(proxy, req);
    assert.equal(res.status, 407, req);
    assert.match(header(res.head, "proxy-authenticate") ?? "", /^Basic realm="dprl"/);
    assert.ok(res.closed, "the proxy closes the connection");
  }
  assert.equal(up.accepted, 0);
  const ok = await rawExchange(
    proxy.addr,
    get(up.url("/fixed"), { "Proxy-Authorization": `Basic ${CREDENTIALS}` }),
  );
  assert.equal(ok.status, 200);
  assert.equal(text(ok.body), FIXED_BODY);
});

Deno.test({
  name: "curl --proxy-user passes for plain HTTP and CONNECT; without it 407",
  ignore: !hasCommand("curl"),
  fn: async () => {
    await using up = await startUpstream();
    await using proxy = await startProxy({ users: { alice: HASH } });
    const user = ["--proxy-user", `alice:${PASSWORD}`];
    assert.equal(await curl(proxy, up.url("/fixed")), "407 000");
    assert.equal(await curl(proxy, "-p", up.url("/fixed")), "000 407");
    assert.equal(await curl(proxy, ...user, up.url("/fixed")), "200 000");
    assert.equal(await curl(proxy, ...user, "-p", up.url("/fixed")), "200 200");
    assert.equal(await curl(proxy, "--proxy-user", "alice:nope", up.url("/fixed")), "407 000");
  },
});

Deno.test("with authentication and an explicit client list, both must pass", async () => {
  await using up = await startUpstream();
  await using proxy = await startProxy({ users: { alice: HASH }, allowClients: ["10.0.0.0/8"] });
  const res = await refusal(
    proxy,
    get(up.url("/fixed"), { "Proxy-Authorization": `Basic ${CREDENTIALS}` }),
  );
  assert.equal(res.status, 403);
  assert.equal(up.accepted, 0);
});

Deno.test("Proxy-Authorization never reaches the upstream and is never logged", async () => {
  const records: LogRecord[] = [];
  await configure({
    reset: true,
    sinks: { capture: (r) => records.push(r) },
    loggers: [
      { category: ["dprl"], lowestLevel: "debug", sinks: ["capture"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: [] },
    ],
  });
  try {
    await using up = await startUpstream();
    await using proxy = await startProxy({ users: { alice: HASH }, accessLog: true });
    const auth = { "Proxy-Authorization": `Basic ${CREDENTIALS}` };
    assert.equal((await rawExchange(proxy.addr, get(up.url("/fixed"), auth))).status, 200);
    assert.equal(
      (await rawExchange(proxy.addr, get(up.url("/fixed"), { "Proxy-Authorization": "x" })))
        .status,
      407,
    );
    const c = await BufferedConn.connect(proxy.addr);
    try {
      await c.write(
        `CONNECT ${up.authority} HTTP/1.1\r\nHost: ${up.authority}\r\n` +
          `Proxy-Authorization: Basic ${CREDENTIALS}\r\n\r\n`,
      );
      assert.equal(await tunnelStatus(c), 200);
      await c.write(get(up.url("/fixed")));
      assert.equal((await readResponse(c)).status, 200);
    } finally {
      c.close();
    }
    await proxy.proxy.stop();
    assert.equal(up.requests.length, 2);
    for (const seen of up.requests) {
      assert.ok(!seen.fields.some(([k]) => /^proxy-/i.test(k)), JSON.stringify(seen.fields));
    }
    const logged = records.map((r) => JSON.stringify([r.message, r.properties])).join("\n");
    assert.ok(records.some((r) => r.category.includes("access")), "the access log ran");
    assert.ok(records.some((r) => r.level === "debug"), "debug records were captured");
    for (const secret of [CREDENTIALS, PASSWORD, HASH]) {
      assert.ok(!logged.includes(secret), `the log holds no credentials:\n${logged}`);
    }
  } finally {
    await reset();
  }
});

Deno.test("--deny-private refuses names that resolve to loopback and every loopback spelling, taking no slot", async () => {
  await using up = await startUpstream();
  await using proxy = await startProxy({ denyPrivate: true, defaultMaxConnectionsPerHost: 1 });
  const targets = [
    `localhost:${up.port}`, // a name that resolves to loopback: the DNS-rebinding case
    `127.0.0.1:${up.port}`,
    `127.1:${up.port}`,
    `[::ffff:127.0.0.1]:${up.port}`,
    `[::1]:${up.port}`,
    `0.0.0.0:${up.port}`,
    `169.254.169.254:80`,
  ];
  for (const target of targets) {
    for (const req of [connectRequest(target), get(`http://${target}/fixed`)]) {
      const res = await refusal(proxy, req);
      assert.equal(res.status, 403, `${req.split("\r\n")[0]}: ${text(res.body)}`);
      assert.match(res.proxyStatus, /error=destination_ip_prohibited/);
      assert.match(text(res.body), /^Destination .* is a private address\n$/);
    }
  }
  assert.equal(up.accepted, 0);
  for (const host of ["localhost", "127.0.0.1", "127.1", "[::ffff:127.0.0.1]"]) {
    assert.equal(await proxy.proxy.activeConnectionsForHost(`${host}:${up.port}`), 0);
  }
});

Deno.test("--allow and --deny rules with ports decide which destinations are reached", async () => {
  await using up = await startUpstream();
  await using other = await startUpstream();
  {
    await using proxy = await startProxy({ allow: [`localhost:${up.port}`] });
    assert.equal(
      (await rawExchange(proxy.addr, get(`http://localhost:${up.port}/fixed`))).status,
      200,
    );
    for (const target of [`localhost:${other.port}`, `127.0.0.1:${up.port}`]) {
      const res = await refusal(proxy, connectRequest(target));
      assert.equal(res.status, 403, target);
      assert.match(res.proxyStatus, /error=destination_not_allowed/);
    }
  }
  {
    const range = `${other.port}-${other.port}`;
    await using proxy = await startProxy({ deny: [`127.0.0.0/8:${range}`] });
    assert.equal((await rawExchange(proxy.addr, get(up.url("/fixed")))).status, 200);
    const res = await refusal(proxy, get(other.url("/fixed")));
    assert.equal(res.status, 403);
    assert.match(res.proxyStatus, /error=destination_ip_prohibited/);
    assert.match(text(res.body), /denied by rule/);
  }
  assert.equal(other.accepted, 0);
});

Deno.test("CONNECT and GET to the proxy's own port are refused in every spelling, with no flag", async () => {
  await using proxy = await startProxy();
  const port = proxy.addr.port;
  for (
    const target of [
      `127.0.0.1:${port}`,
      `localhost:${port}`,
      `127.1:${port}`,
      `[::ffff:127.0.0.1]:${port}`,
      `0.0.0.0:${port}`,
    ]
  ) {
    for (const req of [connectRequest(target), get(`http://${target}/`)]) {
      const res = await refusal(proxy, req);
      assert.equal(res.status, 403, `${req.split("\r\n")[0]}: ${text(res.body)}`);
      assert.match(res.proxyStatus, /error=destination_ip_prohibited/);
      assert.match(text(res.body), /is this proxy or its Redis/);
    }
  }
});

Deno.test("CONNECT to the proxy's own admin port is refused", async () => {
  await using proxy = await startProxy({ admin: { port: 0 } });
  const port = Number(proxy.proxy.adminUrl!.port);
  for (const target of [`127.0.0.1:${port}`, `localhost:${port}`]) {
    const res = await refusal(proxy, connectRequest(target));
    assert.equal(res.status, 403, `${target}: ${text(res.body)}`);
    assert.match(res.proxyStatus, /error=destination_ip_prohibited/);
  }
});

Deno.test("a chain of nested CONNECTs to the proxy itself in one write opens no connection", async () => {
  await using proxy = await startProxy();
  const self = `127.0.0.1:${proxy.addr.port}`;
  // The proxy's own gauges: a file-descriptor count would see the other tests of the process.
  const admin = proxy.proxy.adminHandler();
  const metrics = async () => await (await admin(new Request("http://admin/metrics"))).text();
  const c = await BufferedConn.connect(proxy.addr);
  try {
    await c.write(connectRequest(self).repeat(300));
    const status = await tunnelStatus(c);
    // A hop of a chain connects (to the proxy itself) before it answers: counted at the answer.
    const answered = await metrics();
    assert.equal(status, 403);
    assert.match(answered, /^dprl_client_connections [01]$/m, answered);
    assert.match(answered, /^dprl_requests_total\{kind="connect"\} 1$/m, answered);
    assert.doesNotMatch(answered, /^dprl_upstream_connections\{.*\} [1-9]/m);
    assert.doesNotMatch(answered, /^dprl_connections_admitted_total\{.*\} [1-9]/m);
    await c.waitClosed();
  } finally {
    c.close();
  }
});

await redisTest("CONNECT to the Redis of a distributed proxy is refused", "server", async () => {
  await using redis = await RedisServer.start();
  await using proxy = await startProxy({ redis: redis.url });
  for (const target of [`127.0.0.1:${redis.port}`, `localhost:${redis.port}`]) {
    const c = await BufferedConn.connect(proxy.addr);
    try {
      // A forged worker entry, sent after the CONNECT as an attacker would.
      await c.write(connectRequest(target) + "HSET dprl:{victim}:n forged 1000\r\n");
      const res = await readResponse(c, { method: "CONNECT" });
      assert.equal(res.status, 403, target);
      assert.match(header(res.head, "proxy-status") ?? "", /error=destination_ip_prohibited/);
    } finally {
      c.close();
    }
  }
  assert.equal((await redis.cli("EXISTS", "dprl:{victim}:n")).trim(), "0");
});

await redisTest(
  "CONNECT to the Redis of a connected client passed in is refused",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    const client = new Redis(redis.url);
    try {
      await using proxy = await startProxy({ redis: client });
      // The limiter reports the server it is connected to within a second.
      await waitFor(async () => {
        const c = await BufferedConn.connect(proxy.addr);
        try {
          await c.write(connectRequest(`127.0.0.1:${redis.port}`));
          return (await readResponse(c, { method: "CONNECT" })).status === 403;
        } finally {
          c.close();
        }
      }, () => "a 403 for the Redis of the passed-in client");
    } finally {
      client.disconnect();
    }
  },
);

Deno.test("a request head with more than 100 header fields gets 431 and is closed", async () => {
  await using up = await startUpstream();
  await using proxy = await startProxy();
  const fields = (n: number) =>
    Array.from({ length: n }, (_, i) => [`X-Field-${i}`, "x"] as [string, string]);
  const url = up.url("/fixed");
  const ok = await rawExchange(
    proxy.addr,
    request("GET", url, [["Host", up.authority], ...fields(99)]),
  );
  assert.equal(ok.status, 200);
  const res = await refusal(proxy, request("GET", url, [["Host", up.authority], ...fields(100)]));
  assert.equal(res.status, 431);
  assert.equal(text(res.body), "More than 100 header fields\n");
  assert.ok(res.closed);
  assert.equal(up.requests.length, 1);
});

/** Opens `n` connections that sit in the head phase. */
async function idleClients(proxy: TestProxy, n: number): Promise<BufferedConn[]> {
  const conns: BufferedConn[] = [];
  for (let i = 0; i < n; i++) conns.push(await BufferedConn.connect(proxy.addr));
  // One byte each, so that each is surely accepted before the next test step.
  for (const c of conns) await c.write("G");
  return conns;
}

/** Retries a GET until it succeeds: the proxy noticed closed clients. */
async function servesAgain(proxy: TestProxy, up: Upstream): Promise<void> {
  await waitFor(
    async () => (await rawExchange(proxy.addr, get(up.url("/fixed")))).status === 200,
    "service to resume",
  );
}

Deno.test("beyond --max-clients a new connection gets 503 and is closed; service resumes after", async () => {
  await using up = await startUpstream();
  await using proxy = await startProxy({ maxClients: 3 });
  const held = await idleClients(proxy, 3);
  try {
    await waitFor(async () => {
      const res = await refusal(proxy, get(up.url("/fixed")));
      return res.status === 503 && res.closed &&
        text(res.body) === "Too many client connections\n";
    }, "a 503 beyond the cap");
  } finally {
    for (const c of held) c.close();
  }
  await servesAgain(proxy, up);
});

Deno.test("beyond --max-clients-per-ip a new connection from that address gets 503; service resumes after", async () => {
  await using up = await startUpstream();
  await using proxy = await startProxy({ maxClientsPerIp: 2 });
  const held = await idleClients(proxy, 2);
  try {
    const res = await refusal(proxy, get(up.url("/fixed")));
    assert.equal(res.status, 503);
    assert.equal(text(res.body), "Too many connections from 127.0.0.1\n");
    assert.ok(res.closed);
  } finally {
    for (const c of held) c.close();
  }
  await servesAgain(proxy, up);
});

Deno.test("an upstream that half-closes a tunnel frees its slot after the fin timeout", async () => {
  await using up = startScriptedUpstream(async (c) => {
    await c.write("bye");
    await c.conn.closeWrite();
    await c.conn.readToEnd(30_000); // keeps its side open until the proxy closes
  });
  await using proxy = await startProxy({ timeouts: { fin: 300 } });
  const c = await BufferedConn.connect(proxy.addr);
  try {
    await c.write(connectRequest(up.authority));
    assert.equal(await tunnelStatus(c), 200);
    assert.equal(text(await c.readToEnd()), "bye");
    await proxy.waitCount(up.authority, 1);
    // The client keeps its side open and silent: only the fin timeout ends the tunnel.
    await proxy.waitCount(up.authority, 0, 5_000);
    await waitFor(() => up.open === 0, "the upstream connection to close", 5_000);
  } finally {
    c.close();
  }
});

Deno.test("a client that half-closes a tunnel frees its slot after the fin timeout", async () => {
  const done = Promise.withResolvers<void>();
  await using up = startScriptedUpstream(async (c) => {
    await c.conn.readToEnd(30_000); // reads the client's end, then stays open and silent
    await done.promise;
  });
  await using proxy = await startProxy({ timeouts: { fin: 300 } });
  const c = await BufferedConn.connect(proxy.addr);
  try {
    await c.write(connectRequest(up.authority));
    assert.equal(await tunnelStatus(c), 200);
    await c.closeWrite();
    await proxy.waitCount(up.authority, 1);
    await proxy.waitCount(up.authority, 0, 5_000);
    await c.waitClosed(5_000);
  } finally {
    c.close();
    done.resolve();
  }
});
