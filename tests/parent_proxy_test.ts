// Going out through parent proxies: a real squid and a second dprl that asks
// for credentials, reached by CONNECT and by plain HTTP with curl; the
// parent's credentials reach the parent and never the target (which records
// every header) nor a log line; a parent at its own limit, a parent that is
// down or silent, several parents with one failing, `via` rules, and the
// limits and destination rules of the target host.
import assert from "node:assert/strict";
import type { LogRecord } from "@logtape/logtape";
import { startProxy, type TestProxy } from "./_helpers/proxy.ts";
import { startSquid } from "./_helpers/squid.ts";
import { blackHole, closedPort, startUpstream, type Upstream } from "./_helpers/upstream.ts";
import { captureLogs, messageText } from "./_helpers/logs.ts";
import { startRecordingUpstream } from "./_helpers/recording_upstream.ts";
import { waitFor } from "./_helpers/raw.ts";

const PARENT_AUTH = "pu:parent-secret";
const SECRET_B64 = btoa(PARENT_AUTH);

/** What curl got: the status of the last response head, and every head as text. */
interface Got {
  status: number;
  heads: string;
  body: string;
}

/** One GET of `url` through `proxy` with curl; `tunnel` sends it in a CONNECT tunnel. */
async function curl(
  proxy: string,
  url: string,
  tunnel = false,
  extra: string[] = [],
): Promise<Got> {
  const args = [
    "-s",
    "-i",
    "--max-time",
    "20",
    "-x",
    proxy,
    ...(tunnel ? ["-p"] : []),
    ...extra,
    url,
  ];
  const out = await new Deno.Command("curl", { args, stdout: "piped", stderr: "null" }).output();
  const text = new TextDecoder().decode(out.stdout);
  const parts = text.split(/\r\n\r\n/);
  const heads = parts.filter((p) => /^HTTP\/1\.[01] \d{3}/.test(p));
  const last = heads.at(-1) ?? "";
  return {
    status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(last)?.[1] ?? 0),
    heads: heads.join("\n\n"),
    body: parts.slice(parts.indexOf(last) + 1).join("\r\n\r\n"),
  };
}

/** The `Proxy-Status` field of the last head. */
function proxyStatus(got: Got): string {
  const last = got.heads.split("\n\n").at(-1) ?? "";
  return /^proxy-status: (.*)$/im.exec(last)?.[1]?.trim() ?? "";
}

/** Every header the target was sent, as one text, for looking for credentials. */
function seenFields(target: Upstream): string {
  return target.requests.map((r) => r.fields.map(([n, v]) => `${n}: ${v}`).join("\n")).join("\n");
}

/** A dprl that asks for {@linkcode PARENT_AUTH}, as a parent. */
function startDprlParent(limit = 0): Promise<TestProxy> {
  const [user, password] = PARENT_AUTH.split(":");
  return startProxy({ users: { [user]: password }, defaultMaxConnectionsPerHost: limit });
}

/** `http://user:password@host:port` of a parent at `origin`. */
function withAuth(origin: string, auth = PARENT_AUTH): string {
  return origin.replace("http://", `http://${auth}@`);
}

/** A parent's origin from a test proxy's URL. */
function originOf(p: TestProxy): string {
  return `http://127.0.0.1:${p.addr.port}`;
}

Deno.test("squid as the parent: CONNECT and plain HTTP, its credentials to squid only", async () => {
  const logs: LogRecord[] = await captureLogs(["dprl"], "debug");
  await using squid = await startSquid({ auth: PARENT_AUTH });
  await using target = await startUpstream();
  await using child = await startProxy({
    upstreamProxy: [withAuth(squid.origin)],
    accessLog: true,
  });

  const plain = await curl(child.url, target.url("/fixed"));
  assert.equal(plain.status, 200, plain.heads);
  assert.match(plain.body, /hello from upstream/);
  const tunneled = await curl(child.url, target.url("/fixed"), true);
  assert.equal(tunneled.status, 200, tunneled.heads);
  assert.match(tunneled.heads, /200 Connection established/i);

  // squid says Via on the plain request: it went through squid.
  assert.equal(target.requests.length, 2);
  assert.match(seenFields(target), /^via: .*squid/im);
  assert.doesNotMatch(seenFields(target), /proxy-authorization|parent-secret/i);
  assert.doesNotMatch(seenFields(target), new RegExp(SECRET_B64));
  const logged = logs.map(messageText).join("\n");
  assert.match(logged, /via http:\/\/127\.0\.0\.1/);
  // The access log names the parent of each exchange and tunnel (a tunnel's line comes at its end).
  for (const method of ["GET", "CONNECT"]) {
    const line = new RegExp(
      `${method} ${target.authority} 200 .* via=127\\.0\\.0\\.1:${squid.port}`,
    );
    await waitFor(() => logs.some((r) => line.test(messageText(r))), `${line}`);
  }

  // squid's own error page (a name it cannot resolve) is squid's refusal, not the target's answer.
  for (const tunnel of [false, true]) {
    const got = await curl(child.url, "http://no-such-host.invalid:8080/", tunnel);
    assert.equal(got.status, 502, got.heads);
    assert.match(proxyStatus(got), new RegExp(`next-hop="127\\.0\\.0\\.1:${squid.port}"`));
    assert.match(proxyStatus(got), /received-status=5\d\d/);
  }

  // A wrong password: squid's 407 is dprl's 502, naming squid as the next hop.
  await using wrong = await startProxy({ upstreamProxy: [withAuth(squid.origin, "pu:wrong")] });
  for (const tunnel of [false, true]) {
    const got = await curl(wrong.url, target.url("/fixed"), tunnel);
    assert.equal(got.status, 502, got.heads);
    const status = proxyStatus(got);
    assert.match(status, /^dprl; error=http_response_status_code/);
    assert.match(status, new RegExp(`next-hop="127\\.0\\.0\\.1:${squid.port}"`));
    assert.match(status, /received-status=407/);
    assert.doesNotMatch(got.heads, /Proxy-Authenticate/i);
  }
  // No log line of either proxy holds a password, in clear or in Basic.
  const all = logs.map(messageText).join("\n");
  for (const secret of ["parent-secret", "pu:wrong", SECRET_B64, btoa("pu:wrong")]) {
    assert.ok(!all.includes(secret), secret);
  }
});

Deno.test("a dprl with users as the parent: CONNECT and plain HTTP, its credentials to it only", async () => {
  await using parent = await startDprlParent();
  await using target = await startUpstream();
  await using child = await startProxy({ upstreamProxy: [withAuth(originOf(parent))] });

  for (const tunnel of [false, true]) {
    const got = await curl(child.url, target.url("/fixed"), tunnel);
    assert.equal(got.status, 200, got.heads);
    assert.match(got.body, /hello from upstream/);
  }
  assert.equal(target.requests.length, 2);
  assert.doesNotMatch(seenFields(target), /proxy-authorization|parent-secret/i);
  assert.doesNotMatch(seenFields(target), new RegExp(SECRET_B64));

  // A request body goes through the parent too, with the parent's credentials in the head only.
  for (const tunnel of [false, true]) {
    const posted = await curl(child.url, target.url("/echo"), tunnel, ["--data-binary", "a=1&b=2"]);
    assert.equal(posted.status, 200, posted.heads);
    assert.equal(target.requests.at(-1)?.body, "a=1&b=2");
  }
  assert.doesNotMatch(seenFields(target), /proxy-authorization|parent-secret/i);

  // The target's own error passes through both proxies as it is.
  await using busy = startRecordingUpstream({ status: 503, retryAfter: "1" });
  const answered = await curl(child.url, busy.url);
  assert.equal(answered.status, 503, answered.heads);
  assert.match(answered.heads, /retry-after: 1/i);
  assert.doesNotMatch(answered.heads, /next-hop/);

  // Without the credentials the parent refuses: 502, the parent's 407 named.
  await using bare = await startProxy({ upstreamProxy: [originOf(parent)] });
  for (const tunnel of [false, true]) {
    const got = await curl(bare.url, target.url("/fixed"), tunnel);
    assert.equal(got.status, 502, got.heads);
    assert.match(proxyStatus(got), /received-status=407/);
  }
});

Deno.test("a parent at its own limit: the client gets 502 naming the parent and its status", async () => {
  await using parent = await startDprlParent(1);
  await using target = await startUpstream();
  await using child = await startProxy({ upstreamProxy: [withAuth(originOf(parent))] });

  // One tunnel held open through both proxies fills the parent's one slot.
  const held = await Deno.connect({ hostname: "127.0.0.1", port: child.addr.port });
  try {
    await held.write(
      new TextEncoder().encode(
        `CONNECT ${target.authority} HTTP/1.1\r\nHost: ${target.authority}\r\n\r\n`,
      ),
    );
    await parent.waitCount(target.authority, 1);
    // By CONNECT, and by plain HTTP: the parent's refusal names itself (Proxy-Status error).
    for (const tunnel of [true, false]) {
      const got = await curl(child.url, target.url("/fixed"), tunnel);
      assert.equal(got.status, 502, got.heads);
      const status = proxyStatus(got);
      assert.match(status, /^dprl; error=http_response_status_code/);
      assert.match(status, new RegExp(`next-hop="127\\.0\\.0\\.1:${parent.addr.port}"`));
      assert.match(status, /received-status=500/); // the parent's reject status
    }
    assert.equal(target.requests.length, 0);
  } finally {
    held.close();
  }
});

Deno.test("a parent that is down gives 502 at once, a silent one 504 within the connect timeout", async () => {
  await using target = await startUpstream();
  const down = closedPort();
  await using child = await startProxy({
    upstreamProxy: [`http://127.0.0.1:${down}`],
    timeouts: { connect: 60_000 },
  });
  for (const tunnel of [false, true]) {
    const got = await curl(child.url, target.url("/fixed"), tunnel);
    // A refused connect, not the connect timeout (which would be 504).
    assert.equal(got.status, 502, got.heads);
    assert.match(proxyStatus(got), /error=destination_unavailable/);
    assert.match(proxyStatus(got), new RegExp(`next-hop="127\\.0\\.0\\.1:${down}"`));
  }

  using hole = await blackHole();
  await using slow = await startProxy({
    upstreamProxy: [`http://${hole.authority}`],
    timeouts: { connect: 500 },
  });
  const got = await curl(slow.url, target.url("/fixed"), true);
  assert.equal(got.status, 504, got.heads);
  assert.match(proxyStatus(got), /error=connection_timeout/);
  assert.match(proxyStatus(got), new RegExp(`next-hop="${hole.authority}"`));
  assert.equal(target.requests.length, 0);
});

/** A listener that notes when it accepts each connection and closes it at once. */
function startSlammer(): { port: number; acceptedAt: number[] } & Disposable {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const acceptedAt: number[] = [];
  (async () => {
    for await (const conn of listener) {
      acceptedAt.push(performance.now());
      conn.close();
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    acceptedAt,
    [Symbol.dispose]: () => listener.close(),
  };
}

Deno.test("several parents: the failing one is skipped and backed off, the healthy one serves", async () => {
  await using parent = await startDprlParent();
  await using target = await startUpstream();
  using failing = startSlammer();
  const down = closedPort();
  await using child = await startProxy({
    // The failing ones first: with nothing open, the first listed is tried first.
    upstreamProxy: [
      `http://127.0.0.1:${failing.port}`,
      `http://127.0.0.1:${down}`,
      withAuth(originOf(parent)),
    ],
  });
  const rounds = 6;
  for (let i = 0; i < rounds; i++) {
    const got = await curl(child.url, target.url("/fixed"), i % 2 === 0);
    assert.equal(got.status, 200, got.heads);
  }
  assert.equal(target.requests.length, rounds);
  // Tried, then skipped for 1 s, then 2 s...: never sooner, however slow the machine.
  const at = failing.acceptedAt;
  assert.ok(at.length >= 1, "the failing parent was tried");
  for (let i = 1; i < at.length; i++) {
    // (5 ms of slack for the two clocks' granularity.)
    assert.ok(at[i] - at[i - 1] >= 1000 * 2 ** (i - 1) - 5, `tried at ${at.join(", ")}`);
  }

  // The admin API and the metrics name each parent by its origin, never its credentials.
  const admin = child.proxy.adminHandler();
  const status = await (await admin(new Request("http://admin/api/status"))).json();
  assert.deepEqual(
    status.parents.map((p: { url: string }) => p.url),
    [`http://127.0.0.1:${failing.port}`, `http://127.0.0.1:${down}`, originOf(parent)],
  );
  // The pooled plain-HTTP connections stay open through the healthy parent.
  assert.ok(status.parents[2].open >= 1, JSON.stringify(status.parents));
  assert.equal(status.parents[2].backedOffUntil, null);
  const metrics = await (await admin(new Request("http://admin/metrics"))).text();
  assert.match(
    metrics,
    new RegExp(`dprl_parent_open_connections\\{parent="${originOf(parent)}"\\} [1-9]`),
  );
  assert.match(metrics, /dprl_parent_backed_off\{parent="http:\/\/127\.0\.0\.1:\d+"\} [01]/);
  for (const text of [JSON.stringify(status), metrics]) {
    assert.doesNotMatch(text, /parent-secret/);
    assert.doesNotMatch(text, new RegExp(SECRET_B64));
  }
});

Deno.test("least open connections first: two tunnels held go one through each parent", async () => {
  await using a = await startDprlParent();
  await using b = await startDprlParent();
  await using target = await startUpstream();
  await using child = await startProxy({
    upstreamProxy: [withAuth(originOf(a)), withAuth(originOf(b))],
  });
  const held: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: child.addr.port });
      held.push(conn);
      await conn.write(
        new TextEncoder().encode(
          `CONNECT ${target.authority} HTTP/1.1\r\nHost: ${target.authority}\r\n\r\n`,
        ),
      );
      await child.waitCount(target.authority, i + 1);
    }
    await a.waitCount(target.authority, 1);
    await b.waitCount(target.authority, 1);
  } finally {
    for (const conn of held) conn.close();
  }
});

Deno.test("via rules: direct for one host, a named parent for another, the default for the rest", async () => {
  await using squid = await startSquid();
  await using parent = await startDprlParent();
  await using direct = await startUpstream();
  await using viaSquid = await startUpstream();
  await using other = await startUpstream();
  await using child = await startProxy({
    upstreamProxy: [withAuth(originOf(parent))],
    rules: {
      hosts: {
        [direct.authority]: { via: "direct" },
        [viaSquid.authority]: { via: squid.origin },
      },
    },
  });
  for (const up of [direct, viaSquid, other]) {
    const got = await curl(child.url, up.url("/fixed"));
    assert.equal(got.status, 200, got.heads);
  }
  assert.doesNotMatch(seenFields(direct), /^via:/im);
  assert.match(seenFields(viaSquid), /^via: .*squid/im);
  // The default parent, a dprl, holds the pooled connection to the rest only.
  await parent.waitCount(other.authority, 1);
  assert.equal(await parent.proxy.activeConnectionsForHost(direct.authority), 0);
  assert.equal(await parent.proxy.activeConnectionsForHost(viaSquid.authority), 0);
});

Deno.test("through a parent, the target's limit and destination rules still apply", async () => {
  await using parent = await startDprlParent();
  await using target = await startUpstream();
  await using second = await startUpstream();
  await using child = await startProxy({
    upstreamProxy: [withAuth(originOf(parent))],
    hostLimits: { [target.authority]: 1 },
    deny: ["*.blocked.test"],
  });
  const held = await Deno.connect({ hostname: "127.0.0.1", port: child.addr.port });
  try {
    await held.write(
      new TextEncoder().encode(
        `CONNECT ${target.authority} HTTP/1.1\r\nHost: ${target.authority}\r\n\r\n`,
      ),
    );
    await child.waitCount(target.authority, 1);
    // The target's one slot is held: refused here, by dprl's own limit.
    const refused = await curl(child.url, target.url("/fixed"), true);
    assert.equal(refused.status, 500, refused.heads);
    assert.match(proxyStatus(refused), /error=connection_limit_reached/);
    assert.doesNotMatch(proxyStatus(refused), /next-hop/);
    // Another host through the same parent is not held back.
    assert.equal((await curl(child.url, second.url("/fixed"), true)).status, 200);
  } finally {
    held.close();
  }
  const denied = await curl(child.url, "http://a.blocked.test/", true);
  assert.equal(denied.status, 403, denied.heads);
});

Deno.test("--deny-private through a parent: the name is not resolved here, the parent resolves it", async () => {
  await using parent = await startDprlParent();
  await using child = await startProxy({
    upstreamProxy: [withAuth(originOf(parent))],
    denyPrivate: true,
  });
  // The parent on 127.0.0.1 is used (it was configured); private targets are not.
  for (const host of ["127.0.0.1:9", "localhost:9", "[::1]:9", "app.localhost:9"]) {
    const got = await curl(child.url, `http://${host}/`, true);
    assert.equal(got.status, 403, `${host}: ${got.heads}`);
    assert.match(proxyStatus(got), /destination_ip_prohibited/);
  }
  // A name that does not resolve reaches the parent, which cannot resolve it:
  // its answer is named, not a dns_error of this proxy.
  for (const tunnel of [true, false]) {
    const got = await curl(child.url, "http://no-such-host.invalid:8080/", tunnel);
    assert.equal(got.status, 502, got.heads);
    const status = proxyStatus(got);
    assert.match(status, new RegExp(`next-hop="127\\.0\\.0\\.1:${parent.addr.port}"`));
    assert.match(status, /received-status=502/);
  }
});
