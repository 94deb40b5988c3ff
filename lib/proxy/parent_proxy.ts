/**
 * Parent proxies: the `--upstream-proxy` URLs, which of them a new upstream
 * connection goes through (the fewest open connections first, skipping one
 * that failed to connect for a growing while), and the dial through one:
 * TCP or TLS to the parent, then, for a tunnel, a `CONNECT` answered 2xx.
 * The parent's credentials go in `Proxy-Authorization` to the parent only;
 * a parent is shown everywhere else by its origin, without them.
 *
 * @module
 */
import { BufferedReader, writeAll } from "./buffered_reader.ts";
import { encodeHead, field, parseResponseHead, type ResponseHead } from "./http_head.ts";
import { ParentError } from "./errors.ts";
import { type ParentUrl, parseParentUrl } from "./parent_url.ts";

/** The first back-off of a parent that failed to connect, in milliseconds. */
const BACKOFF_MIN_MS = 1_000;
/** The longest back-off, in milliseconds. */
const BACKOFF_MAX_MS = 30_000;
/** Largest response head a parent may send to a CONNECT. */
const MAX_HEAD = 16 * 1024;

/** One parent proxy: its URL, its open connections and its back-off. */
export class ParentProxy {
  /** Its URL's parts. */
  readonly url: ParentUrl;
  /** Connections open through it now. */
  open = 0;
  /** Failed connects in a row. */
  #failures = 0;
  /** Until when it is skipped (ms since epoch). */
  #skipUntil = 0;

  /** A parent for `url`. */
  constructor(url: ParentUrl) {
    this.url = url;
  }

  /** Whether it is skipped after failing to connect, at `now`. */
  backedOff(now: number): boolean {
    return now < this.#skipUntil;
  }

  /** Until when it is skipped (ms since epoch; in the past: not skipped). */
  get skipUntil(): number {
    return this.#skipUntil;
  }

  /** It failed to connect: skipped for 1 s, doubling with each failure in a row up to 30 s. */
  failed(now = Date.now()): void {
    const wait = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.#failures);
    this.#failures++;
    this.#skipUntil = now + wait;
  }

  /** It connected: its back-off starts over. */
  succeeded(): void {
    this.#failures = 0;
    this.#skipUntil = 0;
  }

  /**
   * The `Proxy-Authorization` line for the parent, when it has credentials;
   * never sent anywhere else.
   */
  get authLines(): string[] {
    return this.url.authorization ? [`Proxy-Authorization: ${this.url.authorization}`] : [];
  }
}

/** A connection through a parent, ready for the target's bytes. */
export interface ParentConn {
  /** The socket to the parent. */
  conn: Deno.TcpConn | Deno.TlsConn;
  /** Its read buffer (bytes after a `CONNECT` answer stay in it). */
  reader: BufferedReader;
  /** The parent it goes through. */
  parent: ParentProxy;
}

/** Options of {@linkcode ParentProxies.connect}. */
export interface ParentConnectOptions {
  /** The host key of the target, for errors. */
  key: string;
  /** The target as `host:port` (IPv6 in brackets), for a `CONNECT`. */
  authority: string;
  /** A tunnel: `CONNECT` through the parent; else plain HTTP to it. */
  tunnel: boolean;
  /** Aborts the dial: the deadline passed or the client left. */
  signal: AbortSignal;
  /** Whether the deadline passed (an abort is a timeout, not the client leaving). */
  timedOut: () => boolean;
}

/** The parents a proxy may go through, by origin. */
export class ParentProxies {
  readonly #all: ParentProxy[];
  readonly #byOrigin = new Map<string, ParentProxy>();
  /** The parents of each `via` seen (rules name few). */
  readonly #routes = new Map<string, ParentProxy[]>();
  /** The parents of hosts whose rule names none: every `--upstream-proxy`. */
  readonly defaults: readonly ParentProxy[];

  /** Parses `urls`; throws a `RangeError` (without passwords) for a bad one. */
  constructor(urls: readonly string[] = []) {
    this.#all = [];
    for (const text of urls) this.#add(parseParentUrl(text));
    this.defaults = [...this.#all];
  }

  #add(url: ParentUrl): ParentProxy {
    const known = this.#byOrigin.get(url.origin);
    if (known) return known;
    const parent = new ParentProxy(url);
    this.#byOrigin.set(url.origin, parent);
    this.#all.push(parent);
    return parent;
  }

  /** Every parent known so far, the defaults first. */
  get all(): readonly ParentProxy[] {
    return this.#all;
  }

  /**
   * The parents a host's rule sends it through: `via` as the rules give it
   * (`"direct"`, or comma-separated origins, which take the credentials of
   * the `--upstream-proxy` of the same origin), or the defaults when the
   * rule says nothing. An empty list: direct.
   */
  route(via: string | undefined): readonly ParentProxy[] {
    if (via === undefined) return this.defaults;
    if (via === "direct") return [];
    let route = this.#routes.get(via);
    if (!route) {
      route = via.split(",").map((origin) =>
        this.#byOrigin.get(origin) ?? this.#add(parseParentUrl(origin))
      );
      this.#routes.set(via, route);
    }
    return route;
  }

  /**
   * Opens a connection to the target through one of `parents`: the one
   * with the fewest open connections among those not backed off; one that
   * cannot be reached, times out or closes before answering is backed off
   * and the next is tried while time is left. Throws {@linkcode ParentError}.
   */
  async connect(parents: readonly ParentProxy[], o: ParentConnectOptions): Promise<ParentConn> {
    const tried = new Set<ParentProxy>();
    let last: ParentError | undefined;
    for (;;) {
      const parent = pick(parents, tried, Date.now());
      if (!parent) {
        throw last ?? new ParentError({
          key: o.key,
          nextHop: soonest(parents).url.authority,
          failure: "unavailable",
          details: "every parent proxy failed to connect lately",
        });
      }
      tried.add(parent);
      try {
        const up = await dialParent(parent, o);
        parent.succeeded();
        parent.open++;
        return up;
      } catch (err) {
        if (err instanceof ParentError && err.failure === "status") throw err;
        const timedOut = o.timedOut();
        last = new ParentError({
          key: o.key,
          nextHop: parent.url.authority,
          failure: timedOut ? "timeout" : "unavailable",
          cause: err,
        });
        parent.failed();
        if (o.signal.aborted) throw last;
      }
    }
  }
}

/** The parent with the fewest open connections, not backed off and not tried. */
function pick(
  parents: readonly ParentProxy[],
  tried: Set<ParentProxy>,
  now: number,
): ParentProxy | undefined {
  let best: ParentProxy | undefined;
  for (const p of parents) {
    if (tried.has(p) || p.backedOff(now)) continue;
    if (!best || p.open < best.open) best = p;
  }
  return best;
}

/** The parent whose back-off ends first. */
function soonest(parents: readonly ParentProxy[]): ParentProxy {
  return parents.reduce((a, b) => b.skipUntil < a.skipUntil ? b : a);
}

/**
 * Dials `parent` and, for a tunnel, asks it to `CONNECT` to the target.
 * Throws {@linkcode ParentError} `status` when the parent answers other than
 * 2xx, or the dial's error.
 */
async function dialParent(parent: ParentProxy, o: ParentConnectOptions): Promise<ParentConn> {
  o.signal.throwIfAborted();
  const { hostname, port, tls } = parent.url;
  const tcp = await Deno.connect({ hostname, port, signal: o.signal });
  tcp.setNoDelay(true);
  let conn: Deno.TcpConn | Deno.TlsConn = tcp;
  // An abort closes the socket: a handshake or an answer awaited fails.
  const abort = () => conn.close();
  o.signal.addEventListener("abort", abort, { once: true });
  try {
    if (tls) conn = await Deno.startTls(tcp, { hostname });
    const reader = new BufferedReader(conn);
    if (o.tunnel) await handshake(conn, reader, parent, o);
    return { conn, reader, parent };
  } catch (err) {
    try {
      conn.close();
    } catch { /* closed by the abort */ }
    throw err;
  } finally {
    o.signal.removeEventListener("abort", abort);
  }
}

/** Sends `CONNECT target` to the parent and reads its answer; 2xx opens the tunnel. */
async function handshake(
  conn: Deno.Conn,
  reader: BufferedReader,
  parent: ParentProxy,
  o: ParentConnectOptions,
): Promise<void> {
  await writeAll(
    conn,
    encodeHead(`CONNECT ${o.authority} HTTP/1.1`, [`Host: ${o.authority}`, ...parent.authLines]),
  );
  const head = await reader.readHead(MAX_HEAD);
  if (head === null) throw new Error("The parent proxy closed the connection");
  const res = parseResponseHead(head);
  if (res.status >= 200 && res.status < 300) return;
  throw new ParentError({
    key: o.key,
    nextHop: parent.url.authority,
    failure: "status",
    status: res.status,
  });
}

/**
 * Whether a response that came through `parent` to a plain-HTTP request is
 * the parent's own refusal rather than the target's answer: a 407 (its
 * challenge is not the client's), or an error that names itself as a
 * proxy's (`Proxy-Status` with an `error`, as dprl sends, or squid's
 * `X-Squid-Error`). Returns the {@linkcode ParentError} to answer with.
 */
export function parentRefusal(
  parent: ParentProxy,
  key: string,
  res: ResponseHead,
): ParentError | null {
  const own = res.status >= 400 &&
    (/(^|;)\s*error=/i.test(field(res, "proxy-status") ?? "") ||
      field(res, "x-squid-error") !== undefined);
  if (res.status !== 407 && !own) return null;
  return new ParentError({
    key,
    nextHop: parent.url.authority,
    failure: "status",
    status: res.status,
  });
}
