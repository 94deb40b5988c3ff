/**
 * Proxy authentication (Basic scheme, RFC 7617): user lists from `DPRL_AUTH`
 * and htpasswd files, and the check of a `Proxy-Authorization` value.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import { BcryptVerifier, type BcryptVerifierOptions } from "./bcrypt_verifier.ts";
import { formatIp, parseIp, unmapIp } from "./cidr.ts";

/** The `Proxy-Authenticate` value sent with a 407. */
export const PROXY_AUTHENTICATE = 'Basic realm="dprl", charset="UTF-8"';

const BCRYPT = /^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$/;
/** Modular crypt (`$apr1$`, `$6$`, `$2b$`, `$argon2id$`) or LDAP style (`{SHA}`, `{SSHA}`). */
const HASH_LIKE = /^(\$[A-Za-z0-9-]{1,16}\$|\{[A-Za-z][A-Za-z0-9.-]*\})/;
const BASIC = /^basic[ \t]+([A-Za-z0-9+/]+=*)[ \t]*$/i;
const CACHE_SIZE = 1024;
/** Seconds a client is asked to wait when its share of bcrypt checks is taken. */
const BUSY_RETRY_AFTER = 1;

/** Whether `secret` is a bcrypt hash (`$2a$`, `$2b$` or `$2y$`). */
function isBcryptHash(secret: string): boolean {
  return BCRYPT.test(secret);
}

function checkUser(user: string, where: string): void {
  if (!/^[^:\s\p{Cc}]+$/u.test(user)) {
    throw new RangeError(`${where} has a user name that is empty or holds a colon or space`);
  }
}

/**
 * Refuses a secret that looks like a hash (`$apr1$...`, `{SHA}...`, a cut
 * `$2b$...`) but is not a whole bcrypt hash: taken as a password, the hash
 * text itself would log the user in.
 */
function checkSecret(user: string, secret: string, where: string): void {
  if (HASH_LIKE.test(secret) && !isBcryptHash(secret)) {
    throw new RangeError(
      `${where} for user "${user}" looks like a hash but is not a bcrypt hash ` +
        "(only bcrypt is supported: write it with htpasswd -B)",
    );
  }
}

/**
 * Checks the `users` option of the library: user names, and values that are
 * strings and either a password or a whole bcrypt hash. Throws a
 * `TypeError` or `RangeError` naming the user (never the password).
 */
export function checkUsers(users: Record<string, unknown>): void {
  const where = "users option";
  for (const [user, secret] of Object.entries(users)) {
    checkUser(user, where);
    if (typeof secret !== "string" || secret === "") {
      throw new TypeError(`${where} for user "${user}" must be a non-empty string`);
    }
    checkSecret(user, secret, where);
  }
}

/** Answered when a client's share of bcrypt checks is taken: 503, never 407. */
export class AuthBusyError extends Error {
  /** Seconds after which to try again. */
  readonly retryAfter: number;
  /** Creates the error for the client at `client`. */
  constructor(client: string) {
    super(`Too many credential checks waiting for ${client || "this client"}; try again later`);
    this.name = "AuthBusyError";
    this.retryAfter = BUSY_RETRY_AFTER;
  }
}

/**
 * Parses `DPRL_AUTH`: `user:password` pairs, comma-separated. The password
 * runs from the first colon to the next comma; it may be a bcrypt hash, but
 * no other hash (a value that looks like one is refused). Throws a
 * `RangeError` naming the entry (never the password).
 */
export function parseUsers(text: string): Map<string, string> {
  const users = new Map<string, string>();
  const entries = text.split(",").map((s) => s.trim());
  entries.forEach((entry, i) => {
    if (entry === "" && entries.length === 1) return;
    const where = `DPRL_AUTH entry ${i + 1}`;
    const colon = entry.indexOf(":");
    if (colon < 0 || colon === entry.length - 1) {
      throw new RangeError(`${where} must be user:password`);
    }
    const user = entry.slice(0, colon);
    checkUser(user, where);
    checkSecret(user, entry.slice(colon + 1), where);
    if (users.has(user)) throw new RangeError(`${where} repeats user "${user}"`);
    users.set(user, entry.slice(colon + 1));
  });
  return users;
}

/**
 * Parses an htpasswd file as `htpasswd -B` writes it: `user:hash` lines with
 * bcrypt hashes; blank lines and `#` comments are skipped. Any other hash
 * (MD5 `$apr1$`, SHA-1, crypt, plain) is an error naming the file and line.
 */
export function parseHtpasswd(text: string, fileName: string): Map<string, string> {
  const users = new Map<string, string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const where = `${fileName}:${i + 1}`;
    const colon = line.indexOf(":");
    if (colon < 0) throw new RangeError(`${where} must be user:hash`);
    const user = line.slice(0, colon);
    checkUser(user, where);
    if (!isBcryptHash(line.slice(colon + 1))) {
      throw new RangeError(
        `${where} for user "${user}" is not a bcrypt hash (write it with htpasswd -B)`,
      );
    }
    if (users.has(user)) throw new RangeError(`${where} repeats user "${user}"`);
    users.set(user, line.slice(colon + 1));
  });
  return users;
}

function sha256(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

/** A bounded map that forgets its oldest entry when full. */
function remember<V>(map: Map<string, V>, key: string, value: V): void {
  map.delete(key);
  if (map.size >= CACHE_SIZE) map.delete(map.keys().next().value!);
  map.set(key, value);
}

/**
 * Checks `Proxy-Authorization` values against a user list.
 *
 * Every first check of wrong credentials costs the same: one SHA-256
 * comparison in constant time against the plain passwords (or a dummy), and,
 * when any user has a bcrypt hash, one bcrypt comparison (against the user's
 * hash, or another user's for unknown and plain users), so timing tells
 * neither which users exist nor which have plain passwords. Right plain
 * passwords pass at once. bcrypt runs on a worker thread, one check at a
 * time, shared fairly between client addresses; a client whose share is
 * taken gets {@linkcode AuthBusyError}. bcrypt outcomes are cached by the
 * SHA-256 of the credentials, so a client pays bcrypt once, and a cached
 * credential answers at once, without waiting behind anyone's checks.
 */
export class ProxyAuth {
  readonly #plain = new Map<string, Uint8Array>();
  readonly #hashed = new Map<string, string>();
  readonly #dummyDigest = sha256(crypto.randomUUID());
  readonly #dummyHash: string | undefined;
  readonly #granted = new Map<string, string>();
  readonly #refused = new Map<string, true>();
  readonly #checking = new Map<string, Promise<string | null>>();
  readonly #bcrypt: BcryptVerifier;

  /** Checks against `users` (user -> password or bcrypt hash). */
  constructor(users: Map<string, string>, options: BcryptVerifierOptions = {}) {
    for (const [user, secret] of users) {
      if (isBcryptHash(secret)) this.#hashed.set(user, secret);
      else this.#plain.set(user, sha256(secret));
    }
    this.#dummyHash = this.#hashed.values().next().value;
    this.#bcrypt = new BcryptVerifier(options);
  }

  /** Whether any user is configured. */
  get enabled(): boolean {
    return this.#plain.size + this.#hashed.size > 0;
  }

  /** bcrypt comparisons started so far. */
  get bcryptChecks(): number {
    return this.#bcrypt.checks;
  }

  /**
   * The user named by a valid `Proxy-Authorization` value, or `null`. Right
   * plain passwords and cached results answer synchronously. A first check
   * that cannot have its turn because `client` (the client's address; for
   * IPv6 its /64) has its share of checks waiting rejects with
   * {@linkcode AuthBusyError}.
   */
  authenticate(
    value: string | undefined,
    client = "",
  ): Promise<string | null> | string | null {
    const credentials = decodeBasic(value);
    if (credentials === null) return null;
    const colon = credentials.indexOf(":");
    const user = credentials.slice(0, colon);
    const password = credentials.slice(colon + 1);

    const expected = this.#plain.get(user);
    const ok = timingSafeEqual(sha256(password), expected ?? this.#dummyDigest);
    if (expected !== undefined && ok) return user;
    if (this.#dummyHash === undefined) return null;
    const key = createHash("sha256").update(credentials).digest("hex");
    const cached = this.#granted.get(key);
    if (cached !== undefined) return cached;
    if (this.#refused.has(key)) return null;
    // Clients that present the same new credentials at once share one check.
    return this.#checking.get(key) ?? this.#check(key, user, password, clientGroup(client));
  }

  /** One bcrypt check, against the user's hash or, for any other user, a real one. */
  #check(key: string, user: string, password: string, client: string): Promise<string | null> {
    const hash = this.#hashed.get(user);
    const check = this.#bcrypt.verify(password, hash ?? this.#dummyHash!, client).then((ok) => {
      this.#checking.delete(key);
      if (ok === undefined) throw new AuthBusyError(client);
      if (ok && hash !== undefined) {
        remember(this.#granted, key, user);
        return user;
      }
      remember(this.#refused, key, true);
      return null;
    });
    this.#checking.set(key, check);
    return check;
  }
}

/**
 * Whose share of bcrypt checks a client's check takes: its IPv4 address, or
 * its IPv6 /64 (one site's subnet, where one holder has many addresses).
 */
function clientGroup(address: string): string {
  const ip = parseIp(address);
  if (ip === null) return address;
  const v4 = unmapIp(ip);
  if (v4.family === 4) return formatIp(v4);
  const prefix = new Uint8Array(16);
  prefix.set(ip.bytes.subarray(0, 8));
  return `${formatIp({ family: 6, bytes: prefix })}/64`;
}

/** The `user:password` of a Basic `Proxy-Authorization` value, or `null`. */
function decodeBasic(value: string | undefined): string | null {
  const match = value === undefined ? null : BASIC.exec(value.trim());
  if (!match) return null;
  try {
    const binary = atob(match[1]);
    const credentials = new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
    return credentials.includes(":") ? credentials : null;
  } catch {
    return null;
  }
}
