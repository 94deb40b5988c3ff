/**
 * Host keys: the name under which connections to one upstream are counted.
 *
 * @module
 */

/**
 * Normalises a host (with an optional port) to the key its connections are
 * counted under: the host name lower-cased without a trailing dot, IP
 * addresses in their canonical form ({@linkcode canonicalHost}: `127.1`,
 * `0x7f000001` and `::ffff:127.0.0.1` all key as `127.0.0.1`), IPv6
 * literals in brackets, and the port dropped when it is 80 or 443.
 *
 * @example
 * ```ts
 * hostKey("API.Example.com:443"); // "api.example.com"
 * hostKey("api.example.com:8443"); // "api.example.com:8443"
 * hostKey("::1", 9000); // "[::1]:9000"
 * hostKey("2130706433:8080"); // "127.0.0.1:8080"
 * ```
 */
export function hostKey(host: string, port?: number | string): string {
  let name = host.trim().toLowerCase();
  let p = port === undefined ? "" : String(port);
  if (p === "") {
    const split = splitHostPort(name);
    name = split.hostname;
    p = split.port;
  }
  const canonical = canonicalHost(name);
  if (canonical !== null) name = canonical;
  else {
    if (name.endsWith(".")) name = name.slice(0, -1);
    if (name.startsWith("[") && name.endsWith("]")) name = name.slice(1, -1);
  }
  if (name.includes(":")) name = `[${name}]`;
  return p === "" || p === "80" || p === "443" ? name : `${name}:${p}`;
}

const HOST_CHARS = /^(?:[A-Za-z0-9._-]+|\[?[0-9A-Fa-f:.]+\]?)$/;
const MAPPED_IPV4 = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/;
/** A name of plain labels whose last label is no number: URL parsing only lower-cases it. */
const PLAIN_NAME = /^(?:[a-z0-9_-]+\.)*[a-z0-9_-]*[g-wyz_-][a-z0-9_-]*\.?$/i;
const PUNYCODE_LABEL = /(?:^|\.)xn--/i;

/**
 * The canonical form of a host name or IP address (an IPv6 literal with or
 * without brackets), as WHATWG URL parsing gives it, or `null` when it is
 * not one: names lower-cased without a trailing dot; every IPv4 spelling
 * (`127.1`, `2130706433`, `0x7f000001`, octal `0177.0.0.1`) as four
 * decimal parts; IPv6 compressed, without brackets; an IPv4-mapped IPv6
 * address (`::ffff:127.0.0.1`) as the IPv4 address it reaches. Only
 * letters, digits, `.`, `-`, `_` (and `:` in IPv6) are accepted; a name
 * whose last label is numeric but no IPv4 address (`host.0x1`, `1.2.3.4.5`)
 * is `null`, as it is for URL parsing.
 */
export function canonicalHost(hostname: string): string | null {
  if (PLAIN_NAME.test(hostname) && !PUNYCODE_LABEL.test(hostname)) {
    const name = hostname.toLowerCase();
    return name.endsWith(".") ? name.slice(0, -1) : name;
  }
  if (!HOST_CHARS.test(hostname)) return null;
  const bracketed = hostname.startsWith("[");
  if (bracketed !== hostname.endsWith("]")) return null;
  const literal = !bracketed && hostname.includes(":") ? `[${hostname}]` : hostname;
  let name: string;
  try {
    name = new URL(`http://${literal}/`).hostname;
  } catch {
    return null;
  }
  if (name.startsWith("[")) {
    name = name.slice(1, -1);
    const m = MAPPED_IPV4.exec(name);
    if (!m) return name;
    const high = parseInt(m[1], 16);
    const low = parseInt(m[2], 16);
    return `${high >> 8}.${high & 255}.${low >> 8}.${low & 255}`;
  }
  return name.endsWith(".") ? name.slice(0, -1) : name;
}

/**
 * Splits `host[:port]` (IPv6 literals in brackets) into its parts; `port` is
 * `""` when absent. Brackets are removed from the host name.
 */
export function splitHostPort(
  authority: string,
): { hostname: string; port: string } {
  if (authority.startsWith("[")) {
    const end = authority.indexOf("]");
    if (end < 0) return { hostname: authority, port: "" };
    const rest = authority.slice(end + 1);
    return {
      hostname: authority.slice(1, end),
      port: rest.startsWith(":") ? rest.slice(1) : "",
    };
  }
  const colon = authority.lastIndexOf(":");
  if (colon < 0 || authority.indexOf(":") !== colon) {
    // No port, or a bare IPv6 literal.
    return { hostname: authority, port: "" };
  }
  return {
    hostname: authority.slice(0, colon),
    port: authority.slice(colon + 1),
  };
}
