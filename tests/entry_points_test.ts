// Every way a user starts dprl, entered the way a user does: `jsr:@dprl/cli`
// from a project whose deno.json links this checkout, the library under
// `--allow-net` alone, a worker, the README's `deno install` line, `deno task
// compile`, and the Deno version that CI and the Docker image pin.
import assert from "node:assert/strict";
import { BufferedConn, readResponse, request, text } from "./_helpers/raw.ts";
import { consumer, Proc, ROOT, run, shellWords, tempDir } from "./_helpers/spawn.ts";
import { FIXED_BODY, startUpstream, type Upstream } from "./_helpers/upstream.ts";
import { VERSION } from "../mod.ts";

const README = Deno.readTextFileSync(`${ROOT}/README.md`);

async function statusThrough(
  addr: { hostname: string; port: number },
  up: Upstream,
  path = "/fixed",
): Promise<{ status: number; body: string; conn: BufferedConn }> {
  const conn = await BufferedConn.connect(addr);
  try {
    await conn.write(request("GET", up.url(path), { Host: up.authority }));
    const res = await readResponse(conn);
    return { status: res.status, body: text(res.body), conn };
  } catch (e) {
    conn.close();
    throw e;
  }
}

/** A proxied request that the upstream holds open until released. */
async function holdThrough(
  addr: { hostname: string; port: number },
  up: Upstream,
): Promise<BufferedConn> {
  const before = up.held;
  const conn = await BufferedConn.connect(addr);
  try {
    await conn.write(request("GET", up.url("/slow?ms=60000"), { Host: up.authority }));
    await up.waitHeld(before + 1);
  } catch (e) {
    conn.close();
    throw e;
  }
  return conn;
}

/** Checks that a running proxy forwards and holds a limit of 1 per host. */
async function assertProxiesAndLimitsToOne(
  addr: { hostname: string; port: number },
  up: Upstream,
): Promise<void> {
  const first = await statusThrough(addr, up);
  first.conn.close();
  assert.equal(first.status, 200);
  assert.equal(first.body, FIXED_BODY);
  const held = await holdThrough(addr, up);
  try {
    const over = await statusThrough(addr, up);
    over.conn.close();
    assert.equal(over.status, 500);
    assert.match(over.body, new RegExp(up.authority.replace(/[.[\]]/g, "\\$&")));
  } finally {
    up.release();
    held.close();
  }
}

/** The lines of the README's shell blocks that start with `prefix`. */
function readmeCommands(prefix: string): string[] {
  const blocks = [...README.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]);
  return blocks.flatMap((b) => b.split("\n")).map((l) => l.trim()).filter((l) =>
    l.startsWith(prefix)
  );
}

Deno.test("jsr:@dprl/cli --version and --help print and exit 0", async () => {
  await using project = await consumer();
  const deno = Deno.execPath();
  const [version, help, cliVersion] = await Promise.all([
    run(deno, ["run", "-A", "jsr:@dprl/cli", "--version"], project.path),
    run(deno, ["run", "-A", "jsr:@dprl/cli", "--help"], project.path),
    run(deno, ["run", "-A", "jsr:@dprl/cli/cli", "--version"], project.path),
  ]);
  assert.equal(version.code, 0, version.transcript);
  assert.equal(version.stdout.trim(), `dprl ${VERSION}`);
  assert.equal(help.code, 0, help.transcript);
  assert.match(help.stdout, /--max-connections <n>/);
  assert.equal(cliVersion.code, 0, cliVersion.transcript);
  assert.equal(cliVersion.stdout.trim(), `dprl ${VERSION}`);
});

Deno.test("deno run -A jsr:@dprl/cli proxies, refuses over the limit and exits 0 on SIGTERM", async () => {
  await using up = await startUpstream();
  await using project = await consumer();
  await using proxy = new Proc(Deno.execPath(), [
    "run",
    "-A",
    "jsr:@dprl/cli",
    "--port",
    "0",
    "--hostname",
    "127.0.0.1",
    "--max-connections",
    "1",
  ], project.path);
  const addr = await proxy.listening();
  await assertProxiesAndLimitsToOne(addr, up);
  proxy.child.kill("SIGTERM");
  assert.equal(await proxy.exit(), 0, proxy.transcript);
});

const LIBRARY_PROGRAM = `
import { ProxyRateLimiter } from "@dprl/cli";

const [upstream, host] = Deno.args;
await using proxy = new ProxyRateLimiter({ defaultMaxConnectionsPerHost: 3 });
await proxy.start();
const client = Deno.createHttpClient({ proxy: { url: proxy.proxyUrl!.href } });
const res = await fetch(upstream, { client });
console.log(res.status, JSON.stringify(await res.text()));
console.log("open", await proxy.activeConnectionsForHost(host));
client.close();
`;

Deno.test("the library serves in memory mode under --allow-net alone", async () => {
  await using up = await startUpstream();
  await using project = await consumer({ "main.ts": LIBRARY_PROGRAM });
  const r = await run(
    Deno.execPath(),
    ["run", "--allow-net", "main.ts", up.url("/fixed"), up.authority],
    project.path,
  );
  assert.equal(r.code, 0, r.transcript);
  assert.ok(r.stdout.split("\n").includes(`200 ${JSON.stringify(FIXED_BODY)}`), r.transcript);
  assert.match(r.stdout, /^open [01]$/m);
  assert.equal(up.requests.length, 1);
});

const REDIS_PROGRAM = `
import { ProxyRateLimiter } from "@dprl/cli";

// Nothing listens on this port: the client connects lazily, on first use.
const proxy = new ProxyRateLimiter({ redis: "redis://127.0.0.1:" + Deno.args[0] });
try {
  await proxy.start();
  console.log("started");
} catch (err) {
  console.log("refused:", (err as Error).message);
}
await proxy.stop({ graceMs: 0 });
`;

Deno.test("Redis mode says it needs --ignore-env under --allow-net alone, and starts with it", async () => {
  await using project = await consumer({ "main.ts": REDIS_PROGRAM });
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = String(listener.addr.port);
  listener.close();
  const deno = Deno.execPath();
  const [narrow, ignoring] = await Promise.all([
    run(deno, ["run", "--allow-net", "main.ts", port], project.path),
    run(deno, ["run", "--allow-net", "--ignore-env", "main.ts", port], project.path),
  ]);
  assert.equal(narrow.code, 0, narrow.transcript);
  assert.match(narrow.stdout, /^refused: Redis mode needs .*--ignore-env/m);
  assert.equal(ignoring.code, 0, ignoring.transcript);
  assert.match(ignoring.stdout, /^started$/m);
});

/** The README's worker example, as a user's project holds it. */
function readmeWorkerFiles(): Record<string, string> {
  const files: Record<string, string> = {};
  for (const m of README.matchAll(/```ts\n\/\/ (\w+\.ts)\n([\s\S]*?)```/g)) {
    files[m[1]] = m[2];
  }
  assert.ok(files["proxy_worker.ts"] && files["main.ts"], "the README shows the worker example");
  return files;
}

Deno.test("the README's worker example starts a proxy in a worker, serves and stops", async () => {
  await using up = await startUpstream();
  const files = readmeWorkerFiles();
  // The example fetches a public URL; this test points it at the local upstream.
  files["main.ts"] = files["main.ts"].replace(/"https?:\/\/example\.com\/"/, "Deno.args[0]");
  assert.ok(files["main.ts"].includes("Deno.args[0]"), files["main.ts"]);
  await using project = await consumer(files);
  const command = readmeCommands("deno run --allow-net").find((l) => l.endsWith("main.ts"));
  assert.ok(command, "the README shows how to run the worker example");
  // A worker loads its modules at run time, so Deno asks for read access to
  // local ones: the worker's file (as the README says) and, only because the
  // test links the package to this checkout, the checkout.
  const args = shellWords(command).slice(1).map((w) =>
    w.startsWith("--allow-read=") ? `${w},${ROOT}` : w
  );
  const r = await run(Deno.execPath(), [...args, up.url("/fixed")], project.path);
  assert.equal(r.code, 0, r.transcript);
  assert.match(r.stdout, /^200$/m);
  assert.match(r.stdout, /^stopped$/m);
  assert.equal(up.requests.length, 1);
});

Deno.test("the README's deno install line works from a clone and the command runs anywhere", async () => {
  const line = readmeCommands("deno install --global").find((l) => l.endsWith(" cli.ts"));
  assert.ok(line, "the README shows the install line for a clone");
  await using root = await tempDir();
  await using elsewhere = await tempDir();
  const words = shellWords(line);
  words.splice(words.indexOf("--global") + 1, 0, "--root", root.path);
  const installed = await run(Deno.execPath(), words.slice(1), ROOT);
  assert.equal(installed.code, 0, installed.transcript);
  const name = words[words.indexOf("--name") + 1] ?? words[words.indexOf("-n") + 1];
  const bin = `${root.path}/bin/${name}`;

  const version = await run(bin, ["--version"], elsewhere.path);
  assert.equal(version.code, 0, version.transcript);
  assert.match(version.stdout, /^dprl \d+\.\d+\.\d+/);

  await using up = await startUpstream();
  // The limit comes from the environment: the installed command may read dprl's variables.
  await using proxy = new Proc(
    bin,
    ["--port", "0", "--hostname", "127.0.0.1"],
    elsewhere.path,
    { DPRL_MAX_CONNECTIONS: "1" },
  );
  await assertProxiesAndLimitsToOne(await proxy.listening(), up);
  proxy.child.kill("SIGTERM");
  assert.equal(await proxy.exit(), 0, proxy.transcript);
});

/**
 * Why `deno compile` cannot build here, or `null` when it can: it needs a
 * runtime that it downloads unless `DENORT_BIN` names one.
 */
async function compileUnavailable(): Promise<string | null> {
  await using dir = await tempDir();
  await Deno.writeTextFile(`${dir.path}/probe.ts`, "console.log('ok');\n");
  const r = await run(
    Deno.execPath(),
    ["compile", "--output", `${dir.path}/probe`, `${dir.path}/probe.ts`],
    dir.path,
  );
  if (r.code === 0) return null;
  const errors = r.transcript.split("\n").map((l) => l.trim()).filter((l) => /error/i.test(l));
  return [...new Set([errors[0], errors.at(-1)])].filter(Boolean).join(" ... ") || `exit ${r.code}`;
}

const compileBlocked = await compileUnavailable();
if (compileBlocked) {
  console.warn(
    `\n!!! SKIPPED: "deno task compile builds a binary that proxies": deno compile cannot ` +
      `get its runtime here (${compileBlocked}); set DENORT_BIN to a denort binary to run it\n`,
  );
}

if (!compileBlocked) {
  console.warn(
    `\n!!! SKIPPED: "deno task compile explains in one line why it cannot build": ` +
      `deno compile can build here\n`,
  );
}

Deno.test({
  name: "deno task compile explains in one line why it cannot build",
  ignore: compileBlocked === null,
  fn: async () => {
    const r = await run(Deno.execPath(), ["task", "compile"], ROOT, { DENORT_BIN: "" });
    assert.equal(r.code, 1, r.transcript);
    const lines = r.stderr.trim().split("\n").filter((l) => !/^Task compile /.test(l));
    assert.equal(lines.length, 1, r.transcript);
    assert.match(lines[0], /^deno compile failed: .+; it needs the Deno runtime .*DENORT_BIN/);
    assert.doesNotMatch(r.transcript, /backtrace|Caused by/i);
  },
});

Deno.test({
  name: "deno task compile builds a binary that proxies and limits with narrow permissions",
  ignore: compileBlocked !== null,
  fn: async () => {
    const config = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`));
    const task: string = config.tasks.compile;
    const words = shellWords(task);
    assert.ok(!words.includes("-A") && !words.includes("--allow-all"), task);
    assert.ok(words.includes("--allow-net"), task);
    const out = `${ROOT}/${words[words.indexOf("--output") + 1]}`;
    const existed = await Deno.stat(out).then(() => true, () => false);
    await using elsewhere = await tempDir();
    try {
      const built = await run(Deno.execPath(), ["task", "compile"], ROOT);
      assert.equal(built.code, 0, built.transcript);
      const version = await run(out, ["--version"], elsewhere.path);
      assert.equal(version.code, 0, version.transcript);
      await using up = await startUpstream();
      await using proxy = new Proc(
        out,
        ["--port", "0", "--hostname", "127.0.0.1", "--max-connections", "1"],
        elsewhere.path,
      );
      await assertProxiesAndLimitsToOne(await proxy.listening(), up);
      proxy.child.kill("SIGTERM");
      assert.equal(await proxy.exit(), 0, proxy.transcript);
    } finally {
      if (!existed) await Deno.remove(out).catch(() => {});
    }
  },
});

Deno.test("CI and the Docker image pin the same Deno version", async () => {
  const ci = await Deno.readTextFile(`${ROOT}/.ci/run`);
  const dockerfile = await Deno.readTextFile(`${ROOT}/Dockerfile`);
  const ciVersion = /^DENO_VERSION=([0-9]+\.[0-9]+\.[0-9]+)$/m.exec(ci)?.[1];
  const imageVersion = /^FROM denoland\/deno:([0-9]+\.[0-9]+\.[0-9]+)\b/m.exec(dockerfile)?.[1];
  assert.ok(ciVersion, ".ci/run pins DENO_VERSION=x.y.z");
  assert.ok(imageVersion, "the Dockerfile starts FROM denoland/deno:x.y.z");
  assert.equal(imageVersion, ciVersion);
  if (Deno.version.deno !== ciVersion) {
    console.warn(`!!! this Deno is ${Deno.version.deno}; CI and the image use ${ciVersion}`);
  }
});

Deno.test("every deno task and jsr:@dprl/cli entry point the README shows exists", async () => {
  const config = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`));
  const tasks = [...README.matchAll(/\bdeno task ([a-z-]+)/g)].map((m) => m[1]);
  assert.ok(tasks.length > 0);
  for (const task of tasks) assert.ok(task in config.tasks, `deno.json has the task ${task}`);
  const entries = [...README.matchAll(/\bjsr:@dprl\/cli(\/[a-z]+)?/g)].map((m) => `.${m[1] ?? ""}`);
  assert.ok(entries.length > 0);
  for (const entry of entries) assert.ok(entry in config.exports, `deno.json exports ${entry}`);
});
