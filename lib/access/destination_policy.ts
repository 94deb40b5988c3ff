/**
 * Where the proxy may connect: `--allow` and `--deny` rules, `--deny-private`,
 * and the addresses that are always refused (the proxy's own listener and the
 * Redis it uses).
 *
 * @module
 */

import { HttpError } from "../proxy/http_head.ts";
import { embeddedIpv4, formatIp, type IpAddress, parseCidr, parseIp, unmapIp } from "./cidr.ts";
import {
  type DestinationRule,
  matchesAddress,
  matchesName,
  normalizeHost,
  parseDestinationRule,
} from "./destination_rule.ts";
import { isPrivateAddress } from "./private_address.ts";
import { resolveHost } from "./resolve.ts";
import { DEFAULTS } from "../defaults.ts";

/** Options of a {@linkcode DestinationPolicy}. */
export interface DestinationPolicyOptions {
  /** Rules a destination must match one of, when any is given. */
  allow?: string[];
  /** Rules that refuse a destination; they win over `allow`. */
  deny?: string[];
  /** Refuse loopback, private, link-local, multicast and other non-public addresses. */
  denyPrivate?: boolean;
  /** Time a name resolution may take, in milliseconds. Default: the connect timeout. */
  resolveTimeout?: number;
}

/** The `Proxy-Status` error of a refused destination. */
export type DestinationRefusal = "destination_ip_prohibited" | "destination_not_allowed";

/** A destination the policy refuses: status 403 with a `Proxy-Status` error. */
export class DestinationRefusedError extends HttpError {
  /** The `Proxy-Status` error. */
  declare readonly proxyError: DestinationRefusal;

  /** A refusal with a one-line `message`. */
  constructor(message: string, proxyError: DestinationRefusal) {
    super(403, message, proxyError);
    this.name = "DestinationRefusedError";
  }
}

const LOOPBACK_OR_UNSPECIFIED = ["127.0.0.0/8", "0.0.0.0/8", "::1/128", "::/128"].map((c) =>
  parseCidr(c)!
);
const INTERFACES_TTL_MS = 5_000;
const HOST_NAME = /^(?=.{1,253}$)[a-z0-9_-]+(\.[a-z0-9_-]+)*$/;
/** What a refused fleet address is, in the refusal. */
const FLEET_MEMBER = "a proxy or admin server of the fleet";

/**
 * Checks destinations before the proxy dials them, and tells it which
 * addresses to dial so that the address checked is the address connected to.
 *
 * Name rules (host globs, ports) are checked on the name as the client sent
 * it; address rules (CIDRs, `denyPrivate`, the protected addresses) on every
 * address the name resolves to. A name is refused when any of its addresses
 * is refused: a name that points partly at a private network is treated as
 * private, and what is dialed is always a subset of what was checked.
 */
export class DestinationPolicy {
  readonly #allow: DestinationRule[];
  readonly #deny: DestinationRule[];
  readonly #allowNames: DestinationRule[];
  readonly #allowAddresses: DestinationRule[];
  readonly #denyAddresses: boolean;
  readonly #denyPrivate: boolean;
  readonly #resolveTimeout: number;
  /** This proxy's own addresses and its Redis. */
  readonly #own: ProtectedAddresses;
  /** The proxy and admin addresses of the other workers of the fleet. */
  #fleet: ProtectedAddresses;
  #interfaces = new Set<string>();
  #interfacesAt = -Infinity;
  #interfacesVisible = false;

  /** Parses the rules; throws a `RangeError` with a one-line message on a bad one. */
  constructor(options: DestinationPolicyOptions) {
    this.#allow = (options.allow ?? []).map(parseDestinationRule);
    this.#deny = (options.deny ?? []).map(parseDestinationRule);
    this.#allowNames = this.#allow.filter((r) => r.host !== undefined);
    this.#allowAddresses = this.#allow.filter((r) => r.cidr !== undefined);
    this.#denyAddresses = this.#deny.some((r) => r.cidr !== undefined);
    this.#denyPrivate = options.denyPrivate ?? false;
    this.#resolveTimeout = options.resolveTimeout ?? DEFAULTS.timeouts.connect;
    this.#own = this.#protectedAddresses("this proxy or its Redis");
    this.#fleet = this.#protectedAddresses(FLEET_MEMBER);
  }

  #protectedAddresses(what: string): ProtectedAddresses {
    return new ProtectedAddresses({
      what,
      isLocal: (ip) => this.#isLocal(ip),
      resolveTimeout: this.#resolveTimeout,
    });
  }

  /**
   * Whether this machine's interface addresses are known (`--allow-sys` for
   * network interfaces). Without them, a listener on `0.0.0.0` or `::` is
   * protected on its loopback and unspecified addresses only.
   */
  get interfacesVisible(): boolean {
    this.#localAddresses();
    return this.#interfacesVisible;
  }

  /**
   * Refuses `hostname:port` from now on, whatever the rules say: the proxy's
   * own listening address, the Redis it uses. A host name is resolved now
   * (and again later while it does not resolve). An address of this machine,
   * or a wildcard (`0.0.0.0`, `::`, empty), protects the port on every local
   * address: loopback, unspecified and, when visible, each interface's.
   */
  async protect(hostname: string, port: number): Promise<void> {
    await this.#own.add(hostname, port);
  }

  /**
   * Refuses the proxy and admin addresses of the fleet's other workers
   * (from the worker registry), protected as {@linkcode protect} does;
   * replaces the previous list, so that a worker that left is reachable
   * again. Resolves once the new list is in force.
   */
  async protectFleet(members: readonly { hostname: string; port: number }[]): Promise<void> {
    const next = this.#protectedAddresses(FLEET_MEMBER);
    for (const { hostname, port } of members) await next.add(hostname, port);
    this.#fleet = next;
  }

  /**
   * Whether `hostname:port` is a protected address (this proxy, its Redis,
   * a fleet member): a parent proxy there would send traffic round in a
   * loop. A name that does not resolve is not known to be one.
   */
  async protects(hostname: string, port: number): Promise<boolean> {
    const guards = [this.#own, this.#fleet].filter((g) => g.guards(port));
    if (guards.length === 0) return false;
    const host = normalizeHost(hostname);
    const addresses = parseIp(host)
      ? [host]
      : await resolveHost(host, this.#resolveTimeout).catch(() => []);
    return addresses.some((text) => {
      const ip = parseIp(text);
      return ip !== null && guards.some((g) => g.has(ip, port));
    });
  }

  /**
   * Checks the destination `hostname:port` and returns the addresses to dial,
   * in order: the IP literal itself, the resolved addresses, or — when no rule
   * depends on addresses and `port` is not protected — the name itself, which
   * then needs no lookup here. With `resolve: false` (the destination is
   * reached through a parent proxy, which resolves it) a name is never
   * resolved: name rules apply, address rules apply to IP literals only,
   * `denyPrivate` refuses `localhost` names, and a name that only an
   * address rule could allow is refused. Throws a {@linkcode DestinationRefusedError}
   * (403) when refused, or an `HttpError`: 400 when the name is not a host
   * name or IP literal; 502 `dns_error` or 504 `dns_timeout` when an address
   * is needed and the name does not resolve.
   */
  async check(
    hostname: string,
    port: number,
    options: { resolve?: boolean } = {},
  ): Promise<string[]> {
    const host = normalizeHost(hostname);
    const literal = parseIp(host);
    if (!literal && !HOST_NAME.test(host)) {
      throw new HttpError(400, "Destination host name is malformed", "http_request_error");
    }
    const shown = literal?.family === 6 ? `[${host}]:${port}` : `${host}:${port}`;
    const nameMatches = (r: DestinationRule) =>
      (!literal || r.host === "*") && matchesName(r, host, port);

    const denied = this.#deny.find(nameMatches);
    if (denied) {
      throw new DestinationRefusedError(
        `Destination ${shown} is denied by rule "${denied.text}"`,
        "destination_not_allowed",
      );
    }
    const nameAllowed = this.#allow.length === 0 || this.#allowNames.some(nameMatches);
    if (!nameAllowed && this.#allowAddresses.length === 0) throw this.#notAllowed(shown);
    const guards = [this.#own, this.#fleet].filter((g) => g.guards(port));
    for (const g of guards) await g.retryPending();

    const needsAddresses = !nameAllowed || this.#denyPrivate || this.#denyAddresses ||
      guards.length > 0;
    if (!literal && !needsAddresses) return [host];
    for (const g of guards) if (!literal && g.isPending(host, port)) g.refuse(shown, host);
    if (!literal && options.resolve === false) {
      // A loop back through a parent: this machine's name on a protected port.
      if (isLocalName(host)) { for (const g of guards) g.refuse(shown, host); }
      return this.#checkName(host, shown, nameAllowed);
    }

    const addresses = literal ? [host] : await resolveHost(host, this.#resolveTimeout);
    for (const text of addresses) {
      const ip = parseIp(text);
      const where = literal ? shown : `${shown} (${text})`;
      if (!ip) {
        throw new DestinationRefusedError(
          `Destination ${where} is not an IP address`,
          "destination_ip_prohibited",
        );
      }
      for (const g of guards) if (g.has(ip, port)) g.refuse(shown, text);
      if (this.#denyPrivate && isPrivateAddress(ip)) {
        throw new DestinationRefusedError(
          `Destination ${where} is a private address`,
          "destination_ip_prohibited",
        );
      }
      const rule = this.#deny.find((r) => matchesAddress(r, ip, port));
      if (rule) {
        throw new DestinationRefusedError(
          `Destination ${where} is denied by rule "${rule.text}"`,
          "destination_ip_prohibited",
        );
      }
      if (!nameAllowed && !this.#allowAddresses.some((r) => matchesAddress(r, ip, port))) {
        throw this.#notAllowed(where);
      }
    }
    return addresses;
  }

  /** The checks of a name that is not resolved here: see {@linkcode check}. */
  #checkName(host: string, shown: string, nameAllowed: boolean): string[] {
    if (this.#denyPrivate && isLocalName(host)) {
      throw new DestinationRefusedError(
        `Destination ${shown} is a private address`,
        "destination_ip_prohibited",
      );
    }
    if (!nameAllowed) throw this.#notAllowed(shown);
    return [host];
  }

  #notAllowed(shown: string): DestinationRefusedError {
    return new DestinationRefusedError(
      `Destination ${shown} matches no allow rule`,
      "destination_not_allowed",
    );
  }

  #isLocal(ip: IpAddress): boolean {
    return LOOPBACK_OR_UNSPECIFIED.some((r) => r.contains(ip)) ||
      this.#localAddresses().has(formatIp(ip));
  }

  /** This machine's interface addresses, refreshed every few seconds. */
  #localAddresses(): Set<string> {
    const now = Date.now();
    if (now - this.#interfacesAt < INTERFACES_TTL_MS) return this.#interfaces;
    this.#interfacesAt = now;
    const granted =
      Deno.permissions.querySync({ name: "sys", kind: "networkInterfaces" }).state === "granted";
    this.#interfacesVisible = granted;
    if (!granted) return this.#interfaces;
    const found = new Set<string>();
    for (const nic of Deno.networkInterfaces()) {
      const ip = parseIp(nic.address);
      if (ip) found.add(formatIp(unmapIp(ip)));
    }
    this.#interfaces = found;
    return found;
  }
}

/** Whether `host` is `localhost` or a name under it (RFC 6761: always loopback). */
function isLocalName(host: string): boolean {
  return host === "localhost" || host.endsWith(".localhost");
}

/** Options of a {@linkcode ProtectedAddresses}. */
interface ProtectedAddressesOptions {
  /** What the addresses are, for the refusal: "this proxy or its Redis". */
  what: string;
  /** Whether an address is one of this machine's. */
  isLocal: (ip: IpAddress) => boolean;
  /** Time a name resolution may take, in milliseconds. */
  resolveTimeout: number;
}

/** A set of `address:port` that are refused in every spelling. */
class ProtectedAddresses {
  readonly #o: ProtectedAddressesOptions;
  /** Every protected port. */
  readonly #ports = new Set<number>();
  /** Ports protected on every address of this machine. */
  readonly #localPorts = new Set<number>();
  /** Protected remote addresses (canonical text) and their ports. */
  readonly #exact = new Map<string, Set<number>>();
  /** Protected names that did not resolve yet, and their ports. */
  readonly #pending = new Map<string, Set<number>>();
  #pendingAt = 0;

  constructor(options: ProtectedAddressesOptions) {
    this.#o = options;
  }

  /** Protects `hostname:port` (see {@linkcode DestinationPolicy.protect}). */
  async add(hostname: string, port: number): Promise<void> {
    const host = normalizeHost(hostname);
    this.#ports.add(port);
    if (host === "") {
      this.#localPorts.add(port);
      return;
    }
    let addresses: string[];
    if (parseIp(host)) {
      addresses = [host];
    } else {
      try {
        addresses = await resolveHost(host, this.#o.resolveTimeout);
      } catch {
        const ports = this.#pending.get(host) ?? new Set();
        this.#pending.set(host, ports.add(port));
        return;
      }
    }
    for (const text of addresses) {
      const ip = unmapIp(parseIp(text)!);
      if (this.#o.isLocal(ip)) {
        this.#localPorts.add(port);
      } else {
        const key = formatIp(ip);
        this.#exact.set(key, (this.#exact.get(key) ?? new Set()).add(port));
      }
    }
  }

  /** Whether some address is protected on `port`. */
  guards(port: number): boolean {
    return this.#ports.has(port);
  }

  /** Whether `host` is a protected name on `port` that did not resolve yet. */
  isPending(host: string, port: number): boolean {
    return this.#pending.get(host)?.has(port) ?? false;
  }

  /** Whether `ip:port` is protected, in any of the address's IPv6 spellings. */
  has(ip: IpAddress, port: number): boolean {
    if (!this.#ports.has(port)) return false;
    const addr = unmapIp(ip);
    for (const candidate of [addr, ...embeddedIpv4(addr)]) {
      if (this.#exact.get(formatIp(candidate))?.has(port)) return true;
      if (this.#localPorts.has(port) && this.#o.isLocal(candidate)) return true;
    }
    return false;
  }

  /** Throws the refusal of `shown`, which is (or resolved to) a protected `address`. */
  refuse(shown: string, address: string): never {
    const where = shown.startsWith(address) || shown.startsWith(`[${address}]`)
      ? shown
      : `${shown} (${address})`;
    throw new DestinationRefusedError(
      `Destination ${where} is ${this.#o.what}`,
      "destination_ip_prohibited",
    );
  }

  /** Resolves the pending names again, at most every few seconds. */
  async retryPending(): Promise<void> {
    if (this.#pending.size === 0) return;
    const now = Date.now();
    if (now - this.#pendingAt < INTERFACES_TTL_MS) return;
    this.#pendingAt = now;
    const pending = [...this.#pending];
    this.#pending.clear();
    for (const [host, ports] of pending) {
      for (const port of ports) await this.add(host, port);
    }
  }
}
