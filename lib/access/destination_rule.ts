/**
 * One `--allow` or `--deny` rule: a host glob or a CIDR, with an optional
 * port or port range.
 *
 * @module
 */

import { type Cidr, type IpAddress, parseCidr } from "./cidr.ts";

/** A parsed destination rule. */
export interface DestinationRule {
  /** The rule as written. */
  readonly text: string;
  /** The host name or glob (lower case, no trailing dot), for a name rule. */
  readonly host?: string;
  /** The range, for an address rule. */
  readonly cidr?: Cidr;
  /** Lowest matching port (1 when no port is given). */
  readonly fromPort: number;
  /** Highest matching port (65535 when no port is given). */
  readonly toPort: number;
}

const LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;

function port(text: string, rule: string): number {
  if (!/^[0-9]{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) {
    throw new RangeError(`Rule "${rule}" has a bad port "${text}" (1-65535)`);
  }
  return Number(text);
}

/**
 * Normalises a host name for matching: lower case, without brackets or a
 * trailing dot.
 */
export function normalizeHost(hostname: string): string {
  let name = hostname.trim().toLowerCase();
  if (name.startsWith("[") && name.endsWith("]")) name = name.slice(1, -1);
  if (name.endsWith(".")) name = name.slice(0, -1);
  return name;
}

/**
 * Parses a rule: `example.com`, `*.example.com` (subdomains at any depth, not
 * the domain itself), `*` (every destination), `10.0.0.0/8`, `192.0.2.7`,
 * `::1/128`, each with an optional `:port` or `:from-to`; IPv6 with a port in
 * brackets (`[::1]:8080`, `[fd00::/8]:443`). Throws a `RangeError` with a
 * one-line message on a bad rule.
 */
export function parseDestinationRule(text: string): DestinationRule {
  const rule = text.trim();
  let target = rule;
  let ports = "";
  if (rule.startsWith("[")) {
    const end = rule.indexOf("]");
    if (end < 0) throw new RangeError(`Rule "${rule}" misses its closing bracket`);
    target = rule.slice(1, end);
    const rest = rule.slice(end + 1);
    if (rest.startsWith("/")) {
      // `[fd00::]/8` or `[fd00::]/8:443`
      const colon = rest.indexOf(":");
      target += colon < 0 ? rest : rest.slice(0, colon);
      ports = colon < 0 ? "" : rest.slice(colon + 1);
      if (colon >= 0 && ports === "") throw new RangeError(`Rule "${rule}" has an empty port`);
    } else if (rest.startsWith(":")) {
      ports = rest.slice(1);
      if (ports === "") throw new RangeError(`Rule "${rule}" has an empty port`);
    } else if (rest !== "") {
      throw new RangeError(`Rule "${rule}" has text after its closing bracket`);
    }
  } else if (rule.indexOf(":") === rule.lastIndexOf(":") && rule.includes(":")) {
    target = rule.slice(0, rule.indexOf(":"));
    ports = rule.slice(rule.indexOf(":") + 1);
    if (ports === "") throw new RangeError(`Rule "${rule}" has an empty port`);
  }
  let fromPort = 1, toPort = 65535;
  if (ports !== "") {
    const dash = ports.indexOf("-");
    fromPort = port(dash < 0 ? ports : ports.slice(0, dash), rule);
    toPort = dash < 0 ? fromPort : port(ports.slice(dash + 1), rule);
    if (toPort < fromPort) throw new RangeError(`Rule "${rule}" has an empty port range`);
  }
  if (target === "") throw new RangeError(`Rule "${rule}" names no host or address`);
  if (/^[0-9.:/]+$/.test(target) || target.includes(":")) {
    const cidr = parseCidr(target);
    if (!cidr) throw new RangeError(`Rule "${rule}" is not a valid address or CIDR`);
    return { text: rule, cidr, fromPort, toPort };
  }
  const host = normalizeHost(target);
  const labels = host === "*" ? [] : (host.startsWith("*.") ? host.slice(2) : host).split(".");
  if (!labels.every((label) => LABEL.test(label))) {
    throw new RangeError(
      `Rule "${rule}" must be a host name, *.domain, *, an address or a CIDR`,
    );
  }
  return { text: rule, host, fromPort, toPort };
}

/** Whether `rule` covers `port`. */
function matchesPort(rule: DestinationRule, port: number): boolean {
  return port >= rule.fromPort && port <= rule.toPort;
}

/**
 * Whether the name rule `rule` matches the normalised host name `host` on
 * `port`. `*` matches every destination, IP literals included; other globs
 * and names match names only.
 */
export function matchesName(rule: DestinationRule, host: string, port: number): boolean {
  if (rule.host === undefined || !matchesPort(rule, port)) return false;
  if (rule.host === "*") return true;
  if (rule.host.startsWith("*.")) return host.endsWith(rule.host.slice(1));
  return host === rule.host;
}

/** Whether the address rule `rule` matches `ip` on `port`. */
export function matchesAddress(rule: DestinationRule, ip: IpAddress, port: number): boolean {
  return rule.cidr !== undefined && matchesPort(rule, port) && rule.cidr.contains(ip);
}
