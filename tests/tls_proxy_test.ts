/**
 * HTTPS to the proxy: the proxy port over TLS with real clients (curl,
 * Python's urllib3, undici, Deno's fetch, Go's net/http), client
 * certificates, handshakes that fail, and reloads of the certificate.
 */
import assert from "node:assert/strict";
import { ProxyRateLimiter, type TlsPem } from "../mod.ts";
import { captureLogs, messageText } from "./_helpers/logs.ts";
import { startProxy } from "./_helpers/proxy.ts";
import { FIXED_BODY, startEchoUpstream, startUpstream } from "./_helpers/upstream.ts";
import { makeTlsFiles, type TlsFiles } from "./_helpers/redis_server.ts";
import { run, runCli, startCli, tempDir } from "./_helpers/spawn.ts";
import { waitFor } from "./_helpers/raw.ts";

const records = await captureLogs(["dprl"], "debug");
const CI = Deno.env.get("CI") === "true";

/** Two throwaway CAs, each with a server and a client certificate, made once for the file. */
const dir = await Deno.makeTempDir({ prefix: "dprl_tls_test_" });
await Promise.all(["a", "b"].map((d) => Deno.mkdir(`${dir}/${d}`)));
const [A, B] = await Promise.all([makeTlsFiles(`${dir}/a`), makeTlsFiles(`${dir}/b`)]);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

async function pem(files: TlsFiles, clientCa = false): Promise<TlsPem> {
  return {
    cert: await Deno.readTextFile(files.serverCert),
    key: await Deno.readTextFile(files.serverKey),
    clientCa: clientCa ? await Deno.readTextFile(files.ca) : undefined,
  };
}

/** Whether the proxy port's certificate verifies against `files`'s CA (a handshake of Deno's own). */
async function servedBy(port: number, files: TlsFiles): Promise<boolean> {
  const caCerts = [await Deno.readTextFile(files.ca)];
  const conn = await Deno.connectTls({ hostname: "127.0.0.1", port, caCerts });
  try {
    await conn.handshake();
    return true;
  } catch {
    return false;
  } finally {
    conn.close();
  }
}

function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return run("curl", ["-sS", "--max-time", "20", ...args], Deno.cwd());
}

/** Whether an access log line matches `re`. */
function accessLogged(re: RegExp): boolean {
  return records.some((r) => r.category.join(".") === "dprl.access" && re.test(messageText(r)));
}

/** The value of an unlabelled counter in the proxy's `/metrics`. */
async function counter(proxy: ProxyRateLimiter, name: string): Promise<number> {
  const text = await (await proxy.adminHandler()(new Request("http://admin/metrics"))).text();
  const m = new RegExp(`^${name} (\\d+)$`, "m").exec(text);
  assert.ok(m, `${name} in /metrics`);
  return Number(m[1]);
}

Deno.test("curl through an https:// proxy: plain HTTP and CONNECT, proxy credentials inside TLS", async () => {
  await using up = await startUpstream();
  await using p = await startProxy({
    tls: await pem(A),
    users: { alice: "s3cret" },
    accessLog: true,
  });
  assert.equal(new URL(p.url).protocol, "https:");
  const base = ["--proxy", p.url, "--proxy-cacert", A.ca, "--proxy-user", "alice:s3cret"];
  for (const tunnel of [[], ["--proxytunnel"]]) {
    const res = await curl([...base, ...tunnel, up.url("/fixed")]);
    assert.equal(res.code, 0, res.stderr);
    assert.equal(res.stdout, FIXED_BODY);
  }
  assert.equal(up.requests.length, 2);
  for (const r of up.requests) {
    assert.ok(!r.fields.some(([name]) => name.toLowerCase() === "proxy-authorization"));
  }
  // Each line comes once the proxy has seen its exchange or tunnel end.
  await waitFor(() => accessLogged(/ GET .* 200 .* user=alice$/), "the GET line with alice");
  await waitFor(
    () => accessLogged(/ CONNECT .* 200 .* user=alice$/),
    "the CONNECT line with alice",
  );
  const refused = await curl([
    "--proxy",
    p.url,
    "--proxy-cacert",
    A.ca,
    "-o",
    "/dev/null",
    "-w",
    "%{http_code}",
    up.url("/fixed"),
  ]);
  assert.equal(refused.stdout, "407", "no credentials: 407 inside TLS");
});

Deno.test("Python's urllib3, undici, Deno's fetch and Go's net/http use an https:// proxy", async (t) => {
  await using up = await startUpstream();
  await using p = await startProxy({ tls: await pem(A) });
  const target = up.url("/fixed");

  await t.step("Deno fetch with createHttpClient", async () => {
    const client = Deno.createHttpClient({
      proxy: { url: p.url },
      caCerts: [await Deno.readTextFile(A.ca)],
    });
    try {
      const res = await fetch(target, { client });
      assert.equal(await res.text(), FIXED_BODY);
    } finally {
      client.close();
    }
  });

  await t.step("undici ProxyAgent", async () => {
    // deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
    const { ProxyAgent, fetch: undiciFetch } = await import("npm:undici@8.14.0");
    // By name: the TLS of Deno's node:tls, which undici runs on, takes no IP address as SNI.
    const uri = `https://localhost:${p.addr.port}`;
    const agent = new ProxyAgent({ uri, proxyTls: { ca: await Deno.readTextFile(A.ca) } });
    try {
      const res = await undiciFetch(target, { dispatcher: agent });
      assert.equal(await res.text(), FIXED_BODY);
    } finally {
      await agent.close();
    }
  });

  await t.step("Python urllib3 ProxyManager", async () => {
    const script = [
      "import ssl, sys, urllib3",
      "ctx = ssl.create_default_context(cafile=sys.argv[2])",
      "pm = urllib3.ProxyManager(sys.argv[1], proxy_ssl_context=ctx, ca_certs=sys.argv[2])",
      "sys.stdout.write(pm.request('GET', sys.argv[3]).data.decode())",
    ].join("\n");
    const python = await pythonWithUrllib3();
    if (!python && !CI) return console.warn("skipped: no python3 with urllib3");
    assert.ok(python, "a python3 with urllib3 (.ci/run installs python3-urllib3)");
    const res = await run(python, ["-c", script, p.url, A.ca, target], Deno.cwd());
    assert.equal(res.stdout, FIXED_BODY, res.transcript);
  });

  await t.step("Go net/http", async () => {
    if (!CI && !(await which("go"))) return console.warn("skipped: go is not installed");
    await using tmp = await tempDir();
    await Deno.writeTextFile(`${tmp.path}/main.go`, GO_CLIENT);
    const res = await run("go", ["run", "main.go", A.ca, p.url, target], tmp.path, {
      GOCACHE: `${tmp.path}/cache`,
      GOPATH: `${tmp.path}/gopath`,
      GO111MODULE: "off",
      GOFLAGS: "",
      HOME: tmp.path,
    });
    assert.equal(res.stdout, FIXED_BODY, res.transcript);
  });
});

Deno.test("client certificates: none, no handshake and nothing proxied; one, and its name is the user", async () => {
  await using up = await startUpstream();
  await using p = await startProxy({ tls: await pem(A, true), accessLog: true });
  const failures = await counter(p.proxy, "dprl_tls_handshake_failures_total");
  const base = ["--proxy", p.url, "--proxy-cacert", A.ca];
  const without = await curl([...base, up.url("/fixed")]);
  assert.notEqual(without.code, 0, "no client certificate: the handshake fails");
  const foreign = await curl([
    ...base,
    "--proxy-cert",
    B.clientCert,
    "--proxy-key",
    B.clientKey,
    up.url("/fixed"),
  ]);
  assert.notEqual(foreign.code, 0, "a certificate of another CA: the handshake fails");
  assert.equal(up.requests.length, 0, "nothing was proxied");
  await waitFor(
    async () => (await counter(p.proxy, "dprl_tls_handshake_failures_total")) === failures + 2,
    "two failed handshakes counted",
  );
  const withCert = await curl([
    ...base,
    "--proxy-cert",
    A.clientCert,
    "--proxy-key",
    A.clientKey,
    up.url("/fixed"),
  ]);
  assert.equal(withCert.stdout, FIXED_BODY, withCert.stderr);
  await waitFor(
    () => accessLogged(/ GET .* 200 .* user=dprl test client$/),
    "the line with its name",
  );
  const warned = records.filter((r) => r.level === "warning" && /handshake/i.test(messageText(r)));
  assert.deepEqual(warned, [], "failed handshakes are logged at debug only");
});

Deno.test("plain HTTP to the TLS port is not proxied, and a silent client goes at the head timeout", async () => {
  await using up = await startUpstream();
  await using p = await startProxy({ tls: await pem(A), timeouts: { head: 300 } });
  const failures = await counter(p.proxy, "dprl_tls_handshake_failures_total");
  const plain = await Deno.connect(p.addr);
  await plain.write(
    new TextEncoder().encode(`GET ${up.url("/fixed")} HTTP/1.1\r\nHost: ${up.authority}\r\n\r\n`),
  );
  const got = await readAll(plain);
  assert.ok(!got.startsWith("HTTP/"), `no HTTP answer, got ${JSON.stringify(got.slice(0, 40))}`);
  const silent = await Deno.connect(p.addr);
  assert.equal(await readAll(silent), "", "closed without a byte once the head timeout passed");
  assert.equal(up.requests.length, 0);
  await waitFor(
    async () => (await counter(p.proxy, "dprl_tls_handshake_failures_total")) === failures + 2,
    "both counted as failed handshakes",
  );
});

Deno.test("a handshake under way counts against the client caps", async () => {
  await using p = await startProxy({
    tls: await pem(A),
    maxClientsPerIp: 1,
    timeouts: { head: 500 },
  });
  const silent = await Deno.connect(p.addr);
  await waitFor(async () => !(await servedBy(p.addr.port, A)), "a second connection dropped");
  // Gone at the head timeout.
  assert.equal(await readAll(silent), "");
  await waitFor(() => servedBy(p.addr.port, A), "served again once the first has gone");
});

Deno.test("a reload serves a new certificate to new handshakes, keeps open tunnels, and keeps the pair served when the new one is broken", async () => {
  await using echo = startEchoUpstream();
  let served = await pem(A);
  await using p = await startProxy({ tls: () => served });
  assert.equal(await servedBy(p.addr.port, A), true);
  // A tunnel opened before the reload.
  const tunnel = await Deno.connectTls({ ...p.addr, caCerts: [await Deno.readTextFile(A.ca)] });
  await tunnel.write(
    new TextEncoder().encode(
      `CONNECT 127.0.0.1:${echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${echo.port}\r\n\r\n`,
    ),
  );
  assert.match(await readUntil(tunnel, "\r\n\r\n"), /^HTTP\/1\.1 200/);
  served = await pem(B);
  const outcome = await p.proxy.reload();
  assert.ok(outcome.ok && outcome.changes.some((c) => c.rule === "tls"), JSON.stringify(outcome));
  assert.equal(await servedBy(p.addr.port, B), true, "new handshakes get the new certificate");
  assert.equal(await servedBy(p.addr.port, A), false);
  await tunnel.write(new TextEncoder().encode("still there"));
  assert.equal(await readUntil(tunnel, "there"), "still there", "the open tunnel still relays");
  tunnel.close();
  // A broken pair: B's certificate with A's key.
  served = { ...served, key: await Deno.readTextFile(A.serverKey) };
  const before = records.length;
  const broken = await p.proxy.reload();
  assert.equal(broken.ok, false);
  assert.match(!broken.ok ? broken.error : "", /not a usable pair/);
  assert.equal(await servedBy(p.addr.port, B), true, "the pair served stays");
  const errors = records.slice(before).filter((r) => r.level === "error");
  assert.equal(errors.length, 1, errors.map(messageText).join("\n"));
});

Deno.test("a certificate and key that are not a pair fail the start with a clear error", async () => {
  const proxy = new ProxyRateLimiter({
    port: 0,
    hostname: "127.0.0.1",
    tls: { cert: await Deno.readTextFile(A.serverCert), key: await Deno.readTextFile(B.serverKey) },
  });
  await assert.rejects(proxy.start(), /TLS certificate and key are not a usable pair/);
  await proxy.stop();
});

Deno.test("cli: --tls-cert and --tls-key go together; SIGHUP serves the files again", async () => {
  const lone = await runCli(["--tls-cert", A.serverCert]);
  assert.equal(lone.code, 2);
  assert.equal(lone.stderr.trim(), "dprl: --tls-cert and --tls-key go together");
  await using tmp = await tempDir();
  const [cert, key] = [`${tmp.path}/cert.pem`, `${tmp.path}/key.pem`];
  await Deno.copyFile(A.serverCert, cert);
  await Deno.copyFile(A.serverKey, key);
  await using cli = startCli([
    "--port",
    "0",
    "--hostname",
    "127.0.0.1",
    "--tls-cert",
    cert,
    "--tls-key",
    key,
  ]);
  const { port } = await cli.listening();
  await cli.waitStderr(/listening on https:\/\//);
  assert.equal(await servedBy(port, A), true);
  await Deno.copyFile(B.serverCert, cert);
  await Deno.copyFile(B.serverKey, key);
  Deno.kill(cli.child.pid, "SIGHUP");
  await waitFor(() => servedBy(port, B), "the new certificate served after SIGHUP");
});

async function readAll(conn: Deno.Conn): Promise<string> {
  const buf = new Uint8Array(4096);
  let text = "";
  try {
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
  } catch {
    /* reset by the peer */
  } finally {
    conn.close();
  }
  return text;
}

async function readUntil(conn: Deno.Conn, end: string): Promise<string> {
  const buf = new Uint8Array(4096);
  let text = "";
  while (!text.includes(end)) {
    const n = await conn.read(buf);
    if (n === null) break;
    text += new TextDecoder().decode(buf.subarray(0, n));
  }
  return text;
}

/** The first of `python3` on the path and Debian's own that imports urllib3. */
async function pythonWithUrllib3(): Promise<string | undefined> {
  for (const python of ["python3", "/usr/bin/python3"]) {
    try {
      const args = ["-c", "import urllib3"];
      const out = await new Deno.Command(python, { args, stdout: "null", stderr: "null" }).output();
      if (out.success) return python;
    } catch { /* not there */ }
  }
  return undefined;
}

async function which(cmd: string): Promise<boolean> {
  try {
    const out = await new Deno.Command(cmd, { args: ["version"], stdout: "null", stderr: "null" })
      .output();
    return out.success;
  } catch {
    return false;
  }
}

/** A Go client that GETs a URL through a proxy, trusting one CA for the proxy's certificate. */
const GO_CLIENT = `package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/url"
	"os"
)

func main() {
	ca, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	proxy, err := url.Parse(os.Args[2])
	if err != nil {
		panic(err)
	}
	client := &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyURL(proxy),
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}}
	res, err := client.Get(os.Args[3])
	if err != nil {
		panic(err)
	}
	io.Copy(os.Stdout, res.Body)
}
`;
