/**
 * Who may use the proxy: a client address allow-list and proxy
 * authentication.
 *
 * @module
 */

import { type Cidr, parseCidr, parseIp } from "./cidr.ts";
import { ProxyAuth } from "./proxy_auth.ts";
import { DEFAULTS } from "../defaults.ts";
import { boundedMemo } from "../bounded_memo.ts";

export { AuthBusyError, checkUsers, PROXY_AUTHENTICATE } from "./proxy_auth.ts";

/** Client addresses whose answer is remembered, at most. */
const SEEN_MAX = 4096;

/** Options of a {@linkcode ClientPolicy}. */
export interface ClientPolicyOptions {
  /** Client CIDRs; default loopback and the private ranges. */
  allowClients?: string[];
  /** Users: name -> password or bcrypt hash. Authentication is on when any is given. */
  users?: Map<string, string>;
}

const DEFAULT_CLIENTS: Cidr[] = DEFAULTS.allowClients.map((c) => parseCidr(c)!);
const LOOPBACK = ["127.0.0.0/8", "::1/128"].map((c) => parseCidr(c)!);

/**
 * Decides whether a client may use the proxy.
 *
 * - Without authentication, a client must come from an address in the
 *   allow-list (default {@linkcode DEFAULTS.allowClients}).
 * - With authentication, every request must carry valid credentials; a client
 *   may connect from any address unless `allowClients` was given explicitly,
 *   in which case it must also come from an address in it.
 */
export class ClientPolicy {
  readonly #clients: Cidr[];
  readonly #explicit: boolean;
  readonly #auth: ProxyAuth;
  /** Whether an address is in the allowed ranges; clients come back, so the last answers are remembered. */
  readonly #admits = boundedMemo((address) => {
    const ip = parseIp(address);
    return ip !== null && this.#clients.some((cidr) => cidr.contains(ip));
  }, SEEN_MAX);

  /** Throws a `RangeError` with a one-line message on a bad CIDR. */
  constructor(options: ClientPolicyOptions) {
    this.#explicit = options.allowClients !== undefined;
    this.#clients = options.allowClients === undefined
      ? DEFAULT_CLIENTS
      : options.allowClients.map((text) => {
        const cidr = parseCidr(text.trim());
        if (!cidr) {
          throw new RangeError(`--allow-clients needs CIDRs such as 10.0.0.0/8, got "${text}"`);
        }
        return cidr;
      });
    this.#auth = new ProxyAuth(options.users ?? new Map());
  }

  /** Whether every request must carry valid `Proxy-Authorization`. */
  get authRequired(): boolean {
    return this.#auth.enabled;
  }

  /**
   * Whether a client at `address` may connect at all; checked once per
   * connection, before reading a request. IPv4-mapped IPv6 addresses match
   * their IPv4 form; a zone (`%eth0`) is ignored; an unparsable address is
   * refused.
   */
  admitsAddress(address: string): boolean {
    if (this.authRequired && !this.#explicit) return true;
    return this.#admits(address);
  }

  /**
   * The user named by a valid `Proxy-Authorization` value (Basic scheme), or
   * `null` (no, malformed or wrong credentials). Right plain passwords and
   * cached bcrypt results answer synchronously; a first bcrypt check is a
   * promise, which rejects with `AuthBusyError` when the client at
   * `address` has its share of bcrypt checks waiting.
   */
  authenticate(
    proxyAuthorization: string | undefined,
    address = "",
  ): Promise<string | null> | string | null {
    return this.#auth.authenticate(proxyAuthorization, address);
  }

  /**
   * A warning to log at start when the proxy, listening on `hostname`, is
   * reachable beyond loopback and admits clients from public addresses
   * without authentication; `undefined` otherwise.
   */
  exposureWarning(hostname: string): string | undefined {
    if (this.authRequired) return undefined;
    const listen = parseIp(hostname);
    if (hostname === "localhost" || (listen && LOOPBACK.some((c) => c.contains(listen)))) {
      return undefined;
    }
    const open = this.#clients.filter((c) => !DEFAULT_CLIENTS.some((d) => d.covers(c)));
    if (open.length === 0) return undefined;
    return `Open proxy: anyone at ${
      open.join(", ")
    } may use it without authentication; set DPRL_AUTH or --auth-file, or narrow --allow-clients`;
  }
}
