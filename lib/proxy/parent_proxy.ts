/**
 * Parent proxies: the proxies dprl goes out through, which one a new
 * upstream connection takes, and the dial through one (a `CONNECT` for a
 * tunnel; for plain HTTP, a connection that absolute-form requests go on).
 *
 * @module
 */
import { BufferedReader, writeAll } from "./buffered_reader.ts";
import { encodeLatin1, parseResponseHead } from "./http_head.ts";

/** The connection to a parent, as the engine reads and writes it. */
export type ParentConn = Pick<Deno.Conn, "read" | "write" | "close" | "closeWrite">;

/** One parent proxy and its state. */
export interface ParentProxy {
  /** `host:port`, as `Proxy-Status` and logs name it (never the credentials). */
  readonly label: string;
  /** The host to dial (no brackets around an IPv6 address). */
  readonly hostname: string;
  /** The port to dial. */
  readonly port: number;
  /** The parent speaks TLS (`https://`). */
  readonly tls: boolean;
  /** CA certificates (PEM) its certificate is checked against; absent: the system's. */
  readonly caCerts?: string[];
  /** `Proxy-Authorization` value for the parent, from the URL's user and password. */
  readonly authorization?: string;
  /** Upstream connections open through it. */
  open: number;
  /** Dials failed in a row. */
  failures: number;
  /** Not used for new connections before this time (ms since epoch) while others are up. */
  downUntil: number;
}

/** The longest a failing parent is left out, in ms; the first time 1 s, doubling. */
const MAX_BACKOFF_MS = 30_000;

/**
 * Parses a parent proxy URL: `http://` or `https://`, optional
 * `user:password@`, a host and an optional port (80 or 443 by default).
 * Throws a `TypeError` naming what is wrong, never the password.
 */
export function parseParentProxy(text: string, caCerts?: string[]): ParentProxy {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new TypeError(`Parent proxy "${redact(text)}" is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`Parent proxy ${redact(text)} must be an http:// or https:// URL`);
  }
  if ((url.pathname !== "/" && url.pathname !== "") || url.search || url.hash) {
    throw new TypeError(`Parent proxy ${redact(text)} must have no path, query or fragment`);
  }
  const tls = url.protocol === "https:";
  const port = url.port ? Number(url.port) : tls ? 443 : 80;
  const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const user = decodeURIComponent(url.username), password = decodeURIComponent(url.password);
  return {
    label: `${url.hostname}:${port}`,
    hostname,
    port,
    tls,
    caCerts,
    authorization: user || password ? `Basic ${base64(`${user}:${password}`)}` : undefined,
    open: 0,
    failures: 0,
    downUntil: 0,
  };
}

/** `text` with the password of a URL in it replaced by `***`. */
export function redact(text: string): string {
  return text.replace(/\/\/([^/@:]*):[^/@]*@/, "//$1:***@");
}

/** The parents configured, and which one a new connection takes. */
export class ParentProxies {
  readonly list: readonly ParentProxy[];

  /**
   * Parses every URL; throws a `TypeError` on the first bad one. `ca`: PEM
   * CA certificates that `https://` parents' certificates are checked against.
   */
  constructor(urls: readonly string[], ca?: string) {
    this.list = urls.map((url) => parseParentProxy(url, ca === undefined ? undefined : [ca]));
  }

  /**
   * The parent for a new connection: of those not left out after failing,
   * the one with the fewest open connections; when all are left out, the one
   * back soonest.
   */
  pick(now = Date.now()): ParentProxy {
    let best: ParentProxy | undefined;
    for (const p of this.list) {
      const up = p.downUntil <= now;
      if (!best) best = p;
      else if (up && (best.downUntil > now || p.open < best.open)) best = p;
      else if (!up && best.downUntil > now && p.downUntil < best.downUntil) best = p;
    }
    return best!;
  }

  /** A dial through `p` failed: it is left out for 1 s, doubling with each failure in a row up to 30 s. */
  failed(p: ParentProxy, now = Date.now()): void {
    p.failures++;
    p.downUntil = now + Math.min(MAX_BACKOFF_MS, 1000 * 2 ** (p.failures - 1));
  }

  /** A dial through `p` worked. */
  succeeded(p: ParentProxy): void {
    p.failures = 0;
    p.downUntil = 0;
  }
}

/** Why going through a parent failed. */
export type ParentFailure = "refused" | "timeout" | "unavailable" | "status";

/** A parent proxy could not be reached or would not open the way to the target. */
export class ParentProxyError extends Error {
  /** The target's host key. */
  readonly key: string;
  /** The parent, `host:port`. */
  readonly parent: string;
  /** What went wrong. */
  readonly failure: ParentFailure;
  /** The parent's status, when it answered with one other than 2xx. */
  readonly status?: number;

  /** Creates the error; `cause` is logged, never sent to the client. */
  constructor(
    options: { key: string; parent: string; failure: ParentFailure; status?: number },
    cause?: unknown,
  ) {
    super(parentMessage(options), { cause });
    this.name = "ParentProxyError";
    this.key = options.key;
    this.parent = options.parent;
    this.failure = options.failure;
    this.status = options.status;
  }
}

function parentMessage(
  o: { key: string; parent: string; failure: ParentFailure; status?: number },
) {
  switch (o.failure) {
    case "refused":
      return `Parent proxy ${o.parent} refused the connection`;
    case "timeout":
      return `Parent proxy ${o.parent} did not answer in time for ${o.key}`;
    case "unavailable":
      return `Cannot connect to parent proxy ${o.parent}`;
    case "status":
      return `Parent proxy ${o.parent} answered ${o.status} to CONNECT ${o.key}`;
  }
}

/** Options of {@linkcode dialParent}. */
export interface DialParentOptions {
  /** The target, `host:port` as a `CONNECT` names it; absent: a connection for plain HTTP. */
  connectTo?: string;
  /** The target's host key, for errors. */
  key: string;
  /** Aborts the dial (the connect timeout passed, or the client left). */
  signal: AbortSignal;
  /** Largest response head the parent may send to the `CONNECT`. */
  maxHead: number;
}

/**
 * Connects to `p` (TLS for an `https://` parent) and, for a tunnel, opens
 * it with a `CONNECT` carrying the parent's credentials. Resolves the
 * connection and its read buffer (bytes after the parent's answer stay in
 * it). Throws {@linkcode ParentProxyError}.
 */
export async function dialParent(
  p: ParentProxy,
  o: DialParentOptions,
): Promise<{ conn: ParentConn; reader: BufferedReader }> {
  const fail = (failure: ParentFailure, cause?: unknown, status?: number) =>
    new ParentProxyError({ key: o.key, parent: p.label, failure, status }, cause);
  let conn: Deno.TcpConn | Deno.TlsConn;
  try {
    const tcp = await Deno.connect({ hostname: p.hostname, port: p.port, signal: o.signal });
    tcp.setNoDelay(true);
    conn = tcp;
    if (p.tls) {
      const tls = await Deno.startTls(tcp, { hostname: p.hostname, caCerts: p.caCerts });
      conn = tls;
      await abortable(tls.handshake(), o.signal, () => tls.close());
    }
  } catch (err) {
    if (o.signal.aborted) throw fail("timeout", err);
    throw fail(err instanceof Deno.errors.ConnectionRefused ? "refused" : "unavailable", err);
  }
  const reader = new BufferedReader(conn);
  if (o.connectTo === undefined) return { conn, reader };
  try {
    const lines = [`CONNECT ${o.connectTo} HTTP/1.1`, `Host: ${o.connectTo}`];
    if (p.authorization) lines.push(`Proxy-Authorization: ${p.authorization}`);
    await writeAll(conn, encodeLatin1(`${lines.join("\r\n")}\r\n\r\n`));
    const head = await abortable(reader.readHead(o.maxHead), o.signal, () => conn.close());
    if (head === null) throw fail("unavailable");
    const { status } = parseResponseHead(head);
    if (status < 200 || status >= 300) throw fail("status", undefined, status);
    return { conn, reader };
  } catch (err) {
    try {
      conn.close();
    } catch { /* closed already */ }
    if (err instanceof ParentProxyError) throw err;
    if (o.signal.aborted) throw fail("timeout", err);
    throw fail("unavailable", err);
  }
}

/** `promise`, rejected with the abort reason (after `onAbort`) when `signal` aborts first. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal, onAbort: () => void): Promise<T> {
  if (signal.aborted) {
    onAbort();
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const abort = () => {
      onAbort();
      reject(signal.reason);
    };
    signal.addEventListener("abort", abort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", abort));
  });
}

/** The Base64 of the UTF-8 bytes of `text`. */
function base64(text: string): string {
  return btoa(Array.from(new TextEncoder().encode(text), (b) => String.fromCharCode(b)).join(""));
}
