/**
 * Starts a {@linkcode ProxyRateLimiter} for a test on 127.0.0.1, port 0, and
 * gives its address for raw sockets and real proxy clients.
 *
 * @module
 */

import { ProxyRateLimiter, type ProxyRateLimiterOptions } from "../../mod.ts";
import { WAIT_MS, waitFor } from "./raw.ts";

/** A started proxy; `await using` stops it. */
export interface TestProxy extends AsyncDisposable {
  /** The proxy itself. */
  readonly proxy: ProxyRateLimiter;
  /** Its address, for `Deno.connect`. */
  readonly addr: { hostname: string; port: number };
  /** Its URL, e.g. `http://127.0.0.1:40123/`. */
  readonly url: string;
  /** Waits until the proxy counts `n` open connections to `host`. */
  waitCount(host: string, n: number, ms?: number): Promise<void>;
  /** Requests waiting here for a slot of `host`, as `GET /api/hosts/{host}` reports them. */
  queued(host: string): Promise<number>;
  /** Waits until `n` requests wait here for a slot of `host`. */
  waitQueued(host: string, n: number, ms?: number): Promise<void>;
}

/** Starts a proxy with these options (port 0 and 127.0.0.1 by default). */
export async function startProxy(
  options: ProxyRateLimiterOptions = {},
): Promise<TestProxy> {
  const proxy = new ProxyRateLimiter({
    port: 0,
    hostname: "127.0.0.1",
    ...options,
  });
  await proxy.start();
  const url = proxy.proxyUrl;
  if (!url) throw new Error("proxyUrl is null after start()");
  const admin = proxy.adminHandler();
  const queued = async (host: string): Promise<number> => {
    const res = await admin(new Request(`http://admin/api/hosts/${encodeURIComponent(host)}`));
    return (await res.json()).queued;
  };
  return {
    proxy,
    addr: { hostname: url.hostname, port: Number(url.port) },
    url: url.href,
    async waitCount(host: string, n: number, ms = WAIT_MS) {
      let last = -1;
      await waitFor(
        async () => (last = await proxy.activeConnectionsForHost(host)) === n,
        () => `${n} active connections to ${host} (have ${last})`,
        ms,
      );
    },
    queued,
    async waitQueued(host: string, n: number, ms = WAIT_MS) {
      let last = -1;
      await waitFor(
        async () => (last = await queued(host)) === n,
        () => `${n} requests waiting for ${host} (have ${last})`,
        ms,
      );
    },
    [Symbol.asyncDispose]: () => proxy.stop({ graceMs: 1000 }),
  };
}

/** A CONNECT request for `authority`. */
export function connectRequest(authority: string): string {
  return `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`;
}
