// Resource exhaustion, with the proxy in a subprocess: running out of file
// descriptors under a low `ulimit -n`, and the memory of a thousand
// half-sent request heads.
import assert from "node:assert/strict";
import { BufferedConn, rawExchange, request, waitFor, withTimeout } from "./_helpers/raw.ts";
import { startUpstream, type Upstream } from "./_helpers/upstream.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CLI = new URL("../cli.ts", import.meta.url).pathname;
const MOD = new URL("../mod.ts", import.meta.url).href;

/** The parent's environment without anything that configures dprl or proxies. */
function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(Deno.env.toObject())) {
    if (/^(DPRL_|REDIS_|LOG_LEVEL$)|_proxy$/i.test(k)) continue;
    env[k] = v;
  }
  env.NO_COLOR = "1";
  return env;
}

/** A subprocess whose output is collected as it comes. */
class Proc implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  stdout = "";
  stderr = "";
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #pumps: Promise<void>[];
  exited = false;

  constructor(command: string, args: string[]) {
    this.child = new Deno.Command(command, {
      args,
      cwd: ROOT,
      clearEnv: true,
      env: baseEnv(),
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.child.status.then(() => this.exited = true);
    this.#writer = this.child.stdin.getWriter();
    const pump = async (s: ReadableStream<Uint8Array>, add: (t: string) => void) => {
      for await (const t of s.pipeThrough(new TextDecoderStream())) add(t);
    };
    this.#pumps = [
      pump(this.child.stdout, (t) => this.stdout += t),
      pump(this.child.stderr, (t) => this.stderr += t),
    ];
  }

  /** Writes a line to its stdin. */
  async send(line: string): Promise<void> {
    await this.#writer.write(new TextEncoder().encode(`${line}\n`));
  }

  /** Waits for `pattern` in stdout or stderr; its first group. */
  async match(pattern: RegExp, ms = 20_000): Promise<string> {
    const m = await waitFor(
      () => {
        if (this.exited) throw new Error(`Process exited:\n${this.stderr}`);
        return pattern.exec(this.stdout + this.stderr);
      },
      () => `${pattern} in the output:\n${this.stderr}`,
      ms,
    );
    return m![1];
  }

  /** Sends SIGTERM and resolves the exit code. */
  async stop(): Promise<number> {
    if (!this.exited) this.child.kill("SIGTERM");
    const status = await withTimeout(this.child.status, 15_000, "the process to exit");
    await this.#writer.close().catch(() => {});
    await Promise.all(this.#pumps);
    return status.code;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.exited) {
      try {
        this.child.kill("SIGKILL");
      } catch { /* gone */ }
    }
    await this.child.status;
    await this.#writer.close().catch(() => {});
    await Promise.all(this.#pumps);
  }
}

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
    `ulimit -n 64; exec "$0" run -A -q "$1" --port 0 --hostname 127.0.0.1 --head-timeout 60s`,
    Deno.execPath(),
    CLI,
  ]);
  const port = Number(await proc.match(/Proxy listening on http:\/\/127\.0\.0\.1:(\d+)\//));
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
    await proc.match(/(Accept failed)/);
    const from = proc.stderr.length;
    await new Promise((r) => setTimeout(r, 3_000));
    const lines = proc.stderr.slice(from).split("\n").filter((l) => /Accept failed/.test(l));
    assert.ok(!proc.exited, `the proxy is still running:\n${proc.stderr}`);
    assert.ok(
      lines.length >= 1 && lines.length <= 5,
      `${lines.length} accept failure lines in 3 s:\n${lines.join("\n")}`,
    );
    assert.match(lines[0], /Accept failed \d+ time\(s\)/);
    console.log(`${clients.length} clients, ${lines.length} accept failure lines in 3 s`);
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
    await using proc = new Proc(Deno.execPath(), [
      "run",
      "-A",
      "-q",
      "--v8-flags=--expose-gc",
      "--config",
      `${ROOT}deno.json`,
      program,
    ]);
    const port = Number(await proc.match(/^port (\d+)$/m));
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
