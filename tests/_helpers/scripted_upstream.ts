/**
 * A raw TCP upstream whose every connection runs a script of the test's: it
 * reads request heads and writes whatever bytes the test says, including
 * broken or surplus ones, so that the tests can play a misbehaving server.
 *
 * @module
 */

import { BufferedConn, CRLFCRLF, text } from "./raw.ts";

/** What a script sees of one upstream connection. */
export interface ScriptedConn {
  /** Serial number of the connection (1, 2, ...). */
  readonly id: number;
  /** The connection itself. */
  readonly conn: BufferedConn;
  /** Reads one request head (up to and with CRLF CRLF) as text; `null` at EOF. */
  readHead(): Promise<string | null>;
  /** Writes bytes as they are. */
  write(data: string | Uint8Array): Promise<void>;
}

/** A running scripted upstream. */
export interface ScriptedUpstream extends AsyncDisposable {
  /** `127.0.0.1:port`. */
  readonly authority: string;
  /** TCP connections accepted so far. */
  readonly accepted: number;
  /** Connections open right now. */
  readonly open: number;
  /** Every request head read by a script, in order. */
  readonly heads: string[];
  /** `http://127.0.0.1:port` + path. */
  url(path: string): string;
  /** Stops listening and closes every connection. */
  close(): Promise<void>;
}

/**
 * Starts a scripted upstream on 127.0.0.1 port 0; `script` runs once per
 * accepted connection, which is closed when the script returns.
 */
export function startScriptedUpstream(
  script: (c: ScriptedConn) => Promise<void>,
): ScriptedUpstream {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const conns = new Set<BufferedConn>();
  const running = new Set<Promise<void>>();
  const heads: string[] = [];
  let accepted = 0;
  const loop = (async () => {
    for (;;) {
      let raw: Deno.Conn;
      try {
        raw = await listener.accept();
      } catch {
        return;
      }
      const conn = new BufferedConn(raw);
      conns.add(conn);
      const id = ++accepted;
      const sc: ScriptedConn = {
        id,
        conn,
        async readHead() {
          const head = await conn.readUntil(CRLFCRLF, 60_000, "a request head");
          if (head === null) return null;
          heads.push(text(head));
          return text(head);
        },
        write: (data) => conn.write(data),
      };
      const run = script(sc).catch(() => {}).finally(() => {
        conn.close();
        conns.delete(conn);
        running.delete(run);
      });
      running.add(run);
    }
  })();
  const close = async () => {
    try {
      listener.close();
    } catch { /* closed */ }
    await loop;
    for (const c of conns) c.close();
    await Promise.all([...running]);
  };
  return {
    authority: `127.0.0.1:${port}`,
    get accepted() {
      return accepted;
    },
    get open() {
      return conns.size;
    },
    heads,
    url: (path) => `http://127.0.0.1:${port}${path}`,
    close,
    [Symbol.asyncDispose]: close,
  };
}
