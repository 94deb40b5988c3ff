/**
 * Loads driven from Deno for the benchmark's side-by-side measurements: a
 * dprl on a free port, an upstream that answers every request at once, and
 * 32 clients opening tunnels or sending keep-alive requests through a proxy,
 * over TCP or TLS.
 *
 * @module
 */

import { freePort, spawn, type Spawned, waitForPort } from "./process.ts";
import { startTaskV8Flags } from "./proxies.ts";

const CLIENTS = 32;
const enc = new TextEncoder();
const dec = new TextDecoder();
const RESPONSE = enc.encode("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");

/** A dprl on a free port, with `args`; its port and process. */
export async function startDprl(args: string[]): Promise<{ port: number; proc: Spawned }> {
  const port = freePort();
  const proc = spawn("dprl", Deno.execPath(), [
    "run",
    "-A",
    ...startTaskV8Flags(),
    new URL("../cli.ts", import.meta.url).pathname,
    "--port",
    String(port),
    "--hostname",
    "127.0.0.1",
    "--log-level",
    "warn",
    ...args,
  ]);
  await waitForPort(port, 20_000, proc);
  return { port, proc };
}

/** An upstream that answers every request head with a fixed 200, keep-alive. */
export function startHttpUpstream(): { port: number; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of listener) {
      (async () => {
        const buf = new Uint8Array(16 * 1024);
        let head = "";
        try {
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) break;
            head += dec.decode(buf.subarray(0, n));
            while (head.includes("\r\n\r\n")) {
              head = head.slice(head.indexOf("\r\n\r\n") + 4);
              await conn.write(RESPONSE);
            }
          }
        } catch { /* reset */ }
        try {
          conn.close();
        } catch { /* closed */ }
      })();
    }
  })().catch(() => {});
  return { port: (listener.addr as Deno.NetAddr).port, close: () => listener.close() };
}

/** Opens a client connection to the proxy on `port`, over TLS trusting `ca` when given. */
function dial(port: number, ca: string | undefined): Promise<Deno.Conn> {
  const addr = { hostname: "127.0.0.1", port };
  return ca ? Deno.connectTls({ ...addr, caCerts: [ca] }) : Deno.connect(addr);
}

async function readUntil(conn: Deno.Conn, buf: Uint8Array, done: (s: string) => boolean) {
  let text = "";
  while (!done(text)) {
    const n = await conn.read(buf);
    if (n === null) throw new Error("the proxy closed the connection");
    text += dec.decode(buf.subarray(0, n));
  }
  return text;
}

/** One tunnel: CONNECT, one byte there and back, close. */
async function tunnel(port: number, ca: string | undefined, target: string, buf: Uint8Array) {
  const conn = await dial(port, ca);
  try {
    await conn.write(enc.encode(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`));
    const head = await readUntil(conn, buf, (s) => s.includes("\r\n\r\n"));
    if (!head.startsWith("HTTP/1.1 200")) throw new Error(head.split("\r\n")[0]);
    await conn.write(enc.encode("x"));
    await readUntil(conn, buf, (s) => s.length > 0);
  } finally {
    conn.close();
  }
}

/** A load on the proxy on `port` (TLS trusting `ca` when given) for `ms`: resolves the operations done and failed. */
export type Load = (port: number, ca: string | undefined, ms: number) => Promise<[number, number]>;

/** 32 clients, each opening a tunnel to `target`, one byte there and back, close, again. */
export function tunnelLoad(target: string): Load {
  return async (port, ca, ms) => {
    const until = performance.now() + ms;
    let done = 0, failed = 0;
    await Promise.all(Array.from({ length: CLIENTS }, async () => {
      const buf = new Uint8Array(4096);
      while (performance.now() < until) {
        try {
          await tunnel(port, ca, target, buf);
          done++;
        } catch {
          failed++;
        }
      }
    }));
    return [done, failed];
  };
}

/** 32 keep-alive connections, each sending absolute-form GETs for `target` one after another. */
export function requestLoad(target: string): Load {
  const request = enc.encode(`GET http://${target}/ HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  return async (port, ca, ms) => {
    const until = performance.now() + ms;
    let done = 0, failed = 0;
    await Promise.all(Array.from({ length: CLIENTS }, async () => {
      const buf = new Uint8Array(4096);
      let conn: Deno.Conn | null = null;
      while (performance.now() < until) {
        try {
          conn ??= await dial(port, ca);
          await conn.write(request);
          await readUntil(conn, buf, (s) => s.endsWith("ok"));
          done++;
        } catch {
          failed++;
          conn?.close();
          conn = null;
        }
      }
      conn?.close();
    }));
    return [done, failed];
  };
}
