/**
 * Host name resolution for destination checks: the system resolver
 * (`getaddrinfo`, so `/etc/hosts` and `nsswitch.conf` apply exactly as they
 * do when a socket connects by name), bounded in time.
 *
 * @module
 */

import { lookup } from "node:dns/promises";
import { HttpError } from "../proxy/http_head.ts";
import { withTimeout } from "../with_timeout.ts";

/**
 * Resolves `hostname` to all its IPv4 and IPv6 addresses in the system
 * resolver's order. Needs only `--allow-net` for the name. Throws an
 * {@linkcode HttpError}: 502 `dns_error` when the name does not resolve, 504
 * `dns_timeout` when no answer comes within `timeoutMs`.
 */
export async function resolveHost(hostname: string, timeoutMs: number): Promise<string[]> {
  try {
    const found = await withTimeout(
      lookup(hostname, { all: true, order: "verbatim" }),
      timeoutMs,
      () => new HttpError(504, `Resolving ${hostname} timed out`, "dns_timeout"),
    );
    const addresses = [...new Set(found.map((a) => a.address))];
    if (addresses.length === 0) throw new Error("no addresses");
    return addresses;
  } catch (err) {
    if (err instanceof HttpError) throw err;
    // The system's reason (e.g. ENOTFOUND) goes to the log only.
    throw new HttpError(502, `Cannot resolve ${hostname}`, "dns_error", err);
  }
}
