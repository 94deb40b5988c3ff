/**
 * Host keys: the name under which connections to one upstream are counted.
 *
 * @module
 */

/**
 * Normalises a host (with an optional port) to the key its connections are
 * counted under: the host name lower-cased, IPv6 literals in brackets, and the
 * port dropped when it is 80 or 443.
 *
 * @example
 * ```ts
 * hostKey("API.Example.com:443"); // "api.example.com"
 * hostKey("api.example.com:8443"); // "api.example.com:8443"
 * hostKey("::1", 9000); // "[::1]:9000"
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
  if (name.endsWith(".")) name = name.slice(0, -1);
  if (name.startsWith("[") && name.endsWith("]")) name = name.slice(1, -1);
  if (name.includes(":")) name = `[${name}]`;
  return p === "" || p === "80" || p === "443" ? name : `${name}:${p}`;
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
