/**
 * Real upstream servers for the proxy tests.
 *
 * {@linkcode startUpstream} runs a hand-framed HTTP/1.1 server on
 * `Deno.listen` (or `Deno.listenTls`) on port 0, so that the tests control
 * every byte: fixed bodies, gzip bodies sent as they are, chunked responses
 * with trailers, echo of the request, held responses, HEAD/204/304,
 * 100-continue, close-delimited bodies, and a recorder of the peak number of
 * concurrent TCP connections. {@linkcode startWebSocketUpstream} runs a
 * `Deno.serve` WebSocket echo server. {@linkcode testCertificates} makes a
 * CA and a server certificate for the TLS upstream.
 *
 * @module
 */

import {
  BufferedConn,
  concat,
  type Head,
  header,
  readChunked,
  readHead,
  sha256,
  text,
  utf8,
  WAIT_MS,
  waitFor,
} from "./raw.ts";

/** The body of `/fixed`. */
export const FIXED_BODY = "hello from upstream\n";

/** The plain text behind `/gzip`. */
export const GZIP_PLAIN: string = "dprl keeps gzip as gzip. ".repeat(400);

/** The chunks of `/chunked`. */
export const CHUNKS: string[] = ["alpha-", "beta-", "gamma"];

/** Deterministic bytes for `/bytes?n=N` and for uploads. */
export function patternBytes(n: number, seed = 7): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

async function gzip(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** One request as the upstream saw it. */
export interface SeenRequest {
  /** Serial number of the TCP connection it came on (1, 2, ...). */
  connId: number;
  /** The request method. */
  method: string;
  /** The request target exactly as received. */
  target: string;
  /** The HTTP version of the request line. */
  version: string;
  /** Header fields in order, names as sent. */
  fields: [string, string][];
  /** Length of the decoded body. */
  bodyLength: number;
  /** Hex SHA-256 of the decoded body. */
  bodySha256: string;
  /** The body as text when it is at most 64 KiB, else "". */
  body: string;
  /** Trailer fields of a chunked request body. */
  trailers: [string, string][];
}

/** Options of {@linkcode startUpstream}. */
export interface UpstreamOptions {
  /** Address to listen on; default `"127.0.0.1"`. */
  hostname?: string;
  /** Serve TLS with this certificate chain and key (PEM). */
  tls?: { cert: string; key: string };
}

/** A running upstream; see the module doc for its endpoints. */
export interface Upstream extends AsyncDisposable {
  /** The address it listens on (no brackets for IPv6). */
  readonly hostname: string;
  /** The port it listens on. */
  readonly port: number;
  /** `host:port` as it appears in a URL (`[::1]:port` for IPv6). */
  readonly authority: string;
  /** `http://authority` (or `https://`). */
  readonly origin: string;
  /** Open TCP connections right now. */
  readonly open: number;
  /** Highest number of concurrent TCP connections seen. */
  readonly peak: number;
  /** TCP connections accepted so far. */
  readonly accepted: number;
  /**
   * Highest number of requests in flight at once (head received, response
   * not yet written). Unlike {@linkcode Upstream.peak} it never counts a
   * socket the proxy already closed but whose FIN is still on its way.
   */
  readonly peakInFlight: number;
  /** Requests currently held by `/slow`. */
  readonly held: number;
  /** Requests received so far, in order. */
  readonly requests: SeenRequest[];
  /** The bytes `/gzip` sends. */
  readonly gzipBody: Uint8Array;
  /** Builds a URL of this upstream. */
  url(path: string): string;
  /** Lets every held `/slow` request answer now. */
  release(): void;
  /** Waits until `n` requests are held by `/slow`. */
  waitHeld(n: number, ms?: number): Promise<void>;
  /** Waits until `n` TCP connections are open. */
  waitOpen(n: number, ms?: number): Promise<void>;
  /** Resets the peak to the number of connections open now. */
  resetPeak(): void;
  /** Stops listening and closes every connection. */
  close(): Promise<void>;
}

interface Route {
  status: number;
  reason: string;
  fields: [string, string][];
  body?: Uint8Array;
  /** Send this exact body framing after the head instead of `body`. */
  rawBody?: Uint8Array;
  /** Close the connection after the response (close-delimited). */
  close?: boolean;
}

/** Starts a raw HTTP/1.1 upstream on port 0. */
export async function startUpstream(
  opts: UpstreamOptions = {},
): Promise<Upstream> {
  const hostname = opts.hostname ?? "127.0.0.1";
  const listener: Deno.Listener = opts.tls
    ? Deno.listenTls({
      hostname,
      port: 0,
      cert: opts.tls.cert,
      key: opts.tls.key,
    })
    : Deno.listen({ hostname, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const authority = hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`;
  const origin = `${opts.tls ? "https" : "http"}://${authority}`;
  const gzipBody = await gzip(utf8(GZIP_PLAIN));

  let open = 0;
  let peak = 0;
  let accepted = 0;
  let inFlight = 0;
  let peakInFlight = 0;
  let closing = false;
  const requests: SeenRequest[] = [];
  const conns = new Set<BufferedConn>();
  const handlers = new Set<Promise<void>>();
  const holds = new Set<() => void>();

  function hold(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        holds.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      holds.add(done);
    });
  }

  function release(): void {
    for (const done of [...holds]) done();
  }

  async function route(req: SeenRequest, head: Head): Promise<Route> {
    const url = new URL(req.target, "http://upstream.invalid");
    const path = url.pathname;
    const ok = (
      body: string | Uint8Array,
      fields: [string, string][] = [["Content-Type", "text/plain"]],
    ): Route => ({
      status: 200,
      reason: "OK",
      fields,
      body: typeof body === "string" ? utf8(body) : body,
    });
    switch (path) {
      case "/fixed":
        return ok(FIXED_BODY);
      case "/bytes":
        return ok(patternBytes(Number(url.searchParams.get("n") ?? "0")), [[
          "Content-Type",
          "application/octet-stream",
        ]]);
      case "/gzip":
        return ok(gzipBody, [
          ["Content-Type", "text/plain"],
          ["Content-Encoding", "gzip"],
          ["Vary", "Accept-Encoding"],
        ]);
      case "/chunked": {
        const plain = utf8(CHUNKS.join(""));
        const parts = CHUNKS.map((c) => `${utf8(c).length.toString(16)}\r\n${c}\r\n`);
        const wire = parts.join("") + "0\r\n" +
          `X-Checksum: ${await sha256(plain)}\r\n\r\n`;
        return {
          status: 200,
          reason: "OK",
          fields: [
            ["Content-Type", "text/plain"],
            ["Transfer-Encoding", "chunked"],
            ["Trailer", "X-Checksum"],
          ],
          rawBody: utf8(wire),
        };
      }
      case "/echo":
        return ok(JSON.stringify(req), [["Content-Type", "application/json"]]);
      case "/conn":
        return ok(String(req.connId));
      case "/slow": {
        await hold(Number(url.searchParams.get("ms") ?? "30000"));
        return ok("slow done\n");
      }
      case "/204":
        return { status: 204, reason: "No Content", fields: [] };
      case "/304":
        return {
          status: 304,
          reason: "Not Modified",
          fields: [["ETag", '"v1"'], ["Cache-Control", "max-age=60"]],
        };
      case "/close": {
        return {
          status: 200,
          reason: "OK",
          fields: [["Content-Type", "text/plain"], ["Connection", "close"]],
          rawBody: utf8("close-delimited body\n".repeat(50)),
          close: true,
        };
      }
      default:
        if (header(head, "expect")) return ok("continued\n");
        return {
          status: 404,
          reason: "Not Found",
          fields: [["Content-Type", "text/plain"]],
          body: utf8(`no route ${path}\n`),
        };
    }
  }

  async function handle(c: BufferedConn, connId: number): Promise<void> {
    let closeAfter = false;
    try {
      while (!closing) {
        const head = await readHead(c, Infinity);
        if (head === null) return;
        const [method, target, version] = head.startLine.split(" ");
        inFlight++;
        peakInFlight = Math.max(peakInFlight, inFlight);
        try {
          if (/100-continue/i.test(header(head, "expect") ?? "")) {
            await c.write("HTTP/1.1 100 Continue\r\n\r\n", Infinity);
          }
          let body: Uint8Array = new Uint8Array(0);
          let trailers: [string, string][] = [];
          const te = header(head, "transfer-encoding");
          const cl = header(head, "content-length");
          if (te && /chunked/i.test(te)) {
            const r = await readChunked(c, Infinity);
            body = r.body;
            trailers = r.trailers;
          } else if (cl !== null) {
            body = await c.readExact(Number(cl), Infinity);
          }
          const req: SeenRequest = {
            connId,
            method,
            target,
            version,
            fields: head.fields,
            bodyLength: body.length,
            bodySha256: await sha256(body),
            body: body.length <= 65536 ? text(body) : "",
            trailers,
          };
          requests.push(req);
          const r = await route(req, head);
          closeAfter = r.close === true;
          let out = `HTTP/1.1 ${r.status} ${r.reason}\r\n`;
          for (const [k, v] of r.fields) out += `${k}: ${v}\r\n`;
          const noBody = r.status === 204 || r.status === 304;
          if (r.body && !noBody) {
            out += `Content-Length: ${r.body.length}\r\n`;
          }
          out += "\r\n";
          const parts = [utf8(out)];
          if (method !== "HEAD" && !noBody) {
            if (r.rawBody) parts.push(r.rawBody);
            else if (r.body) parts.push(r.body);
          }
          await c.write(concat(parts), Infinity);
        } finally {
          inFlight--;
        }
        if (closeAfter || /close/i.test(header(head, "connection") ?? "")) {
          return;
        }
      }
    } catch {
      // A peer that goes away is normal here.
    } finally {
      c.close();
    }
  }

  const acceptLoop = (async () => {
    while (true) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch {
        return;
      }
      if (closing) {
        conn.close();
        continue;
      }
      accepted++;
      open++;
      peak = Math.max(peak, open);
      const c = new BufferedConn(conn);
      conns.add(c);
      const h = handle(c, accepted).finally(() => {
        open--;
        conns.delete(c);
        handlers.delete(h);
      });
      handlers.add(h);
    }
  })();

  const close = async (): Promise<void> => {
    if (closing) return;
    closing = true;
    try {
      listener.close();
    } catch {
      // closed
    }
    await acceptLoop;
    release();
    for (const c of conns) c.close();
    await Promise.all([...handlers]);
  };

  return {
    hostname,
    port,
    authority,
    origin,
    get open() {
      return open;
    },
    get peak() {
      return peak;
    },
    get accepted() {
      return accepted;
    },
    get peakInFlight() {
      return peakInFlight;
    },
    get held() {
      return holds.size;
    },
    requests,
    gzipBody,
    url: (path: string) => origin + path,
    release,
    waitHeld: async (n: number, ms = WAIT_MS) => {
      await waitFor(() => holds.size >= n, `${n} held requests`, ms);
    },
    waitOpen: async (n: number, ms = WAIT_MS) => {
      await waitFor(() => open === n, `${n} open upstream connections`, ms);
    },
    resetPeak: () => {
      peak = open;
      peakInFlight = inFlight;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** A running WebSocket echo server. */
export interface WebSocketUpstream extends AsyncDisposable {
  /** The port it listens on. */
  readonly port: number;
  /** `127.0.0.1:port`. */
  readonly authority: string;
  /** Stops it and closes every socket. */
  close(): Promise<void>;
}

/**
 * Starts a `Deno.serve` server whose `/ws` upgrades to a WebSocket that
 * echoes every message back.
 */
export function startWebSocketUpstream(): Promise<WebSocketUpstream> {
  const sockets = new Set<WebSocket>();
  return new Promise((resolve) => {
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      onListen: ({ port }) => {
        const close = async () => {
          for (const ws of sockets) ws.close();
          await server.shutdown();
        };
        resolve({
          port,
          authority: `127.0.0.1:${port}`,
          close,
          [Symbol.asyncDispose]: close,
        });
      },
    }, (req) => {
      if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
        return new Response("not a websocket request\n", { status: 400 });
      }
      const { socket, response } = Deno.upgradeWebSocket(req);
      sockets.add(socket);
      socket.onmessage = (e) => socket.send(e.data);
      socket.onclose = () => sockets.delete(socket);
      socket.onerror = () => {};
      return response;
    });
  });
}

/** A CA and a server certificate for `localhost`, 127.0.0.1 and ::1. */
export interface TestCertificates {
  /** The CA certificate to trust (PEM). */
  ca: string;
  /** The server certificate chain (PEM). */
  cert: string;
  /** The server key (PEM, PKCS#8). */
  key: string;
  /** Where they came from: "openssl" or "fixture". */
  source: "openssl" | "fixture";
}

let certs: Promise<TestCertificates> | null = null;

/**
 * Makes a throwaway CA and a server certificate with `openssl` when it is on
 * PATH; otherwise uses the test-only fixture in `tests/_helpers/tls/`.
 */
export function testCertificates(): Promise<TestCertificates> {
  certs ??= makeCertificates();
  return certs;
}

async function run(cmd: string, args: string[], cwd: string): Promise<void> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${text(out.stderr)}`);
  }
}

async function makeCertificates(): Promise<TestCertificates> {
  const dir = await Deno.makeTempDir({ prefix: "dprl_tls_" });
  try {
    await run("openssl", ["version"], dir);
  } catch {
    await Deno.remove(dir, { recursive: true });
    const base = new URL("./tls/", import.meta.url);
    return {
      ca: await Deno.readTextFile(new URL("ca.pem", base)),
      cert: await Deno.readTextFile(new URL("cert.pem", base)),
      key: await Deno.readTextFile(new URL("key.pem", base)),
      source: "fixture",
    };
  }
  try {
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    await run("openssl", [
      "req",
      "-x509",
      ...ec,
      "-nodes",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "2",
      "-subj",
      "/CN=dprl test CA",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    ], dir);
    await run("openssl", [
      "req",
      ...ec,
      "-nodes",
      "-keyout",
      "key.pem",
      "-out",
      "cert.csr",
      "-subj",
      "/CN=localhost",
    ], dir);
    await Deno.writeTextFile(
      `${dir}/ext.cnf`,
      "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n" +
        "basicConstraints=critical,CA:FALSE\n" +
        "keyUsage=critical,digitalSignature\n" +
        "extendedKeyUsage=serverAuth\n",
    );
    await run("openssl", [
      "x509",
      "-req",
      "-in",
      "cert.csr",
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      "cert.pem",
      "-days",
      "2",
      "-extfile",
      "ext.cnf",
    ], dir);
    return {
      ca: await Deno.readTextFile(`${dir}/ca.pem`),
      cert: await Deno.readTextFile(`${dir}/cert.pem`),
      key: await Deno.readTextFile(`${dir}/key.pem`),
      source: "openssl",
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** True when this machine can listen on the IPv6 loopback. */
export function ipv6Available(): boolean {
  try {
    const l = Deno.listen({ hostname: "::1", port: 0 });
    l.close();
    return true;
  } catch {
    return false;
  }
}

/** A raw TCP server that answers once the client has finished sending. */
export interface EofUpstream extends AsyncDisposable {
  /** The port it listens on. */
  readonly port: number;
  /** `127.0.0.1:port`. */
  readonly authority: string;
  /** Connections that reached EOF of the client's side. */
  readonly sawEof: number;
  /** Stops it and closes every connection. */
  close(): Promise<void>;
}

/**
 * Starts a raw TCP server that reads until the client half-closes (EOF),
 * then writes `received N bytes SHA256` and closes. Only a proxy that passes
 * a half-close on (and keeps the other direction open) gets the reply back.
 */
export function startEofUpstream(): EofUpstream {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const conns = new Set<BufferedConn>();
  const handlers = new Set<Promise<void>>();
  let sawEof = 0;
  const acceptLoop = (async () => {
    while (true) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch {
        return;
      }
      const c = new BufferedConn(conn);
      conns.add(c);
      const h = (async () => {
        try {
          const data = await c.readToEnd(Infinity);
          sawEof++;
          await c.write(
            `received ${data.length} bytes ${await sha256(data)}\n`,
            Infinity,
          );
        } catch {
          // peer gone
        } finally {
          c.close();
        }
      })().finally(() => {
        conns.delete(c);
        handlers.delete(h);
      });
      handlers.add(h);
    }
  })();
  const close = async () => {
    try {
      listener.close();
    } catch {
      // closed
    }
    await acceptLoop;
    for (const c of conns) c.close();
    await Promise.all([...handlers]);
  };
  return {
    port,
    authority: `127.0.0.1:${port}`,
    get sawEof() {
      return sawEof;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** A port on 127.0.0.1 that nothing listens on (bound, then closed). */
export function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A listener whose accept queue is full: a new connect to it hangs. */
export interface BlackHole extends Disposable {
  /** `127.0.0.1:port`. */
  readonly authority: string;
  /** The port. */
  readonly port: number;
}

/**
 * Makes a port where a TCP connect hangs instead of failing: a listener that
 * never accepts, its accept queue filled by connections made here. The
 * queue is known to be full when a probe connect has not completed within a
 * generous bound (a local connect with room takes microseconds); the probe
 * is then aborted.
 */
export async function blackHole(): Promise<BlackHole> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const conns: Deno.Conn[] = [];
  const close = () => {
    for (const c of conns) c.close();
    listener.close();
  };
  try {
    for (let i = 0; i < 100_000; i++) {
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), 2_000);
      try {
        conns.push(await Deno.connect({ hostname: "127.0.0.1", port, signal: abort.signal }));
      } catch (e) {
        if (abort.signal.aborted) break;
        throw e;
      } finally {
        clearTimeout(timer);
      }
    }
  } catch (e) {
    close();
    throw e;
  }
  return { authority: `127.0.0.1:${port}`, port, [Symbol.dispose]: close };
}

/** A raw TCP echo server, for tunnels that stay open. */
export interface EchoUpstream extends AsyncDisposable {
  /** The port it listens on (127.0.0.1). */
  readonly port: number;
  /** Connections open right now. */
  readonly open: number;
}

/** Starts a TCP server on 127.0.0.1 that holds every connection and echoes what it reads. */
export function startEchoUpstream(): EchoUpstream {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const closeQuietly = (conn: Deno.Conn) => {
    try {
      conn.close();
    } catch {
      // already closed
    }
  };
  const loop = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      (async () => {
        const buf = new Uint8Array(1024);
        try {
          for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
            await conn.write(buf.subarray(0, n));
          }
        } catch {
          // closed
        } finally {
          conns.delete(conn);
          closeQuietly(conn);
        }
      })();
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    get open() {
      return conns.size;
    },
    async [Symbol.asyncDispose]() {
      listener.close();
      for (const c of conns) closeQuietly(c);
      await loop;
    },
  };
}
