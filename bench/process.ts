/**
 * Child processes for the benchmark: every process is spawned in its own
 * process group (`detached`), registered, and stopped by group, so that a
 * shell script that execs (or forks) a server never outlives the run.
 *
 * @module
 */

const live = new Set<Spawned>();
/** Set by stopAll: nothing new may start while the benchmark shuts down. */
let closing = false;

/** Options of {@linkcode spawn}. */
export interface SpawnOptions {
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Working directory. */
  cwd?: string;
  /** Keep stdout (for reading lines from it) instead of discarding it. */
  stdout?: boolean;
}

/** A running child process (the leader of its own process group). */
export class Spawned {
  readonly name: string;
  readonly pid: number;
  readonly status: Promise<Deno.CommandStatus>;
  #child: Deno.ChildProcess;
  #stderr = "";
  #exited = false;

  constructor(name: string, child: Deno.ChildProcess) {
    this.name = name;
    this.#child = child;
    this.pid = child.pid;
    this.status = child.status.then((s) => {
      this.#exited = true;
      live.delete(this);
      return s;
    });
    void this.#drain(child.stderr);
  }

  /** Whether the process has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** The last few KiB the process wrote to stderr. */
  get stderr(): string {
    return this.#stderr;
  }

  /** The child's stdout (only when spawned with `stdout: true`). */
  get stdout(): ReadableStream<Uint8Array> {
    return this.#child.stdout;
  }

  async #drain(stream: ReadableStream<Uint8Array>): Promise<void> {
    const dec = new TextDecoder();
    try {
      for await (const chunk of stream) {
        this.#stderr = (this.#stderr + dec.decode(chunk, { stream: true }))
          .slice(-4096);
      }
    } catch {
      // the process went away
    }
  }

  /** Stops the whole process group: SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 3000): Promise<void> {
    if (this.#exited) return;
    signalGroup(this.pid, "SIGTERM");
    const timer = new Promise<"timeout">((r) => {
      const id = setTimeout(() => r("timeout"), graceMs);
      this.status.finally(() => clearTimeout(id));
    });
    if (await Promise.race([this.status, timer]) === "timeout") {
      signalGroup(this.pid, "SIGKILL");
      await this.status;
    }
    // children that left the group leader behind
    signalGroup(this.pid, "SIGKILL");
  }
}

function signalGroup(pid: number, signal: Deno.Signal): void {
  try {
    Deno.kill(-pid, signal);
  } catch {
    try {
      Deno.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

/** Spawns `cmd args` in a new process group; stdin is closed. */
export function spawn(
  name: string,
  cmd: string,
  args: string[],
  options: SpawnOptions = {},
): Spawned {
  if (closing) throw new Error(`not starting ${name}: the benchmark is stopping`);
  const child = new Deno.Command(cmd, {
    args,
    env: options.env,
    cwd: options.cwd,
    stdin: "null",
    stdout: options.stdout ? "piped" : "null",
    stderr: "piped",
    detached: true,
  }).spawn();
  const p = new Spawned(name, child);
  live.add(p);
  return p;
}

/** Stops every process this module spawned that is still running. */
export async function stopAll(): Promise<void> {
  closing = true;
  await Promise.all([...live].map((p) => p.stop(1000)));
}

/** Result of {@linkcode run}. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/**
 * Runs a command to completion (or until `timeoutMs`, when its process group
 * is killed) and returns its output.
 */
export async function run(
  cmd: string,
  args: string[],
  options: {
    timeoutMs: number;
    stdin?: Uint8Array;
    env?: Record<string, string>;
  },
): Promise<RunResult> {
  const child = new Deno.Command(cmd, {
    args,
    env: options.env,
    stdin: options.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
    detached: true,
  }).spawn();
  const p = new Spawned(cmd, child);
  live.add(p);
  let timedOut = false;
  const id = setTimeout(() => {
    timedOut = true;
    void p.stop(1000);
  }, options.timeoutMs);
  try {
    if (options.stdin) {
      const w = child.stdin.getWriter();
      await w.write(options.stdin).catch(() => {});
      await w.close().catch(() => {});
    }
    const out = new Response(child.stdout).text();
    const status = await p.status;
    // stderr is drained by Spawned; give it a tick to finish
    await new Promise((r) => setTimeout(r, 10));
    return { code: status.code, stdout: await out, stderr: p.stderr, timedOut };
  } finally {
    clearTimeout(id);
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Waits until something accepts connections on 127.0.0.1:port. */
export async function waitForPort(
  port: number,
  timeoutMs: number,
  proc?: Spawned,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc?.exited) {
      throw new Error(
        `${proc.name} exited before listening on ${port}: ${proc.stderr.trim()}`,
      );
    }
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      c.close();
      return;
    } catch {
      await sleep(50);
    }
  }
  throw new Error(
    `nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms` +
      (proc ? ` (${proc.name}: ${proc.stderr.trim()})` : ""),
  );
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Resident set size of a process in KiB (VmRSS), or NaN when unknown. */
export function rssKiB(pid: number): number {
  try {
    const s = Deno.readTextFileSync(`/proc/${pid}/status`);
    const m = s.match(/^VmRSS:\s+(\d+)\s+kB/m);
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

/** Whether `cmd` is on PATH. */
export async function onPath(cmd: string): Promise<boolean> {
  const r = await run("sh", ["-c", `command -v ${cmd}`], { timeoutMs: 5000 });
  return r.code === 0;
}

/**
 * CPU time a process has used so far (all threads), seconds, split into user
 * and system time. Assumes the usual 100 clock ticks per second.
 */
export function cpuSeconds(pid: number): { user: number; sys: number } {
  try {
    const s = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return { user: Number(f[11]) / 100, sys: Number(f[12]) / 100 };
  } catch {
    return { user: NaN, sys: NaN };
  }
}

/**
 * Runs `fn` and returns its result with the CPU seconds `pid` used
 * meanwhile: `user`, and `used` (user + system).
 */
export async function cpuDuring<T>(
  pid: number,
  fn: () => Promise<T>,
): Promise<{ r: T; user: number; used: number }> {
  const before = cpuSeconds(pid);
  const r = await fn();
  const after = cpuSeconds(pid);
  const user = after.user - before.user;
  return { r, user, used: user + after.sys - before.sys };
}

/** The 1-minute load average, or NaN. */
export function loadAverage(): number {
  try {
    return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
  } catch {
    return NaN;
  }
}
