// dprl in a subprocess: the command line's access flags and variables,
// running out of file descriptors under a low `ulimit -n`, and the memory of
// a thousand half-sent request heads.
import assert from "node:assert/strict";
import bcrypt from "bcryptjs";
import { BufferedConn, header, rawExchange, request, text, waitFor } from "./_helpers/raw.ts";
import { connectRequest } from "./_helpers/proxy.ts";
import { CLI, Proc, ROOT, runCli } from "./_helpers/spawn.ts";
import { startUpstream, type Upstream } from "./_helpers/upstream.ts";

const MOD = new URL("../mod.ts", import.meta.url).href;

/** Retries a GET through the proxy until it gets 200. */
async function servesAgain(addr: { hostname: string; port: number }, up: Upstream): Promise<void> {
  await waitFor(
    async () => {
      try {
        const res = await rawExchange(
          addr,
          request("GET", up.url("/fixed"), { Host: up.authority }),
          {
            ms: 2_000,
          },
        );
        return res.status === 200;
      } catch {
        return false;
      }
    },
    "the proxy to serve again",
    20_000,
  );
}

/** Connects, giving up when the connect does not complete within `ms` (a full backlog). */
async function tryConnect(port: number, ms: number): Promise<Deno.TcpConn | null> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), ms);
  try {
    return await Deno.connect({ hostname: "127.0.0.1", port, signal: abort.signal });
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("out of file descriptors the proxy lives on, logs about once a second, and serves again", async () => {
  await using up = await startUpstream();
  await using proc = new Proc("bash", [
    "-c",
    `ulimit -n 64; exec "$0" run -A -q "$1" --port 0 --hostname 127.0.0.1 --head-timeout 60s ` +
    "--log-format json",
    Deno.execPath(),
    CLI,
  ], ROOT);
  const port = Number(
    (await proc.waitOutput(/Proxy listening on http:\/\/127\.0\.0\.1:(\d+)\//))[1],
  );
  const addr = { hostname: "127.0.0.1", port };
  await servesAgain(addr, up);
  const clients: Deno.TcpConn[] = [];
  try {
    // Far more connections than descriptors: the rest wait in the accept queue.
    for (let i = 0; i < 150; i++) {
      const c = await tryConnect(port, 1_000);
      if (!c) break;
      clients.push(c);
    }
    // Three lines: it goes on failing, and logging, at most once a second.
    await proc.waitStderr(/(Accept failed[^\n]*\n[^]*){3}/);
    assert.ok(!proc.exited, `the proxy is still running:\n${proc.stderr}`);
    const lines = proc.stderr.split("\n").filter((l) => /Accept failed/.test(l))
      .map((l) => JSON.parse(l));
    for (const line of lines) assert.match(line.message, /^Accept failed \d+ time\(s\)/);
    const gaps = lines.slice(1).map((l, i) => Date.parse(l.time) - Date.parse(lines[i].time));
    assert.ok(gaps.every((ms) => ms >= 950), `accept failure lines ${gaps} ms apart`);
    console.log(`${clients.length} clients, accept failure lines ${gaps.join(", ")} ms apart`);
  } finally {
    for (const c of clients) c.close();
  }
  await servesAgain(addr, up);
  assert.equal(await proc.stop(), 0, proc.stderr);
});

const MEMORY_PROGRAM = `
import { ProxyRateLimiter } from "${MOD}";
const gc = (globalThis as unknown as { gc(): void }).gc;
const proxy = new ProxyRateLimiter({ port: 0, hostname: "127.0.0.1" });
await proxy.start();
console.log("port", proxy.proxyUrl!.port);
for await (const _ of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  for (let i = 0; i < 3; i++) gc();
  const m = Deno.memoryUsage();
  console.log("memory", m.heapUsed + m.external, m.rss);
}
`;

Deno.test("memory of a thousand half-sent heads is given back once they are gone", async () => {
  const dir = await Deno.makeTempDir({ prefix: "dprl-memory-" });
  try {
    const program = `${dir}/memory.ts`;
    await Deno.writeTextFile(program, MEMORY_PROGRAM);
    await using proc = new Proc(
      Deno.execPath(),
      [
        "run",
        "-A",
        "-q",
        "--v8-flags=--expose-gc",
        "--config",
        `${ROOT}/deno.json`,
        program,
      ],
      ROOT,
      {},
      { stdin: true },
    );
    const port = Number((await proc.waitOutput(/^port (\d+)$/m))[1]);
    let seen = 0;
    const measure = async (): Promise<number> => {
      await proc.send("measure");
      seen++;
      await waitFor(
        () => proc.stdout.split("\n").filter((l) => l.startsWith("memory ")).length >= seen,
        "a memory reading",
      );
      const line = proc.stdout.split("\n").filter((l) => l.startsWith("memory "))[seen - 1];
      return Number(line.split(" ")[1]);
    };
    const before = await measure();
    const half = `GET http://127.0.0.1:9/ HTTP/1.1\r\nX-Pad: ${"a".repeat(30_000)}`;
    const clients: BufferedConn[] = [];
    let during = 0;
    try {
      for (let i = 0; i < 1000; i++) {
        const c = await BufferedConn.connect({ hostname: "127.0.0.1", port });
        clients.push(c);
        await c.write(half);
      }
      // The heads are held: 1000 x 30 kB.
      during = await waitFor(
        async () => {
          const m = await measure();
          return m - before > 20e6 ? m : 0;
        },
        "the half-sent heads to be buffered",
        20_000,
      );
    } finally {
      for (const c of clients) c.close();
    }
    const after = await waitFor(
      async () => {
        const m = await measure();
        return m - before < 8e6 ? m : 0;
      },
      () => `memory to come back near ${before} (held ${during})`,
      20_000,
    );
    console.log(
      `heap + external: before ${mb(before)}, with 1000 half-sent heads ${mb(during)}, ` +
        `after ${mb(after)}`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function mb(n: number): string {
  return `${(n / 1e6).toFixed(1)} MB`;
}

/** Starts `cli.ts` on a free loopback port; resolves its address. */
async function startCli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ proc: Proc; addr: { hostname: string; port: number } }> {
  const proc = new Proc(
    Deno.execPath(),
    [
      "run",
      "-A",
      "-q",
      CLI,
      "--port",
      "0",
      "--hostname",
      "127.0.0.1",
      ...args,
    ],
    ROOT,
    env,
  );
  try {
    const port = Number(
      (await proc.waitOutput(/Proxy listening on http:\/\/127\.0\.0\.1:(\d+)\//))[1],
    );
    return { proc, addr: { hostname: "127.0.0.1", port } };
  } catch (err) {
    await proc[Symbol.asyncDispose]();
    throw err;
  }
}

Deno.test("a bad access flag or variable is one line on stderr and exit 2", async () => {
  const cases: [string[], Record<string, string>, RegExp][] = [
    [["--allow-clients", "nope"], {}, /--allow-clients needs CIDRs/],
    [[], { DPRL_ALLOW_CLIENTS: "10.0.0.0/33" }, /^dprl: DPRL_ALLOW_CLIENTS needs CIDRs/],
    [["--auth-file", "/nonexistent/users.htpasswd"], {}, /--auth-file .* no such file/],
    [[], { DPRL_AUTH: "alice" }, /DPRL_AUTH entry 1 must be user:password/],
    ...["$apr1$abcdefgh$0123456789abcdefghijkl", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "$2b$10$abc"]
      .map((hash): [string[], Record<string, string>, RegExp] => [
        ["--port", "0", "--hostname", "127.0.0.1"],
        { DPRL_AUTH: `alice:pw,bob:${hash}` },
        /^dprl: DPRL_AUTH entry 2 for user "bob" looks like a hash but is not a bcrypt hash/,
      ]),
    [["--deny", "10.0.0.0/99"], {}, /^dprl: --deny: /],
    [[], { DPRL_ALLOW: "example.com:99999" }, /^dprl: DPRL_ALLOW: /],
    [[], { DPRL_DENY_PRIVATE: "maybe" }, /^dprl: DPRL_DENY_PRIVATE must be true or false/],
    [[], { DPRL_ACCESS_LOG: "maybe" }, /^dprl: DPRL_ACCESS_LOG must be true or false/],
    [["--max-clients", "many"], {}, /--max-clients must be an integer/],
    [[], { DPRL_MAX_CLIENTS_PER_IP: "1.5" }, /^dprl: DPRL_MAX_CLIENTS_PER_IP must be an integer/],
    [["--fin-timeout", "soon"], {}, /--fin-timeout must be a duration/],
  ];
  // A few processes at a time: each spends most of its life starting Deno.
  for (let i = 0; i < cases.length; i += 4) {
    await Promise.all(
      cases.slice(i, i + 4).map(async ([args, env, pattern]) => {
        const r = await runCli(args, env);
        const what = `${args.join(" ")} ${JSON.stringify(env)}`;
        assert.equal(r.code, 2, what);
        assert.equal(r.stderr.trim().split("\n").length, 1, `${what}: ${r.stderr}`);
        assert.match(r.stderr, pattern, what);
      }),
    );
  }
});

Deno.test("the command line asks for credentials from DPRL_AUTH and --auth-file, and logs none", async () => {
  await using up = await startUpstream();
  const dir = await Deno.makeTempDir({ prefix: "dprl-auth-" });
  try {
    const file = `${dir}/users.htpasswd`;
    await Deno.writeTextFile(file, `bob:${bcrypt.hashSync("bob's secret", 4)}\n`);
    const { proc, addr } = await startCli(["--auth-file", file, "--access-log"], {
      DPRL_AUTH: "alice:alice's secret",
      LOG_LEVEL: "debug",
    });
    await using _ = proc;
    const get = (user?: string) =>
      rawExchange(
        addr,
        request("GET", up.url("/fixed"), {
          Host: up.authority,
          ...(user ? { "Proxy-Authorization": `Basic ${btoa(user)}` } : {}),
        }),
      );
    const denied = await get();
    assert.equal(denied.status, 407);
    assert.match(header(denied.head, "proxy-authenticate") ?? "", /^Basic realm="dprl"/);
    assert.equal((await get("alice:alice's secret")).status, 200);
    assert.equal((await get("bob:bob's secret")).status, 200);
    assert.equal((await get("bob:alice's secret")).status, 407);
    assert.equal(await proc.stop(), 0, proc.stderr);
    assert.match(proc.stderr, new RegExp(`GET.*${up.authority}.*200`), "the access log ran");
    for (const secret of ["secret", btoa("alice:alice's secret"), btoa("bob:bob's secret")]) {
      assert.ok(!proc.stderr.includes(secret), proc.stderr);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the command line refuses clients outside DPRL_ALLOW_CLIENTS", async () => {
  await using up = await startUpstream();
  const { proc, addr } = await startCli([], { DPRL_ALLOW_CLIENTS: "10.0.0.0/8" });
  await using _ = proc;
  const res = await rawExchange(addr, request("GET", up.url("/fixed"), { Host: up.authority }));
  assert.equal(res.status, 403);
  assert.equal(up.accepted, 0);
});

Deno.test("an open proxy on all interfaces warns at start; --deny-private and --deny apply", async () => {
  await using up = await startUpstream();
  const { proc } = await startCli(
    ["--hostname", "0.0.0.0", "--allow-clients", "0.0.0.0/0,::/0", "--deny-private"],
    { DPRL_DENY: "example.com" },
  );
  await using _ = proc;
  const port = Number(/127\.0\.0\.1:(\d+)/.exec(proc.stderr)![1]);
  const addr = { hostname: "127.0.0.1", port };
  assert.match(proc.stderr, /Open proxy: anyone at 0\.0\.0\.0\/0/);
  const cases: [string, RegExp][] = [
    [`http://localhost:${up.port}/fixed`, /error=destination_ip_prohibited/],
    ["http://example.com/", /error=destination_not_allowed/],
  ];
  for (const [url, status] of cases) {
    const res = await rawExchange(addr, request("GET", url, { Host: new URL(url).host }));
    assert.equal(res.status, 403, url);
    assert.match(header(res.head, "proxy-status") ?? "", status);
  }
  // Its own port, on an interface address it learnt with --allow-sys.
  for (const nic of Deno.networkInterfaces().filter((n) => n.family === "IPv4")) {
    const c = await BufferedConn.connect(addr);
    try {
      await c.write(connectRequest(`${nic.address}:${port}`));
      const head = (await c.readToEnd()).slice(0, 12);
      assert.equal(text(head), "HTTP/1.1 403", nic.address);
    } finally {
      c.close();
    }
  }
  assert.equal(up.accepted, 0);
});

Deno.test("on all interfaces without --allow-sys the proxy warns that it cannot see its own addresses", async () => {
  const run = async (sys: string[]) => {
    await using proc = new Proc(Deno.execPath(), [
      "run",
      "--no-prompt",
      "--allow-net",
      ...sys,
      "--allow-env=DPRL_*,REDIS_*,LOG_LEVEL",
      "--ignore-env",
      CLI,
      "--port",
      "0",
      "--hostname",
      "0.0.0.0",
    ], ROOT);
    await proc.waitOutput(/(Proxy listening)/);
    assert.equal(await proc.stop(), 0, proc.stderr);
    return proc.stderr;
  };
  assert.match(await run([]), /Cannot see this machine's network addresses.*--allow-sys/);
  assert.doesNotMatch(await run(["--allow-sys=networkInterfaces"]), /Cannot see/);
});
