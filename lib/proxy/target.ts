/**
 * Request targets: the absolute-form `http://` URL of a plain request and
 * the authority-form `host:port` of a CONNECT, with the same authority
 * checks for both.
 *
 * @module
 */
import { canonicalHost, hostKey } from "../limit/host_key.ts";
import { HttpError } from "./http_head.ts";
import { boundedMemo } from "../bounded_memo.ts";

/** An upstream named by a request target. */
export interface Authority {
  /** The key its connections count under ({@linkcode hostKey}). */
  key: string;
  /**
   * The host to dial, canonical ({@linkcode canonicalHost}): a lower-case
   * name, an IPv4 address (also for IPv4-mapped IPv6) or an IPv6 address
   * without brackets.
   */
  hostname: string;
  /** The port to dial. */
  port: number;
  /** The authority as the client wrote it (`host[:port]`). */
  authority: string;
}

/** The parts of an absolute-form `http://` request target. */
export interface Target extends Authority {
  /** The origin-form target to send upstream (`/path?query`). */
  path: string;
}

const AUTHORITY = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]*))?$/;

function bad(msg: string): HttpError {
  return new HttpError(400, msg);
}

/**
 * Parses an absolute-form `http://` request target. Throws
 * {@linkcode HttpError} 400 for any other form, credentials (`@`), a
 * character outside host names and bracketed IPv6 literals, a host that is
 * no valid name or address, or a bad port.
 */
export function parseTarget(target: string): Target {
  if (!/^http:\/\//i.test(target)) {
    if (target.startsWith("/") || target === "*") {
      throw bad(
        "dprl is a forward proxy: send absolute-form requests (http://host/path) or CONNECT",
      );
    }
    if (/^https:\/\//i.test(target)) throw bad("Use CONNECT for https targets");
    throw bad("Request target is not an http:// URL");
  }
  const rest = target.slice(7);
  let end = rest.search(/[/?#]/);
  if (end < 0) end = rest.length;
  let path = rest.slice(end);
  const hash = path.indexOf("#");
  if (hash >= 0) path = path.slice(0, hash);
  if (path === "" || path.startsWith("?")) path = "/" + path;
  return { ...httpAuthority(rest.slice(0, end)), path };
}

/**
 * Parses the authority-form target of a CONNECT (`host:port`, the port
 * required), with the checks of {@linkcode parseTarget}.
 */
export function parseConnectTarget(target: string): Readonly<Authority> {
  return connectAuthority(target);
}

/**
 * Authorities checked lately, by their text, for absolute-form targets
 * (port 80 by default) and for CONNECT (a port required): a client names
 * the same few again and again.
 */
const httpAuthority = boundedMemo((a) => Object.freeze(checkAuthority(a, 80)), 1024);
const connectAuthority = boundedMemo((a) => Object.freeze(checkAuthority(a, null)), 1024);

function checkAuthority(authority: string, defaultPort: number | null): Authority {
  if (authority.includes("@")) {
    throw bad("Credentials in the request target are not allowed");
  }
  const m = AUTHORITY.exec(authority);
  if (!m) throw bad(`Invalid host in request target "${authority}"`);
  const port = m[2] === undefined || m[2] === "" ? defaultPort : parsePort(m[2]);
  if (port === null) {
    throw bad(
      defaultPort === null
        ? "CONNECT needs a host:port target"
        : `Invalid port in request target "${authority}"`,
    );
  }
  const hostname = canonicalHost(m[1]);
  if (hostname === null) throw bad(`Invalid host in request target "${authority}"`);
  return { key: hostKey(hostname, port), hostname, port, authority };
}

/** A port number from 1 to 65535 written in decimal, or `null`. */
export function parsePort(port: string): number | null {
  if (!/^[0-9]{1,5}$/.test(port)) return null;
  const n = Number(port);
  return n >= 1 && n <= 65535 ? n : null;
}
