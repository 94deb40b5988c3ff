/**
 * Parent proxy URLs (`--upstream-proxy`, a rule's `via`): their origin, the
 * address to dial and the credentials, which no message or log ever shows.
 *
 * @module
 */

/**
 * Parses a parent proxy URL (`http://` or `https://`, optional
 * `user:password@`, port 80 or 443 by default) into its origin and
 * credentials. Throws a `RangeError` whose message never holds the password.
 *
 * @example
 * ```ts
 * import { parseParentUrl } from "./parent_url.ts";
 * parseParentUrl("http://u:p@egress.example:3128").origin; // "http://egress.example:3128"
 * ```
 */
export function parseParentUrl(text: string): ParentUrl {
  let url: URL;
  try {
    url = new URL(text.trim());
  } catch {
    throw new RangeError(`"${redactUrl(text)}" is not a proxy URL such as http://host:3128`);
  }
  const shown = redactUrl(text);
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new RangeError(`${shown} must be an http:// or https:// proxy URL`);
  }
  if ((url.pathname !== "/" && url.pathname !== "") || url.search || url.hash) {
    throw new RangeError(`${shown} must have no path, query or fragment`);
  }
  const tls = url.protocol === "https:";
  const port = url.port ? Number(url.port) : tls ? 443 : 80;
  const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const authority = hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`;
  const user = decodeURIComponent(url.username);
  const password = decodeURIComponent(url.password);
  return {
    origin: `${url.protocol}//${authority}`,
    hostname,
    port,
    tls,
    authority,
    authorization: user || password
      ? `Basic ${btoa(String.fromCharCode(...new TextEncoder().encode(`${user}:${password}`)))}`
      : undefined,
  };
}

/** A URL with any `user:password@` replaced by `***@`, for messages and logs. */
export function redactUrl(text: string): string {
  return text.replace(/^([a-z][a-z0-9+.-]*:\/\/)?[^@/?#]*@/i, "$1***@");
}

/** A parsed parent proxy URL. */
export interface ParentUrl {
  /** `http://host:port` or `https://host:port`, without credentials. */
  origin: string;
  /** The host to dial (IPv6 without brackets). */
  hostname: string;
  /** The port to dial. */
  port: number;
  /** Whether the parent speaks TLS (`https://`). */
  tls: boolean;
  /** `host:port` as `Proxy-Status` names the next hop. */
  authority: string;
  /** The `Proxy-Authorization` value, when the URL carries credentials. */
  authorization?: string;
}

/**
 * Checks a rule's `via`: `direct`, or parent URLs without credentials (a
 * list, or one text with commas). Returns `direct` or their origins joined
 * by commas. Throws a `TypeError` whose message is the problem (`must ...`).
 *
 * @example
 * ```ts
 * import { parseVia } from "./parent_url.ts";
 * parseVia(["http://a.example:3128", "https://b.example"]); // "http://a.example:3128,https://b.example:443"
 * ```
 */
export function parseVia(value: unknown): string {
  const list = typeof value === "string" ? value.split(",") : value;
  if (!Array.isArray(list) || list.length === 0 || list.some((v) => typeof v !== "string")) {
    throw new TypeError(`must be direct or proxy URLs, got ${JSON.stringify(value) ?? value}`);
  }
  const texts = (list as string[]).map((v) => v.trim());
  if (texts.length === 1 && texts[0] === "direct") return "direct";
  const origins = texts.map((text) => {
    let url: ParentUrl;
    try {
      url = parseParentUrl(text);
    } catch (err) {
      throw new TypeError(`must be direct or proxy URLs: ${(err as Error).message}`);
    }
    if (url.authorization) {
      throw new TypeError(
        "must not hold credentials: give the parent with them in --upstream-proxy",
      );
    }
    return url.origin;
  });
  return [...new Set(origins)].join(",");
}
