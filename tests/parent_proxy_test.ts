/**
 * Going out through parent proxies: a second dprl that asks for credentials,
 * and squid; CONNECT and plain HTTP, credentials, a parent at its own limit,
 * a parent that is down or silent, several parents with one failing, and the
 * destination policy applied to the target's name.
 */
import assert from "node:assert/strict";
import { captureLogs, messageText } from "./_helpers/logs.ts";
import { startProxy } from "./_helpers/proxy.ts";
import { closedPort, FIXED_BODY, startEchoUpstream, startUpstream } from "./_helpers/upstream.ts";
import { run, runCli, tempDir } from "./_helpers/spawn.ts";
import { waitFor } from "./_helpers/raw.ts";
import { makeTlsFiles } from "./_helpers/redis_server.ts";

const records = await captureLogs(["dprl"], "debug");
const CI = Deno.env.get("CI") === "true";

function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return run("curl", ["-sS", "--max-time", "20", ...args], Deno.cwd());
}

/** Status and `Proxy-Status` of a curl request through `proxy` (`-p`: a CONNECT tunnel). */
async function answer(proxy: string, url: string, tunnel = false) {
  const res = await curl([
    "-x",
    proxy,
    ...(tunnel ? ["-p"] : []),
    "-o",
    "/dev/null",
    "-D",
    "-",
    "-w",
    "%{http_code} %{http_connect}",
    url,
  ]);
  const status = tunnel
    ? Number(res.stdout.trim().split(" ").at(-1))
    : Number(/(\d{3}) \d+$/.exec(res.stdout.trim())?.[1]);
  return {
    status,
    proxyStatus: /^proxy-status: (.*)\r?$/im.exec(res.stdout)?.[1] ?? "",
    out: res.stdout,
  };
}

/** A raw CONNECT through the proxy on `port` that stays open; resolves once the tunnel is up. */
async function holdTunnel(port: number, target: string): Promise<Deno.Conn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(
    new TextEncoder().encode(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`),
  );
  const buf = new Uint8Array(1024);
  let head = "";
  while (!head.includes("\r\n\r\n")) {
    const n = await conn.read(buf);
    if (n === null) break;
    head += new TextDecoder().decode(buf.subarray(0, n));
  }
  assert.match(head, /^HTTP\/1\.1 200/, head);
  return conn;
}

Deno.test("through a parent dprl that asks for credentials: CONNECT and plain HTTP, the credentials to the parent only", async () => {
  await using up = await startUpstream();
  await using parent = await startProxy({ users: { bob: "pa55word" }, accessLog: true });
  const via = `http://bob:pa55word@127.0.0.1:${parent.addr.port}`;
  await using child = await startProxy({ upstreamProxies: [via], accessLog: true });
  for (const tunnel of [[], ["-p"]]) {
    const res = await curl(["-x", child.url, ...tunnel, up.url("/fixed")]);
    assert.equal(res.stdout, FIXED_BODY, res.stderr);
  }
  assert.equal(up.requests.length, 2);
  for (const r of up.requests) {
    const names = r.fields.map(([n]) => n.toLowerCase());
    assert.ok(!names.includes("proxy-authorization"), "no credentials reach the target");
  }
  const logged = (re: RegExp) => records.map(messageText).some((l) => re.test(l));
  // A tunnel's line comes once the parent has seen both sides close.
  await waitFor(() => logged(/ CONNECT 127\.0\.0\.1:\d+ 200 .*user=bob$/), "the CONNECT line");
  assert.ok(logged(/ GET 127\.0\.0\.1:\d+ 200 .*user=bob$/), "the parent saw bob");
  assert.ok(!logged(/pa55word/), "the password is never logged");
  // The parent answered for the plain request: absolute-form, on a pooled connection.
  const again = await curl(["-x", child.url, up.url("/fixed")]);
  assert.equal(again.stdout, FIXED_BODY);
});

Deno.test("through an https:// parent: TLS to the parent, CONNECT and plain HTTP inside it", async () => {
  await using dir = await tempDir();
  const files = await makeTlsFiles(dir.path);
  await using up = await startUpstream();
  await using parent = await startProxy({
    tls: {
      cert: await Deno.readTextFile(files.serverCert),
      key: await Deno.readTextFile(files.serverKey),
    },
    users: { bob: "pw" },
  });
  await using child = await startProxy({
    upstreamProxies: [`https://bob:pw@127.0.0.1:${parent.addr.port}`],
    upstreamProxyCa: await Deno.readTextFile(files.ca),
  });
  for (const tunnel of [[], ["-p"]]) {
    const res = await curl(["-x", child.url, ...tunnel, up.url("/fixed")]);
    assert.equal(res.stdout, FIXED_BODY, res.stderr);
  }
  await using untrusted = await startProxy({
    upstreamProxies: [`https://bob:pw@127.0.0.1:${parent.addr.port}`],
  });
  const refused = await answer(untrusted.url, up.url("/fixed"), true);
  assert.equal(refused.status, 502, "a parent whose certificate does not verify is not used");
});

Deno.test("the limits are the target's: a host at its limit here, another host still goes through", async () => {
  await using a = startEchoUpstream();
  await using b = startEchoUpstream();
  await using parent = await startProxy({});
  await using child = await startProxy({
    upstreamProxies: [`http://127.0.0.1:${parent.addr.port}`],
    defaultMaxConnectionsPerHost: 1,
  });
  using held = await holdTunnel(child.addr.port, `127.0.0.1:${a.port}`);
  const refused = await answer(child.url, `http://127.0.0.1:${a.port}/`, true);
  assert.equal(refused.status, 500);
  assert.match(refused.proxyStatus, /error=connection_limit_reached/);
  using other = await holdTunnel(child.addr.port, `127.0.0.1:${b.port}`);
  assert.ok(held && other);
});

Deno.test("a parent at its own limit, refusing the credentials, down or silent: 502 or 504 naming it as next-hop", async () => {
  await using echo = startEchoUpstream();
  await using parent = await startProxy({ users: { bob: "pw" }, defaultMaxConnectionsPerHost: 1 });
  const hop = `127.0.0.1:${parent.addr.port}`;
  const target = `http://127.0.0.1:${echo.port}/`;

  await using good = await startProxy({ upstreamProxies: [`http://bob:pw@${hop}`] });
  using held = await holdTunnel(good.addr.port, `127.0.0.1:${echo.port}`);
  const full = await answer(good.url, target, true);
  assert.equal(full.status, 502, full.out);
  assert.match(
    full.proxyStatus,
    new RegExp(`error=destination_unavailable.*next-hop="${hop}"; received-status=500`),
  );
  held.close();

  await using wrong = await startProxy({ upstreamProxies: [`http://bob:nope@${hop}`] });
  for (const tunnel of [true, false]) {
    const denied = await answer(wrong.url, target, tunnel);
    assert.equal(denied.status, 502, denied.out);
    assert.match(denied.proxyStatus, /error=proxy_configuration_error.*received-status=407/);
  }

  const downPort = closedPort();
  await using down = await startProxy({ upstreamProxies: [`http://127.0.0.1:${downPort}`] });
  const refused = await answer(down.url, target, true);
  assert.equal(refused.status, 502);
  assert.match(
    refused.proxyStatus,
    new RegExp(`error=connection_refused.*next-hop="127.0.0.1:${downPort}"`),
  );

  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted: Deno.Conn[] = [];
  (async () => {
    for await (const c of silent) accepted.push(c);
  })();
  try {
    await using slow = await startProxy({
      upstreamProxies: [`http://127.0.0.1:${silent.addr.port}`],
      timeouts: { connect: 300 },
    });
    const timedOut = await answer(slow.url, target, true);
    assert.equal(timedOut.status, 504);
    assert.match(timedOut.proxyStatus, /error=connection_timeout.*next-hop=/);
  } finally {
    silent.close();
    for (const c of accepted) c.close();
  }
});

Deno.test("several parents: a failing one is left out, the traffic goes to the one that is up", async () => {
  await using up = await startUpstream();
  await using parent = await startProxy({ accessLog: true });
  await using child = await startProxy({
    upstreamProxies: [`http://127.0.0.1:${closedPort()}`, `http://127.0.0.1:${parent.addr.port}`],
  });
  const statuses = [];
  for (let i = 0; i < 6; i++) statuses.push((await answer(child.url, up.url("/fixed"))).status);
  assert.ok(statuses.filter((s) => s !== 200).length <= 1, statuses.join(","));
  assert.deepEqual(statuses.slice(1), [200, 200, 200, 200, 200]);
});

Deno.test("--deny-private checks the target by name: a parent resolves it, a private literal or localhost is refused here", async () => {
  await using parent = await startProxy({ accessLog: true });
  await using child = await startProxy({
    upstreamProxies: [`http://127.0.0.1:${parent.addr.port}`],
    denyPrivate: true,
  });
  const before = records.length;
  for (const host of ["127.0.0.1:9", "localhost:9", "app.localhost:9", "10.1.2.3:80"]) {
    const res = await answer(child.url, `http://${host}/`, true);
    assert.equal(res.status, 403, `${host}: ${res.out}`);
    assert.match(res.proxyStatus, /destination_ip_prohibited/);
  }
  const atParent = records.slice(before).filter((r) => r.category.join(".") === "dprl.access");
  assert.equal(atParent.filter((r) => messageText(r).includes(":9 ")).length, 0);
});

Deno.test("squid as the parent: CONNECT and plain HTTP", async () => {
  if (!(await has("squid"))) {
    assert.ok(!CI, "squid is installed by .ci/run");
    return console.warn("skipped: squid is not installed");
  }
  await using up = await startUpstream();
  await using squid = await startSquid();
  await using child = await startProxy({ upstreamProxies: [`http://127.0.0.1:${squid.port}`] });
  for (const tunnel of [[], ["-p"]]) {
    const res = await curl(["-x", child.url, ...tunnel, up.url("/fixed")]);
    assert.equal(res.stdout, FIXED_BODY, res.stderr);
  }
  assert.equal(up.requests.length, 2);
});

Deno.test("cli: --upstream-proxy must be an http(s) URL; the error never shows the password", async () => {
  const bad = await runCli(["--upstream-proxy", "socks5://u:hunter2@127.0.0.1:1080"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--upstream-proxy: .*must be an http:\/\/ or https:\/\/ URL/);
  assert.ok(!(bad.stdout + bad.stderr).includes("hunter2"), bad.stderr);
  assert.match(bad.stderr, /u:\*\*\*@/);
});

async function has(cmd: string): Promise<boolean> {
  try {
    const out = await new Deno.Command("sh", { args: ["-c", `command -v ${cmd}`], stdout: "null" })
      .output();
    return out.success;
  } catch {
    return false;
  }
}

/** A squid of its own on a free port: no cache, CONNECT to any port, from loopback only. */
async function startSquid(): Promise<{ port: number } & AsyncDisposable> {
  const dir = await tempDir();
  await Deno.chmod(dir.path, 0o777);
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  await Deno.writeTextFile(
    `${dir.path}/squid.conf`,
    [
      `http_port 127.0.0.1:${port}`,
      "acl localnet src 127.0.0.0/8",
      "http_access allow localnet",
      "http_access deny all",
      "cache deny all",
      "cache_mem 8 MB",
      "access_log none",
      `cache_log ${dir.path}/cache.log`,
      `pid_filename ${dir.path}/squid.pid`,
      `coredump_dir ${dir.path}`,
      "workers 1",
      "shutdown_lifetime 0 seconds",
    ].join("\n") + "\n",
  );
  const child = new Deno.Command("squid", {
    args: ["-f", `${dir.path}/squid.conf`, "-N", "-d0"],
    stdout: "null",
    stderr: "null",
  }).spawn();
  await waitFor(
    async () => {
      try {
        (await Deno.connect({ hostname: "127.0.0.1", port })).close();
        return true;
      } catch {
        return false;
      }
    },
    "squid listening",
    30_000,
  );
  return {
    port,
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.status;
      await dir[Symbol.asyncDispose]();
    },
  };
}
