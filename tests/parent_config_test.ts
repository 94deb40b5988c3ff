// Parent proxies as configured: a rule's `via` (checked, canonical, looked
// up), parent URLs (parsed, their passwords in no message), and
// `--upstream-proxy` from the flag, its variable and the config file, run
// through a real CLI to a second dprl that asks for credentials.
import assert from "node:assert/strict";
import { RuleTable } from "../lib/limit/rules/rule_table.ts";
import { canonicalRules, normalizeRules } from "../lib/limit/rules/rules.ts";
import { diffRules } from "../lib/limit/rules/diff.ts";
import { parseParentUrl, redactUrl } from "../lib/proxy/parent_url.ts";
import { ParentProxies } from "../lib/proxy/parent_proxy.ts";
import { ProxyRateLimiter } from "../mod.ts";
import { startProxy } from "./_helpers/proxy.ts";
import { runCli, startCli, tempDir } from "./_helpers/spawn.ts";
import { closedPort, startUpstream, testCertificates } from "./_helpers/upstream.ts";

Deno.test("parent URLs: origin, default ports, Basic credentials; a password in no message", () => {
  const url = parseParentUrl("http://us%40er:p%3Ass@Egress.Example:3128");
  assert.equal(url.origin, "http://egress.example:3128");
  assert.equal(url.authority, "egress.example:3128");
  assert.equal(url.authorization, `Basic ${btoa("us@er:p:ss")}`);
  assert.equal(parseParentUrl("https://[::1]").authority, "[::1]:443");
  assert.equal(parseParentUrl("http://p.example").port, 80);
  assert.equal(parseParentUrl("http://p.example").authorization, undefined);
  for (const bad of ["socks5://u:hunter2@p:1080", "http://u:hunter2@p:3128/path", "u:hunter2@p"]) {
    assert.throws(() => parseParentUrl(bad), (err: Error) => {
      assert.ok(err instanceof RangeError);
      assert.doesNotMatch(err.message, /hunter2/);
      return true;
    }, bad);
  }
  assert.equal(redactUrl("http://u:hunter2@p:3128"), "http://***@p:3128");
  assert.throws(() => new ProxyRateLimiter({ upstreamProxy: ["ftp://u:hunter2@p"] }), RangeError);
});

Deno.test("rules: via is direct or parent URLs without credentials, by host, group or default", () => {
  const table = new RuleTable({
    default: { via: "http://egress.example:3128" },
    hosts: {
      "direct.example": { via: "direct" },
      "two.example": { limit: 2, via: ["http://a.example:3128", "https://B.example"] },
    },
    groups: [{ name: "g", match: ["*.g.example"], limit: 5, via: "direct" }],
  });
  assert.equal(table.lookup("direct.example").via, "direct");
  assert.equal(table.lookup("two.example").via, "http://a.example:3128,https://b.example:443");
  assert.equal(table.lookup("x.g.example").via, "direct");
  assert.equal(table.lookup("other.example").via, "http://egress.example:3128");
  assert.deepEqual(canonicalRules({ hosts: { "a.example": { via: "http://P.example:80" } } }), {
    hosts: { "a.example": { via: "http://p.example:80" } },
  });
  assert.deepEqual(diffRules({ default: { via: "direct" } }, {}), [
    { rule: "default", a: "default (via direct)", b: undefined },
  ]);
  const refused: [unknown, RegExp][] = [
    ["http://u:hunter2@p.example", /hosts\.a\.example\.via must not hold credentials/],
    ["socks5://p.example", /hosts\.a\.example\.via must be direct or proxy URLs/],
    [[], /hosts\.a\.example\.via must be direct or proxy URLs/],
    [7, /hosts\.a\.example\.via must be direct or proxy URLs/],
  ];
  for (const [via, message] of refused) {
    assert.throws(() => normalizeRules({ hosts: { "a.example": { via } } }), (err: Error) => {
      assert.match(err.message, message);
      assert.doesNotMatch(err.message, /hunter2/);
      return true;
    });
  }
});

Deno.test("a parent that fails to connect is skipped 1 s, doubling to 30 s, until it connects", () => {
  const [p] = new ParentProxies(["http://p.example:3128"]).defaults;
  const t = 1_000_000;
  assert.equal(p.backedOff(t), false);
  const waits = [];
  for (let i = 0; i < 7; i++) {
    p.failed(t);
    waits.push(p.skipUntil - t);
  }
  assert.deepEqual(waits, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
  assert.equal(p.backedOff(t + 29_999), true);
  assert.equal(p.backedOff(t + 30_000), false);
  p.succeeded();
  assert.equal(p.backedOff(t), false);
  p.failed(t);
  assert.equal(p.skipUntil - t, 1_000);
});

Deno.test("a rule's parent takes the credentials of the --upstream-proxy of the same origin", () => {
  const parents = new ParentProxies(["http://u:p@a.example:3128", "http://b.example:3128"]);
  assert.equal(parents.defaults.length, 2);
  assert.deepEqual(parents.route("direct"), []);
  assert.equal(parents.route(undefined), parents.defaults);
  const [a] = parents.route("http://a.example:3128");
  assert.deepEqual(a.authLines, [`Proxy-Authorization: Basic ${btoa("u:p")}`]);
  const [c] = parents.route("http://c.example:3128");
  assert.deepEqual(c.authLines, []);
  assert.equal(parents.all.length, 3);
});

Deno.test("CLI: --upstream-proxy from its variable and from the config file, through a real parent", async () => {
  await using parent = await startProxy({ users: { pu: "pp" } });
  await using target = await startUpstream();
  await using dir = await tempDir();
  const parentUrl = `http://pu:pp@127.0.0.1:${parent.addr.port}`;
  await Deno.writeTextFile(`${dir.path}/dprl.yaml`, `upstream-proxy:\n  - ${parentUrl}\n`);
  const ways: [string[], Record<string, string>][] = [
    [[], { DPRL_UPSTREAM_PROXY: `http://127.0.0.1:1,${parentUrl}` }],
    [["--config", `${dir.path}/dprl.yaml`], {}],
  ];
  for (const [args, env] of ways) {
    await using cli = startCli(["--port", "0", "--hostname", "127.0.0.1", ...args], env);
    const m = await cli.waitStderr(/bound to [0-9.]+:([0-9]+)/);
    assert.match(cli.stderr, /Going out through .*127\.0\.0\.1/);
    assert.doesNotMatch(cli.stderr, /pp@|pu:pp/);
    const out = await new Deno.Command("curl", {
      args: ["-s", "--max-time", "20", "-x", `http://127.0.0.1:${m[1]}`, target.url("/fixed")],
      stdout: "piped",
      stderr: "null",
    }).output();
    assert.match(new TextDecoder().decode(out.stdout), /hello from upstream/, cli.transcript);
  }
  // A bad URL is a usage error naming the flag or the variable, without its password.
  const bad = await Promise.all([
    runCli(["--upstream-proxy", "ftp://u:hunter2@p:21"]),
    runCli([], { DPRL_UPSTREAM_PROXY: "http://u:hunter2@p:21/x" }),
  ]);
  assert.equal(bad[0].code, 2, bad[0].transcript);
  assert.match(bad[0].stderr, /--upstream-proxy http:\/\/\*\*\*@|--upstream-proxy ftp:\/\/\*\*\*@/);
  assert.equal(bad[1].code, 2, bad[1].transcript);
  assert.match(bad[1].stderr, /DPRL_UPSTREAM_PROXY/);
  for (const r of bad) assert.doesNotMatch(r.stderr, /hunter2/);
});

/** A TLS front on 127.0.0.1 that relays each connection to `port` (a parent that speaks TLS). */
function startTlsFront(port: number, tls: { cert: string; key: string }): Deno.TlsListener {
  const listener = Deno.listenTls({ hostname: "127.0.0.1", port: 0, ...tls });
  (async () => {
    for await (const conn of listener) {
      Deno.connect({ hostname: "127.0.0.1", port }).then((back) =>
        Promise.all([conn.readable.pipeTo(back.writable), back.readable.pipeTo(conn.writable)])
      ).catch(() => {});
    }
  })().catch(() => {});
  return listener;
}

Deno.test("CLI: an https:// parent is reached over TLS, its certificate checked (DENO_CERT)", async () => {
  await using parent = await startProxy({ users: { pu: "pp" } });
  await using target = await startUpstream();
  await using dir = await tempDir();
  const certs = await testCertificates();
  await Deno.writeTextFile(`${dir.path}/ca.pem`, certs.ca);
  const front = startTlsFront(parent.addr.port, certs);
  try {
    const port = (front.addr as Deno.NetAddr).port;
    const parentUrl = `https://pu:pp@127.0.0.1:${port}`;
    const ways: [Record<string, string>, boolean][] = [
      [{ DENO_CERT: `${dir.path}/ca.pem` }, true],
      [{}, false], // not trusted: no way through
    ];
    for (const [env, trusted] of ways) {
      await using cli = startCli(
        ["--port", "0", "--hostname", "127.0.0.1", "--upstream-proxy", parentUrl],
        env,
      );
      const m = await cli.waitStderr(/bound to [0-9.]+:([0-9]+)/);
      for (const tunnel of [false, true]) {
        const out = await new Deno.Command("curl", {
          args: [
            "-s",
            "-o",
            "/dev/null",
            "-w",
            tunnel ? "%{http_connect} %{http_code}" : "%{http_code}",
            "--max-time",
            "20",
            "-x",
            `http://127.0.0.1:${m[1]}`,
            ...(tunnel ? ["-p"] : []),
            target.url("/fixed"),
          ],
          stdout: "piped",
          stderr: "null",
        }).output();
        const code = new TextDecoder().decode(out.stdout);
        const expected = trusted ? "200" : "502";
        assert.equal(code, tunnel ? (trusted ? "200 200" : "502 000") : expected, cli.transcript);
      }
    }
    assert.equal(target.requests.length, 2);
  } finally {
    front.close();
  }
});

Deno.test("a parent that is this proxy's own address is refused at start: it would loop", async () => {
  for (const host of ["127.0.0.1", "localhost"]) {
    const port = closedPort();
    const proxy = new ProxyRateLimiter({
      port,
      hostname: "127.0.0.1",
      upstreamProxy: [`http://u:hunter2@${host}:${port}`],
    });
    await assert.rejects(() => proxy.start(), (err: Error) => {
      assert.match(err.message, /Parent proxy http:\/\/.*is this proxy or its Redis/);
      assert.doesNotMatch(err.message, /hunter2/);
      return true;
    });
    assert.equal(proxy.proxyUrl, null);
  }
});
