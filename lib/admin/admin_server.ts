/**
 * The admin server: {@linkcode createAdminHandler} on its own `Deno.serve`
 * port, apart from the proxy port.
 *
 * @module
 */

import { DEFAULTS } from "../defaults.ts";
import { createAdminHandler } from "./admin_handler.ts";
import type { AdminSource } from "./admin_source.ts";
import { Problem } from "./problem.ts";

/** Options of {@linkcode startAdminServer}. */
export interface AdminServerOptions {
  /** What the server shows and changes. */
  source: AdminSource;
  /** Port; 0 picks a free one. */
  port: number;
  /** Address to listen on. Default `DEFAULTS.adminHostname` (127.0.0.1). */
  hostname?: string;
  /** Bearer token that every endpoint except the health checks needs. */
  token?: string;
  /** Most hosts given their own metric series. Default `DEFAULTS.metricsMaxHosts`. */
  metricsMaxHosts?: number;
}

/** A running admin server. */
export interface AdminServer {
  /** Where the server listens, for example `http://127.0.0.1:9090/`. */
  url: URL;
  /** Stops listening and waits for requests in flight. */
  close(): Promise<void>;
}

/**
 * Starts the admin server. A non-loopback address without a token is
 * refused with a RangeError, so that limits cannot be changed from the
 * network by anyone who reaches the port; without a token, requests must
 * also name a loopback host (`localhost`, `127.0.0.1`, `[::1]`), which
 * defeats DNS rebinding from a browser.
 *
 * @example
 * ```ts ignore
 * const admin = await startAdminServer({ source, port: 0 });
 * console.log(`metrics at ${new URL("/metrics", admin.url)}`);
 * await admin.close();
 * ```
 */
// deno-lint-ignore require-await
export async function startAdminServer(options: AdminServerOptions): Promise<AdminServer> {
  const hostname = options.hostname ?? DEFAULTS.adminHostname;
  checkAdminAddress(hostname, options.token);
  if (!Number.isSafeInteger(options.port) || options.port < 0 || options.port > 65535) {
    throw new RangeError(`Admin port must be an integer from 0 to 65535, got ${options.port}`);
  }
  const handler = createAdminHandler(options.source, {
    token: options.token,
    metricsMaxHosts: options.metricsMaxHosts,
  });
  const server = Deno.serve({
    hostname,
    port: options.port,
    onListen: () => {},
    onError: () => new Response("Internal Server Error", { status: 500 }),
  }, options.token === undefined ? loopbackNamesOnly(handler) : handler);
  const addr = server.addr;
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  return {
    url: new URL(`http://${host}:${addr.port}/`),
    close: () => server.shutdown(),
  };
}

/**
 * Without a token, answers only requests whose Host header names a loopback
 * address: a web page whose domain is re-pointed at 127.0.0.1 (DNS
 * rebinding) then cannot read the API or change limits from a browser.
 */
function loopbackNamesOnly(
  handler: (req: Request) => Promise<Response>,
): (req: Request) => Promise<Response> {
  return (req) => {
    if (isLoopback(new URL(req.url).hostname)) return handler(req);
    const detail = "Without an admin token the admin server answers only loopback host names";
    return Promise.resolve(new Problem(403, detail).response());
  };
}

/** Whether a listen address only accepts connections from this machine. */
export function isLoopback(hostname: string): boolean {
  const name = hostname.toLowerCase().replace(/^\[|\]$/g, "");
  return name === "localhost" || name === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(name);
}

/**
 * Whether an admin server on `hostname` without a token would answer the
 * network: the rule that a non-loopback address needs a token.
 *
 * @example
 * ```ts
 * import { exposedWithoutToken } from "./admin_server.ts";
 * exposedWithoutToken("0.0.0.0", undefined); // true
 * ```
 */
export function exposedWithoutToken(hostname: string, token: string | undefined): boolean {
  return token === undefined && !isLoopback(hostname);
}

/**
 * Throws a RangeError when an admin server on `hostname` would answer the
 * network without a token ({@linkcode exposedWithoutToken}).
 *
 * @example
 * ```ts
 * import { checkAdminAddress } from "./admin_server.ts";
 * checkAdminAddress("127.0.0.1", undefined); // fine
 * ```
 */
export function checkAdminAddress(hostname: string, token: string | undefined): void {
  if (exposedWithoutToken(hostname, token)) {
    throw new RangeError(
      `Admin address ${hostname} is not a loopback address; set an admin token to expose it`,
    );
  }
}
