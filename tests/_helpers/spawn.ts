/**
 * Subprocesses of the tests: the command line, `deno` itself, installed
 * commands. One environment for all of them, without the developer's own
 * dprl, Redis and proxy settings.
 *
 * @module
 */

import { waitFor, withTimeout } from "./raw.ts";

/** Bound on every start, exit and answer awaited from a subprocess. */
export const SPAWN_WAIT_MS = 60_000;

/**
 * The parent's environment without anything that configures dprl or proxies
 * (`DPRL_*`, `REDIS_*`, `LOG_LEVEL`, `*_proxy`), with `NO_COLOR` and this
 * `deno` first on `PATH` (installed commands run `deno` from `PATH`).
 */
export function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(Deno.env.toObject())) {
    if (
      /^(DPRL_|REDIS_)/.test(k) || k === "LOG_LEVEL" ||
      /^(http_proxy|https_proxy|all_proxy|no_proxy)$/i.test(k)
    ) continue;
    env[k] = v;
  }
  env.NO_COLOR = "1";
  const bin = Deno.execPath().replace(/\/[^/]*$/, "");
  env.PATH = `${bin}:${env.PATH ?? "/usr/bin:/bin"}`;
  return env;
}

/** A subprocess with its output collected; disposing kills it and waits for it. */
export class Proc implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  readonly what: string;
  stdout = "";
  stderr = "";
  #pumps: Promise<void>[];
  #exited = false;
  #stdin?: WritableStreamDefaultWriter<Uint8Array>;

  /**
   * Starts `cmd` in `cwd` with {@linkcode baseEnv} and `env`; with
   * `stdin: true` its standard input is a pipe for {@linkcode Proc.send}.
   */
  constructor(
    cmd: string,
    args: string[],
    cwd: string,
    env: Record<string, string> = {},
    options: { stdin?: boolean } = {},
  ) {
    this.what = [cmd, ...args].join(" ");
    this.child = new Deno.Command(cmd, {
      args,
      cwd,
      clearEnv: true,
      env: { ...baseEnv(), ...env },
      stdin: options.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (options.stdin) this.#stdin = this.child.stdin.getWriter();
    this.#pumps = [
      this.#pump(this.child.stdout, (s) => (this.stdout += s)),
      this.#pump(this.child.stderr, (s) => (this.stderr += s)),
    ];
    this.child.status.then(() => (this.#exited = true));
  }

  /** Whether it has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** Writes a line to its standard input (started with `stdin: true`). */
  async send(line: string): Promise<void> {
    await this.#stdin!.write(new TextEncoder().encode(`${line}\n`));
  }

  async #pump(stream: ReadableStream<Uint8Array>, add: (s: string) => void): Promise<void> {
    for await (const s of stream.pipeThrough(new TextDecoderStream())) add(s);
  }

  /** Everything it printed, stdout then stderr. */
  get output(): string {
    return this.stdout + this.stderr;
  }

  /** The command line and everything it printed, for assertion messages. */
  get transcript(): string {
    return `$ ${this.what}\n${this.output}`;
  }

  /** Waits until stderr matches `re` (failing early if the process exits); returns the match. */
  waitStderr(re: RegExp, ms = SPAWN_WAIT_MS): Promise<RegExpMatchArray> {
    return this.#wait(() => this.stderr, re, ms);
  }

  /** Waits until stdout or stderr matches `re` (failing early if it exits); returns the match. */
  waitOutput(re: RegExp, ms = SPAWN_WAIT_MS): Promise<RegExpMatchArray> {
    return this.#wait(() => this.output, re, ms);
  }

  #wait(text: () => string, re: RegExp, ms: number): Promise<RegExpMatchArray> {
    return waitFor(
      () => {
        const m = text().match(re);
        if (!m && this.#exited) throw new Error(`It exited before ${re}:\n${this.transcript}`);
        return m;
      },
      () => `${re}; output so far:\n${this.transcript}`,
      ms,
    ) as Promise<RegExpMatchArray>;
  }

  /** Waits for the proxy's start line and returns its bound address. */
  async listening(): Promise<{ hostname: string; port: number }> {
    const m = await this.waitStderr(/bound to ([0-9.]+):([0-9]+)/);
    return { hostname: m[1], port: Number(m[2]) };
  }

  /** Waits (bounded) for the exit; returns the exit code. */
  async exit(ms = SPAWN_WAIT_MS): Promise<number> {
    const status = await withTimeout(this.child.status, ms, `the exit of ${this.what}`);
    await this.#stdin?.close().catch(() => {});
    await Promise.all(this.#pumps);
    return status.code;
  }

  /** Sends SIGTERM (unless it has exited) and waits for the exit code. */
  stop(ms = SPAWN_WAIT_MS): Promise<number> {
    if (!this.#exited) this.child.kill("SIGTERM");
    return this.exit(ms);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // exited already
    }
    await this.child.status;
    await this.#stdin?.close().catch(() => {});
    await Promise.all(this.#pumps);
  }
}

/** What {@linkcode run} returns: the exit code and the output. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  /** The command line and everything it printed, for assertion messages. */
  transcript: string;
}

/** Runs a command to its end (bounded); returns its exit code and output. */
export async function run(
  cmd: string,
  args: string[],
  cwd: string,
  env: Record<string, string> = {},
): Promise<RunResult> {
  await using p = new Proc(cmd, args, cwd, env);
  const code = await p.exit();
  return { code, stdout: p.stdout, stderr: p.stderr, transcript: p.transcript };
}

/** A temporary folder, removed on dispose. */
export async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "dprl_test_" });
  return {
    path,
    [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }),
  };
}

/** The checkout's root folder, without a trailing slash. */
export const ROOT: string = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");

/** The command line's module. */
export const CLI: string = `${ROOT}/cli.ts`;

/** Starts `deno run -A cli.ts` with `args`, in the checkout, with {@linkcode baseEnv} and `env`. */
export function startCli(args: string[], env: Record<string, string> = {}): Proc {
  return new Proc(Deno.execPath(), ["run", "-A", "-q", CLI, ...args], ROOT, env);
}

/** Runs `deno run -A cli.ts` with `args` to its end (bounded): exit code and output. */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return run(Deno.execPath(), ["run", "-A", "-q", CLI, ...args], ROOT, env);
}

/**
 * A consumer project as `deno add jsr:@dprl/cli` leaves it, whose deno.json
 * links this checkout so that `jsr:@dprl/cli` and `@dprl/cli` resolve to it.
 */
export async function consumer(files: Record<string, string> = {}): Promise<
  { path: string } & AsyncDisposable
> {
  const dir = await tempDir();
  const config = { imports: { "@dprl/cli": "jsr:@dprl/cli@^0.1.0" }, links: [ROOT] };
  await Deno.writeTextFile(`${dir.path}/deno.json`, JSON.stringify(config, null, 2));
  for (const [name, content] of Object.entries(files)) {
    await Deno.writeTextFile(`${dir.path}/${name}`, content);
  }
  return dir;
}

/** Splits a shell line into words as sh does: spaces separate, single quotes group. */
export function shellWords(line: string): string[] {
  return [...line.matchAll(/(?:'[^']*'|[^\s'])+/g)].map((m) => m[0].replaceAll("'", ""));
}
