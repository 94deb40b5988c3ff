// The command line, run as a real subprocess (`deno run -A cli.ts ...`):
// help, version, bad values, environment variables, signals and logging.
import assert from "node:assert/strict";
import { main } from "../cli.ts";
import { VERSION } from "../mod.ts";
import { DEFAULTS } from "../lib/defaults.ts";
import {
  BufferedConn,
  header,
  readHead,
  readResponse,
  request,
  statusOf,
  text,
} from "./_helpers/raw.ts";
import { closedPort, startUpstream, type Upstream } from "./_helpers/upstream.ts";
import { connectRequest } from "./_helpers/proxy.ts";
import { type Proc, runCli, startCli } from "./_helpers/spawn.ts";

/** Waits for the start line; returns the proxy's URL and address. */
async function listening(
  cli: Proc,
): Promise<{ url: URL; addr: { hostname: string; port: number } }> {
  const m = await cli.waitOutput(/Proxy listening on (http:\/\/[^\s"']+)/);
  const url = new URL(m[1]);
  return { url, addr: { hostname: url.hostname, port: Number(url.port) } };
}

function assertUsageError(r: { code: number; stderr: string }, what: string): void {
  assert.equal(r.code, 2, `${what}: exit code ${r.code}, stderr ${JSON.stringify(r.stderr)}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `${what}: one stderr line, got ${JSON.stringify(r.stderr)}`);
  assert.ok(lines[0].length > 0, `${what}: the line says something`);
  assert.doesNotMatch(r.stderr, /^\s+at /m, `${what}: no stack trace`);
}

function get(up: Upstream, path: string): string {
  return request("GET", up.url(path), { Host: up.authority });
}

async function holdThrough(
  addr: { hostname: string; port: number },
  up: Upstream,
): Promise<BufferedConn> {
  const before = up.held;
  const c = await BufferedConn.connect(addr);
  await c.write(get(up, "/slow?ms=60000"));
  try {
    await up.waitHeld(before + 1);
  } catch (e) {
    c.close();
    throw e;
  }
  return c;
}

async function statusThrough(
  addr: { hostname: string; port: number },
  up: Upstream,
): Promise<{ status: number; body: string }> {
  const c = await BufferedConn.connect(addr);
  try {
    await c.write(get(up, "/fixed"));
    const res = await readResponse(c);
    return { status: res.status, body: text(res.body) };
  } finally {
    c.close();
  }
}

Deno.test("CLI --help prints the flags and exits 0", async () => {
  const r = await runCli(["--help"]);
  assert.equal(r.code, 0, r.stderr);
  for (
    const flag of [
      "--port",
      "--max-connections",
      "--log-level",
      "--redis-addr",
      "--redis-password",
      "--redis-db",
      "--redis-url",
      "--host-limit",
      "--hostname",
      "--reject-status",
      "--head-timeout",
      "--connect-timeout",
      "--idle-timeout",
      "--keep-alive-timeout",
      "--shutdown-grace",
      "DPRL_PORT",
      "DPRL_MAX_CONNECTIONS",
      "LOG_LEVEL",
      "REDIS_ADDR",
    ]
  ) {
    assert.ok(r.stdout.includes(flag), `--help mentions ${flag}`);
  }
});

Deno.test("CLI --help names each value, fits 100 columns, shows the defaults and examples", async () => {
  const r = await runCli(["--help"]);
  assert.equal(r.code, 0, r.stderr);
  for (
    const shown of [
      "--port <port>",
      "--hostname <address>",
      "--max-connections <n>",
      "--host-limit <host=n>",
      "--lease <duration>",
      "--head-timeout <duration>",
      "--redis-url <url>",
      "--redis-addr <host:port>",
      "--redis-failure-mode <mode>",
      "--log-level <level>",
      "-h, --help",
      `default ${DEFAULTS.cliPort}`,
      `default ${DEFAULTS.cliHostname}`,
      `default ${DEFAULTS.redisTimeout / 1000}s`,
      `default ${DEFAULTS.lease / 1000}s`,
      `default ${DEFAULTS.timeouts.idle / 60_000}m`,
      "Examples:",
      "dprl --max-connections 25",
    ]
  ) {
    assert.ok(r.stdout.includes(shown), `--help shows ${shown}:\n${r.stdout}`);
  }
  assert.doesNotMatch(r.stdout, /<value>/);
  for (const line of r.stdout.split("\n")) {
    assert.ok(line.length <= 100, `a line of ${line.length} columns: ${line}`);
  }
});

Deno.test("CLI -h prints the same help as --help", async () => {
  const [short, long] = await Promise.all([runCli(["-h"]), runCli(["--help"])]);
  assert.equal(short.code, 0, short.stderr);
  assert.equal(short.stdout, long.stdout);
});

Deno.test("CLI an unknown option is one line that points at --help, exit 2", async () => {
  for (const args of [["--no-such-flag"], ["-x"], ["--max-connection", "5"]]) {
    const r = await runCli(args);
    assertUsageError(r, args.join(" "));
    assert.match(r.stderr, new RegExp(`Unknown option ${args[0]}\\b.*--help`), r.stderr);
  }
  const missing = await runCli(["--port"]);
  assertUsageError(missing, "--port");
  assert.match(missing.stderr, /--port <port>/);
});

Deno.test("CLI --version prints the version and exits 0", async () => {
  const r = await runCli(["--version"]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.includes(VERSION), r.stdout);
});

Deno.test("CLI bad flag values give one stderr line and exit code 2", async () => {
  const cases: string[][] = [
    ["--port", "abc"],
    ["--port", "70000"],
    ["--port", "-1"],
    ["--max-connections", "-x"],
    ["--max-connections", "1.5"],
    ["--reject-status", "99"],
    ["--reject-status", "600"],
    ["--reject-status", "abc"],
    ["--log-level", "loud"],
    ["--host-limit", "nope"],
    ["--host-limit", "a.example=x"],
    ["--host-limit", "=5"],
    ["--host-limit", "a/b=5"],
    ["--max-rate", "fast"],
    ["--adaptive-min", "0"],
    ["--adaptive-min", "x"],
    ["--max-rate", "0/s"],
    ["--max-rate", "10"],
    ["--host-rate", "a.example=10/d"],
    ["--host-rate", "a.example"],
    ["--host-rate", "a/b=1/s"],
    ["--redis-db", "x"],
    ["--head-timeout", "soon"],
    ["--connect-timeout", "-1s"],
    ["--idle-timeout", "5 parsecs"],
    ["--keep-alive-timeout", ""],
    ["--shutdown-grace", "abc"],
    ["--no-such-flag"],
    ["--port"],
    ["stray-positional"],
  ];
  const results = await Promise.all(cases.map((args) => runCli(args)));
  results.forEach((r, i) => assertUsageError(r, cases[i].join(" ")));
});

Deno.test("CLI bad environment values give one stderr line and exit code 2", async () => {
  const cases: Record<string, string>[] = [
    { DPRL_PORT: "abc" },
    { DPRL_MAX_CONNECTIONS: "many" },
    { LOG_LEVEL: "loud" },
    { REDIS_DB: "x" },
  ];
  const results = await Promise.all(cases.map((env) => runCli([], env)));
  results.forEach((r, i) => assertUsageError(r, JSON.stringify(cases[i])));
});

Deno.test("CLI a negative number is refused alike in every spelling: 0 or more, saying what 0 means", async () => {
  const cases: [string[], Record<string, string>, RegExp][] = [
    [
      ["--max-connections", "-1"],
      {},
      /^dprl: --max-connections must be 0 or more \(0 is unlimited\), got -1$/,
    ],
    [
      ["--max-connections=-5"],
      {},
      /^dprl: --max-connections must be 0 or more \(0 is unlimited\), got -5$/,
    ],
    [
      [],
      { DPRL_MAX_CONNECTIONS: "-1" },
      /^dprl: DPRL_MAX_CONNECTIONS must be 0 or more \(0 is unlimited\), got -1$/,
    ],
    [
      ["--host-limit", "a.example=-1"],
      {},
      /^dprl: --host-limit must be 0 or more \(0 leaves the host to the default\), got -1$/,
    ],
    [
      ["--max-clients", "-2"],
      {},
      /^dprl: --max-clients must be 0 or more \(0 is no cap\), got -2$/,
    ],
    [
      ["--port", "-1"],
      {},
      /^dprl: --port must be between 0 and 65535 \(0 picks a free one\), got -1$/,
    ],
  ];
  const results = await Promise.all(cases.map(([args, env]) => runCli(args, env)));
  results.forEach((r, i) => {
    assertUsageError(r, cases[i][0].join(" ") || JSON.stringify(cases[i][1]));
    assert.match(r.stderr.trim(), cases[i][2]);
  });
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const row = readme.split("\n").find((l) => l.startsWith("| `--max-connections`"));
  assert.match(row ?? "", /0 is unlimited/);
  assert.doesNotMatch(row ?? "", /or less/);
});

Deno.test("CLI a bad value from an environment variable names the variable, not the flag", async () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ DPRL_PORT: "abc" }, /^dprl: DPRL_PORT must be an integer, got "abc"$/],
    [{ LOG_LEVEL: "loud" }, /^dprl: LOG_LEVEL must be debug, info, warn or error, got "loud"$/],
    [{ DPRL_ACCESS_LOG: "maybe" }, /^dprl: DPRL_ACCESS_LOG must be true or false, got "maybe"$/],
    [{ DPRL_QUEUE_TIMEOUT: "soon" }, /^dprl: DPRL_QUEUE_TIMEOUT must be a duration/],
  ];
  const results = await Promise.all(cases.map(([env]) => runCli([], env)));
  results.forEach((r, i) => {
    assertUsageError(r, JSON.stringify(cases[i][0]));
    assert.match(r.stderr.trim(), cases[i][1]);
  });
  // The flag still wins, and its own bad value names the flag.
  const flag = await runCli(["--port", "x"], { DPRL_PORT: "abc" });
  assert.match(flag.stderr.trim(), /^dprl: --port must be an integer, got "x"$/);
});

Deno.test("CLI main() returns the exit code instead of exiting", async () => {
  const log = console.log;
  const error = console.error;
  const seen: string[] = [];
  console.log = (...a: unknown[]) => seen.push(a.join(" "));
  console.error = (...a: unknown[]) => seen.push(a.join(" "));
  try {
    assert.equal(await main(["--version"]), 0);
    assert.equal(await main(["--port", "abc"]), 2);
  } finally {
    console.log = log;
    console.error = error;
  }
  assert.ok(seen.some((s) => s.includes(VERSION)));
});

Deno.test("CLI logs the proxy URL on start and SIGTERM exits 0", async () => {
  await using up = await startUpstream();
  await using cli = startCli(["--port", "0", "--hostname", "127.0.0.1"]);
  const { url, addr } = await listening(cli);
  assert.equal(url.hostname, "127.0.0.1");
  assert.ok(addr.port > 0);
  const res = await statusThrough(addr, up);
  assert.equal(res.status, 200);
  cli.child.kill("SIGTERM");
  assert.equal(await cli.exit(), 0, cli.transcript);
});

Deno.test("CLI SIGINT exits 0", async () => {
  await using cli = startCli(["--port", "0", "--hostname", "127.0.0.1"]);
  await listening(cli);
  cli.child.kill("SIGINT");
  assert.equal(await cli.exit(), 0, cli.output);
});

Deno.test("CLI SIGTERM stops gracefully: an open tunnel is closed after the grace and the exit is 0", async () => {
  await using up = await startUpstream();
  await using cli = startCli([
    "--port",
    "0",
    "--hostname",
    "127.0.0.1",
    "--shutdown-grace",
    "300ms",
  ]);
  const { addr } = await listening(cli);
  const c = await BufferedConn.connect(addr);
  try {
    await c.write(connectRequest(up.authority));
    const head = await readHead(c);
    assert.ok(head);
    assert.equal(statusOf(head), 200);
    cli.child.kill("SIGTERM");
    await c.waitClosed();
  } finally {
    c.close();
  }
  assert.equal(await cli.exit(), 0, cli.output);
  await up.waitOpen(0);
});

Deno.test("CLI honours DPRL_PORT, and --port beats it", async () => {
  const envPort = closedPort();
  {
    await using cli = startCli(["--hostname", "127.0.0.1"], { DPRL_PORT: String(envPort) });
    const { addr } = await listening(cli);
    assert.equal(addr.port, envPort);
    cli.child.kill("SIGTERM");
    assert.equal(await cli.exit(), 0, cli.output);
  }
  const flagPort = closedPort();
  {
    await using cli = startCli(["--hostname", "127.0.0.1", "--port", String(flagPort)], {
      DPRL_PORT: String(envPort),
    });
    const { addr } = await listening(cli);
    assert.equal(addr.port, flagPort);
    cli.child.kill("SIGTERM");
    assert.equal(await cli.exit(), 0, cli.output);
  }
});

Deno.test("CLI honours DPRL_MAX_CONNECTIONS: the second connection is refused with 500", async () => {
  await using up = await startUpstream();
  await using cli = startCli(["--port", "0", "--hostname", "127.0.0.1"], {
    DPRL_MAX_CONNECTIONS: "1",
  });
  const { addr } = await listening(cli);
  const held = await holdThrough(addr, up);
  try {
    const res = await statusThrough(addr, up);
    assert.equal(res.status, 500);
    assert.ok(res.body.includes(up.authority), res.body);
  } finally {
    up.release();
    held.close();
  }
  cli.child.kill("SIGTERM");
  assert.equal(await cli.exit(), 0, cli.output);
});

Deno.test("CLI --max-connections beats DPRL_MAX_CONNECTIONS", async () => {
  await using up = await startUpstream();
  await using cli = startCli(
    ["--port", "0", "--hostname", "127.0.0.1", "--max-connections", "2"],
    { DPRL_MAX_CONNECTIONS: "1" },
  );
  const { addr } = await listening(cli);
  const held: BufferedConn[] = [];
  try {
    held.push(await holdThrough(addr, up));
    held.push(await holdThrough(addr, up));
    assert.equal((await statusThrough(addr, up)).status, 500);
  } finally {
    up.release();
    for (const c of held) c.close();
  }
  cli.child.kill("SIGTERM");
  assert.equal(await cli.exit(), 0, cli.output);
});

Deno.test("CLI --host-limit and --reject-status apply", async () => {
  await using up = await startUpstream();
  await using other = await startUpstream();
  await using cli = startCli([
    "--port",
    "0",
    "--hostname",
    "127.0.0.1",
    "--max-connections",
    "5",
    "--host-limit",
    `${up.authority}=1`,
    "--host-limit",
    `${other.authority}=2`,
    "--reject-status",
    "503",
  ]);
  const { addr } = await listening(cli);
  const held: BufferedConn[] = [];
  try {
    held.push(await holdThrough(addr, up));
    const res = await statusThrough(addr, up);
    assert.equal(res.status, 503);
    assert.match(res.body, /\b1\b/);
    held.push(await holdThrough(addr, other));
    held.push(await holdThrough(addr, other));
    assert.equal((await statusThrough(addr, other)).status, 503);
  } finally {
    up.release();
    other.release();
    for (const c of held) c.close();
  }
  cli.child.kill("SIGTERM");
  assert.equal(await cli.exit(), 0, cli.output);
});

/** Asks for `host` twice through `addr`: the first is served, the second refused by the rate with about `retryAfter` s. */
async function refusedByRate(
  addr: { hostname: string; port: number },
  host: Upstream,
  retryAfter: number,
): Promise<void> {
  assert.equal((await statusThrough(addr, host)).status, 200);
  const c = await BufferedConn.connect(addr);
  try {
    await c.write(get(host, "/fixed"));
    const res = await readResponse(c);
    assert.equal(res.status, 429);
    // The exact wait, less the few ms the first request took.
    const wait = Number(header(res.head, "retry-after"));
    assert.ok(
      wait <= retryAfter && wait >= retryAfter - 1,
      `Retry-After ${wait}, not ${retryAfter}`,
    );
  } finally {
    c.close();
  }
}

Deno.test("CLI --host-rate and --max-rate apply; --host-rate wins over DPRL_HOST_RATES", async () => {
  await using up = await startUpstream();
  await using other = await startUpstream();
  const flags = ["--port", "0", "--hostname", "127.0.0.1", "--reject-status", "429"];
  await using cli = startCli([
    ...flags,
    "--queue-timeout",
    "0",
    "--host-rate",
    `${up.authority}=1/m`,
    "--max-rate",
    "2/h",
  ], { DPRL_HOST_RATES: `${other.authority}=1/h` });
  const { addr } = await listening(cli);
  await refusedByRate(addr, up, 60);
  await refusedByRate(addr, other, 1800);
  cli.child.kill("SIGTERM");
  assert.equal(await cli.exit(), 0, cli.output);

  await using env = startCli([...flags, "--queue-timeout", "0"], {
    DPRL_HOST_RATES: `${up.authority}=1/h,${other.authority}=3/h`,
  });
  const second = await listening(env);
  await refusedByRate(second.addr, up, 3600);
  await refusedByRate(second.addr, other, 1200);
  env.child.kill("SIGTERM");
  assert.equal(await env.exit(), 0, env.output);
});

Deno.test("CLI accepts durations (500ms, 2m, bare seconds) and applies --head-timeout", async () => {
  await using cli = startCli([
    "--port",
    "0",
    "--hostname",
    "127.0.0.1",
    "--head-timeout",
    "300ms",
    "--connect-timeout",
    "2s",
    "--idle-timeout",
    "2m",
    "--keep-alive-timeout",
    "1",
    "--shutdown-grace",
    "1",
  ]);
  const { addr } = await listening(cli);
  const silent = await BufferedConn.connect(addr);
  try {
    await silent.waitClosed();
  } finally {
    silent.close();
  }
  cli.child.kill("SIGTERM");
  assert.equal(await cli.exit(), 0, cli.output);
});

Deno.test("CLI LOG_LEVEL=debug logs every upstream connection open and close with host and count", async () => {
  await using up = await startUpstream();
  await using cli = startCli(["--port", "0", "--hostname", "127.0.0.1"], { LOG_LEVEL: "debug" });
  const { addr } = await listening(cli);
  // /close: the upstream closes after answering, so both events happen now.
  const c = await BufferedConn.connect(addr);
  try {
    await c.write(get(up, "/close"));
    assert.equal((await readResponse(c)).status, 200);
  } finally {
    c.close();
  }
  const host = up.authority.replace(/[.[\]]/g, "\\$&");
  const opened = await cli.waitOutput(new RegExp(`^.*${host}.*\\bopen.*$`, "im"));
  const closed = await cli.waitOutput(new RegExp(`^.*${host}.*\\bclose.*$`, "im"));
  assert.match(opened[0], /\b1\b/, `the open line carries the count: ${opened[0]}`);
  assert.match(closed[0], /\b0\b/, `the close line carries the count: ${closed[0]}`);
  cli.child.kill("SIGTERM");
  assert.equal(await cli.exit(), 0, cli.output);
});

Deno.test("CLI --log-level beats LOG_LEVEL and info hides the connection lines", async () => {
  await using up = await startUpstream();
  await using cli = startCli(
    ["--port", "0", "--hostname", "127.0.0.1", "--log-level", "info"],
    { LOG_LEVEL: "debug" },
  );
  const { addr } = await listening(cli);
  const c = await BufferedConn.connect(addr);
  try {
    await c.write(get(up, "/close"));
    assert.equal((await readResponse(c)).status, 200);
  } finally {
    c.close();
  }
  cli.child.kill("SIGTERM");
  assert.equal(await cli.exit(), 0, cli.output);
  assert.ok(!cli.output.includes(up.authority), `no connection lines at info:\n${cli.output}`);
});

Deno.test("the README's flag table lists exactly the flags of --help, with their variables and defaults", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const table = new Map<string, { env: string; def: string }>();
  for (const m of readme.matchAll(/^\| `(?:-[a-z]`, `)?(--[a-z-]+)[^|]*\| ([^|]*)\| ([^|]*)\|/gm)) {
    table.set(m[1], {
      env: /`([A-Z_]+)`/.exec(m[2])?.[1] ?? "",
      def: /`([^`]+)`/.exec(m[3])?.[1] ?? "",
    });
  }
  const r = await runCli(["--help"]);
  assert.equal(r.code, 0, r.stderr);
  // One entry per flag: its name, then its description up to the next flag.
  const entries = r.stdout.split(/\n(?= {2}(?:-h, )?--)/).slice(1);
  const help = new Map<string, { env: string; def: string }>();
  for (const entry of entries) {
    const flat = entry.replace(/\s+/g, " ");
    const name = /--[a-z-]+/.exec(flat)![0];
    help.set(name, {
      env: /\benv ([A-Z_]+)/.exec(flat)?.[1] ?? "",
      def: /\bdefault ([^\s,)]+)/.exec(flat)?.[1] ?? "",
    });
  }
  assert.deepEqual([...table.keys()].sort(), [...help.keys()].sort());
  for (const [name, row] of table) {
    assert.deepEqual(row, help.get(name), `README and --help agree on ${name}`);
  }
});
