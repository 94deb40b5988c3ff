/**
 * A throw-away redis-server on a free loopback port, and the few commands the
 * benchmark sends it (over a raw socket, so no client library is needed).
 *
 * @module
 */

import { freePort, spawn, type Spawned, waitForPort } from "./process.ts";

const enc = new TextEncoder();

function resp(args: string[]): string {
  let s = `*${args.length}\r\n`;
  for (const a of args) s += `$${enc.encode(a).length}\r\n${a}\r\n`;
  return s;
}

/** Closes `c` after `ms` unless the returned function is called first. */
function deadline(c: Deno.Conn, ms: number): () => void {
  const id = setTimeout(() => {
    try {
      c.close();
    } catch {
      // already closed
    }
  }, ms);
  return () => clearTimeout(id);
}

async function writeAll(c: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await c.write(data.subarray(off));
}

/** A running redis-server. */
export class RedisServer {
  readonly port: number;
  readonly proc: Spawned;

  private constructor(port: number, proc: Spawned) {
    this.port = port;
    this.proc = proc;
  }

  /** Starts redis-server with no persistence in `dir`. */
  static async start(dir: string): Promise<RedisServer> {
    const port = freePort();
    const proc = spawn("redis-server", "redis-server", [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      dir,
      "--loglevel",
      "warning",
    ]);
    await waitForPort(port, 10_000, proc);
    return new RedisServer(port, proc);
  }

  /** `redis://127.0.0.1:PORT` */
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** `127.0.0.1:PORT` */
  get addr(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Sends one command and returns the first line of the reply. */
  async command(...args: string[]): Promise<string> {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: this.port });
    const done = deadline(c, 10_000);
    try {
      await writeAll(c, enc.encode(resp(args)));
      const buf = new Uint8Array(4096);
      const n = await c.read(buf);
      return new TextDecoder().decode(buf.subarray(0, n ?? 0)).split("\r\n")[0];
    } finally {
      done();
      try {
        c.close();
      } catch {
        // closed by the deadline
      }
    }
  }

  /** The whole reply of `INFO <section>`. */
  async info(section: string): Promise<string> {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: this.port });
    const done = deadline(c, 10_000);
    try {
      await writeAll(c, enc.encode(resp(["INFO", section])));
      const dec = new TextDecoder();
      const buf = new Uint8Array(65536);
      let got = "";
      for (;;) {
        const n = await c.read(buf);
        if (n === null) break;
        got += dec.decode(buf.subarray(0, n));
        const m = /^\$(\d+)\r\n/.exec(got);
        if (m && enc.encode(got).length >= m[0].length + Number(m[1])) break;
      }
      return got;
    } finally {
      done();
      try {
        c.close();
      } catch {
        // closed by the deadline
      }
    }
  }

  /** Number of keys in database 0. */
  async dbsize(): Promise<number> {
    return Number((await this.command("DBSIZE")).replace(/^:/, ""));
  }

  /** Deletes every key. */
  async flushAll(): Promise<void> {
    await this.command("FLUSHALL");
  }

  /**
   * Writes `n` unrelated string keys (`filler:0` ...) in one pipeline and
   * waits for all `+OK` replies.
   */
  async fill(n: number): Promise<void> {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: this.port });
    const done = deadline(c, 60_000);
    try {
      const parts: string[] = [];
      for (let i = 0; i < n; i++) parts.push(resp(["SET", `filler:${i}`, "x"]));
      const write = writeAll(c, enc.encode(parts.join("")));
      const want = n * 5; // "+OK\r\n"
      let got = 0;
      const buf = new Uint8Array(65536);
      while (got < want) {
        const r = await c.read(buf);
        if (r === null) throw new Error("redis closed during fill");
        got += r;
      }
      await write;
    } finally {
      done();
      try {
        c.close();
      } catch {
        // closed by the deadline
      }
    }
  }

  /** Stops the server. */
  async stop(): Promise<void> {
    await this.proc.stop();
  }
}
