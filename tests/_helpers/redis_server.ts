/**
 * Real `redis-server` processes for tests: one server on a free port (which
 * can be stopped, killed and started again empty on the same port) and a
 * 3-master Redis Cluster. Nothing is persisted (`--save "" --appendonly no`);
 * every server works in its own temporary directory, removed on stop.
 *
 * @module
 */

import { orFalse, waitFor } from "./raw.ts";

/** Whether Redis tests can run here, and how. */
export interface RedisAvailability {
  /** `redis-server` (and `redis-cli`) are on PATH: servers can be started. */
  server: boolean;
  /** `REDIS_URL`, an external Redis the tests may share (no restarts). */
  url: string | null;
}

let availability: Promise<RedisAvailability> | null = null;

/** Finds out once whether `redis-server` is on PATH and `REDIS_URL` is set. */
export function redisAvailability(): Promise<RedisAvailability> {
  availability ??= (async () => {
    let server = false;
    try {
      const out = await new Deno.Command("redis-server", {
        args: ["--version"],
        stdout: "null",
        stderr: "null",
      }).output();
      server = out.success;
    } catch {
      server = false;
    }
    return { server, url: Deno.env.get("REDIS_URL") || null };
  })();
  return availability;
}

/** What a Redis test needs from its environment. */
export type RedisNeed = "any" | "server";

/**
 * Registers a Redis test. When its Redis cannot be had here (no
 * `redis-server` on PATH, and for `"any"` no `REDIS_URL` either), the test is
 * skipped with a loud warning, or fails when `CI=true`.
 */
export async function redisTest(
  name: string,
  need: RedisNeed,
  fn: (t: Deno.TestContext) => Promise<void>,
): Promise<void> {
  const { server, url } = await redisAvailability();
  const ok = server || (need === "any" && url !== null);
  if (ok) {
    Deno.test({ name, fn });
    return;
  }
  const why = need === "server"
    ? "redis-server is not on PATH"
    : "redis-server is not on PATH and REDIS_URL is not set";
  if (Deno.env.get("CI") === "true") {
    Deno.test(name, () => {
      throw new Error(`Cannot run this Redis test on CI: ${why}`);
    });
    return;
  }
  console.warn(
    `\n!!! SKIPPED Redis test "${name}": ${why}. Install redis-server to run it.\n`,
  );
  Deno.test({ name, ignore: true, fn() {} });
}

/** Picks a TCP port that is free now (and, optionally, port + 10000 too). */
export function freePort(withBusPort = false): number {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = withBusPort ? 20000 + Math.floor(Math.random() * 20000) : (() => {
      const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const p = (l.addr as Deno.NetAddr).port;
      l.close();
      return p;
    })();
    if (!withBusPort) return port;
    if (isFree(port) && isFree(port + 10000)) return port;
  }
  throw new Error("No free port found");
}

function isFree(port: number): boolean {
  try {
    Deno.listen({ hostname: "127.0.0.1", port }).close();
    return true;
  } catch {
    return false;
  }
}

/** Sends one command to a Redis port in RESP and returns the raw reply. */
export async function rawCommand(
  port: number,
  ...args: string[]
): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const enc = new TextEncoder();
    let req = `*${args.length}\r\n`;
    for (const a of args) req += `$${enc.encode(a).length}\r\n${a}\r\n`;
    await conn.write(enc.encode(req));
    const buf = new Uint8Array(65536);
    const n = await conn.read(buf);
    return n === null ? "" : new TextDecoder().decode(buf.subarray(0, n));
  } finally {
    conn.close();
  }
}

/**
 * How many clients listen to each of `channels` (sharded channels when
 * `sharded`), summed over the Redis nodes on `ports` (PUBSUB NUMSUB).
 */
export async function listeners(
  ports: number[],
  channels: string[],
  sharded = false,
): Promise<number[]> {
  const counts = channels.map(() => 0);
  for (const port of ports) {
    const reply = await rawCommand(port, "PUBSUB", sharded ? "SHARDNUMSUB" : "NUMSUB", ...channels);
    [...reply.matchAll(/^:(\d+)\r$/gm)].forEach((m, i) => counts[i] += Number(m[1]));
  }
  return counts;
}

/** Runs `redis-cli` with `args` and returns its standard output. */
export async function redisCli(...args: string[]): Promise<string> {
  const out = await new Deno.Command("redis-cli", {
    args,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(
      `redis-cli ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return text;
}

/** A `redis-server` process on 127.0.0.1 started by a test. */
export class RedisServer implements AsyncDisposable {
  /** The port it listens on (kept across restarts). */
  readonly port: number;
  #dir: string;
  #extraArgs: string[];
  #child: Deno.ChildProcess | null = null;

  private constructor(port: number, dir: string, extraArgs: string[]) {
    this.port = port;
    this.#dir = dir;
    this.#extraArgs = extraArgs;
  }

  /** Starts a server on a free port (or `port`) with extra `args`. */
  static async start(
    options: { port?: number; args?: string[] } = {},
  ): Promise<RedisServer> {
    const dir = await Deno.makeTempDir({ prefix: "dprl-redis-" });
    const server = new RedisServer(
      options.port ?? freePort(),
      dir,
      options.args ?? [],
    );
    try {
      await server.#spawn();
    } catch (error) {
      await server.stop();
      throw error;
    }
    return server;
  }

  /** `redis://127.0.0.1:<port>`. */
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Whether the process is running. */
  get running(): boolean {
    return this.#child !== null;
  }

  async #spawn(): Promise<void> {
    this.#child = new Deno.Command("redis-server", {
      args: [
        "--port",
        String(this.port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        this.#dir,
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
        "--enable-debug-command",
        "local",
        ...this.#extraArgs,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const child = this.#child;
    let exited = false;
    child.status.then(() => exited = true);
    await waitFor(
      orFalse(async () => {
        if (exited) throw new Error("redis-server exited at start");
        // A server that wants a password answers -NOAUTH: it is up too.
        return /^(\+PONG|-NOAUTH)/.test(await rawCommand(this.port, "PING"));
      }),
      `redis-server on port ${this.port}`,
      10_000,
    ).catch((error) => {
      if (exited) throw new Error(`redis-server on port ${this.port} exited at start`);
      throw error;
    });
  }

  /** Stops the process (SIGKILL: nothing is saved anyway) and waits for it. */
  async kill(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = null;
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
  }

  /** Starts the process again, empty, on the same port. */
  async restart(): Promise<void> {
    await this.kill();
    await this.#spawn();
  }

  /** Starts the process again if it was killed. */
  async resume(): Promise<void> {
    if (!this.#child) await this.#spawn();
  }

  /** Kills the process and removes its directory. */
  async stop(): Promise<void> {
    await this.kill();
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }

  /** Runs `redis-cli -p <port> args...`. */
  cli(...args: string[]): Promise<string> {
    return redisCli("-p", String(this.port), ...args);
  }

  /** Same as {@linkcode stop}; used by `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/** A 3-master Redis Cluster (no replicas) started by a test. */
export class RedisClusterServers implements AsyncDisposable {
  /** The masters. */
  readonly servers: RedisServer[];

  private constructor(servers: RedisServer[]) {
    this.servers = servers;
  }

  /** Starts three cluster-enabled servers and joins them into a cluster. */
  static async start(): Promise<RedisClusterServers> {
    const servers: RedisServer[] = [];
    const cluster = new RedisClusterServers(servers);
    try {
      for (let i = 0; i < 3; i++) {
        const port = freePort(true);
        servers.push(
          await RedisServer.start({
            port,
            args: [
              "--cluster-enabled",
              "yes",
              "--cluster-config-file",
              `nodes-${port}.conf`,
              "--cluster-node-timeout",
              "5000",
            ],
          }),
        );
      }
      await redisCli(
        "--cluster",
        "create",
        ...servers.map((s) => `127.0.0.1:${s.port}`),
        "--cluster-replicas",
        "0",
        "--cluster-yes",
      );
      await waitFor(
        orFalse(async () => {
          for (const s of servers) {
            const info = await s.cli("CLUSTER", "INFO");
            if (!info.includes("cluster_state:ok")) return false;
          }
          return true;
        }),
        "cluster_state:ok",
        20_000,
      );
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  /** The nodes, as ioredis `ClusterNode`s. */
  get nodes(): { host: string; port: number }[] {
    return this.servers.map((s) => ({ host: "127.0.0.1", port: s.port }));
  }

  /** Stops every server and removes their directories. */
  async stop(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.stop()));
  }

  /** Same as {@linkcode stop}; used by `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/** PEM files of a throwaway CA, a server certificate and a client certificate. */
export interface TlsFiles {
  /** The directory that holds them. */
  dir: string;
  /** CA certificate. */
  ca: string;
  /** Server certificate (for `127.0.0.1` and `localhost`) and key. */
  serverCert: string;
  serverKey: string;
  /** Client certificate and key, signed by the same CA. */
  clientCert: string;
  clientKey: string;
}

async function openssl(dir: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", { args, cwd: dir, stdout: "null", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`openssl ${args[0]} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** Makes a CA, a server and a client certificate with `openssl` in `dir`. */
export async function makeTlsFiles(dir: string): Promise<TlsFiles> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await openssl(
    dir,
    "req",
    "-x509",
    ...ec,
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=dprl test CA",
  );
  await Deno.writeTextFile(`${dir}/server.ext`, "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  await Deno.writeTextFile(`${dir}/client.ext`, "extendedKeyUsage=clientAuth\n");
  for (const who of ["server", "client"]) {
    await openssl(
      dir,
      "req",
      ...ec,
      "-keyout",
      `${who}.key`,
      "-out",
      `${who}.csr`,
      "-subj",
      `/CN=dprl test ${who}`,
    );
    await openssl(
      dir,
      "x509",
      "-req",
      "-in",
      `${who}.csr`,
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      `${who}.pem`,
      "-days",
      "2",
      "-extfile",
      `${who}.ext`,
    );
  }
  return {
    dir,
    ca: `${dir}/ca.pem`,
    serverCert: `${dir}/server.pem`,
    serverKey: `${dir}/server.key`,
    clientCert: `${dir}/client.pem`,
    clientKey: `${dir}/client.key`,
  };
}

let tlsSupport: Promise<string | null> | null = null;

/**
 * Why Redis-over-TLS tests cannot run here (no `openssl`, or a
 * `redis-server` built without TLS), or `null` when they can.
 */
export function redisTlsUnavailable(): Promise<string | null> {
  tlsSupport ??= (async () => {
    if (!(await redisAvailability()).server) return "redis-server is not on PATH";
    try {
      await new Deno.Command("openssl", { args: ["version"], stdout: "null", stderr: "null" })
        .output();
    } catch {
      return "openssl is not on PATH";
    }
    // A build with TLS complains about the missing key; one without rejects the directive.
    const out = await new Deno.Command("redis-server", {
      args: ["--port", "0", "--tls-port", String(freePort()), "--tls-cert-file", "/nonexistent"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    return /tls-key-file|Failed to configure TLS/i.test(text)
      ? null
      : "this redis-server was built without TLS";
  })();
  return tlsSupport;
}
