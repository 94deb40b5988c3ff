/**
 * Where an upstream connection goes and how it is dialed: the addresses of
 * the host, checked by the destination policy, or the least busy parent
 * proxy, and the dial itself within its signal.
 *
 * @module
 */
import type { DestinationPolicy } from "../access/destination_policy.ts";
import { resolveHost } from "../access/resolve.ts";
import type { BufferedReader } from "./buffered_reader.ts";
import {
  dialParent,
  type ParentConn,
  type ParentProxies,
  type ParentProxy,
  ParentProxyError,
} from "./parent_proxy.ts";

const IP_LITERAL = /^(?:[0-9.]+|.*:.*)$/;

/** Largest answer head a parent proxy may send to a `CONNECT`. */
const MAX_PARENT_HEAD = 64 * 1024;

/** A socket just dialed: straight to the host, or through a parent proxy (`via`). */
export interface Dialed {
  /** The socket. */
  conn: ParentConn;
  /** The buffer it was read through already (a parent's answer to `CONNECT`). */
  reader?: BufferedReader;
  /** The parent proxy it goes through. */
  via?: ParentProxy;
}

/** What {@linkcode upstreamAddresses} checks and resolves with. */
export interface AddressOptions {
  /** Where the proxy may connect. */
  destinations?: DestinationPolicy;
  /** The parent proxies, when connections go through them. */
  parents?: ParentProxies;
  /** Time a name may take to resolve, in ms. */
  connectTimeout: number;
}

/**
 * The addresses to dial for `hostname:port`, checked by the destination
 * policy: resolved before a slot is taken (a name that does not resolve
 * fails as dns_error and costs no slot); through parent proxies, the name
 * itself, checked by name (the parent resolves it).
 */
export async function upstreamAddresses(
  o: AddressOptions,
  hostname: string,
  port: number,
): Promise<string[]> {
  if (o.parents) {
    await o.destinations?.check(hostname, port, { resolve: false });
    return [hostname];
  }
  const addresses = o.destinations ? await o.destinations.check(hostname, port) : [hostname];
  if (addresses.length === 1 && !IP_LITERAL.test(addresses[0])) {
    return await resolveHost(addresses[0], o.connectTimeout);
  }
  return addresses;
}

/** What {@linkcode dialUpstream} dials. */
export interface DialOptions {
  /** The host key, for errors. */
  key: string;
  /** The host and port. */
  hostname: string;
  port: number;
  /** Its checked addresses, tried in turn. */
  addresses: string[];
  /** For plain HTTP (through a parent: no `CONNECT`, absolute-form requests). */
  http: boolean;
  /** Aborts the dial: the connect timeout passed, or the client left. */
  signal: AbortSignal;
}

/**
 * Dials the host (its addresses in turn) or, with `parents`, the least busy
 * parent that is up. Throws the dial's error, or a `ParentProxyError`.
 */
export async function dialUpstream(
  parents: ParentProxies | undefined,
  o: DialOptions,
): Promise<Dialed> {
  if (parents) return await viaParent(parents, o);
  for (let i = 0;; i++) {
    try {
      o.signal.throwIfAborted();
      const conn = await Deno.connect({ hostname: o.addresses[i], port: o.port, signal: o.signal });
      conn.setNoDelay(true);
      return { conn };
    } catch (err) {
      // The next checked address, while time is left.
      if (i + 1 >= o.addresses.length || o.signal.aborted) throw err;
    }
  }
}

async function viaParent(parents: ParentProxies, o: DialOptions): Promise<Dialed> {
  const via = parents.pick();
  try {
    const host = o.hostname.includes(":") ? `[${o.hostname}]` : o.hostname;
    const { conn, reader } = await dialParent(via, {
      connectTo: o.http ? undefined : `${host}:${o.port}`,
      key: o.key,
      signal: o.signal,
      maxHead: MAX_PARENT_HEAD,
    });
    parents.succeeded(via);
    via.open++;
    return { conn, reader, via };
  } catch (err) {
    // A parent that answered is up, unless it refuses dprl's credentials.
    if (!(err instanceof ParentProxyError && err.failure === "status" && err.status !== 407)) {
      parents.failed(via);
    }
    throw err;
  }
}
