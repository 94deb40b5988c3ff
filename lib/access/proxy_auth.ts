/**
 * Proxy authentication (Basic scheme, RFC 7617): user lists from `DPRL_AUTH`
 * and htpasswd files, and the check of a `Proxy-Authorization` value.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import { BcryptVerifier } from "./bcrypt_verifier.ts";

/** The `Proxy-Authenticate` value sent with a 407. */
export const PROXY_AUTHENTICATE = 'Basic realm="dprl", charset="UTF-8"';

const BCRYPT = /^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$/;
const BASIC = /^basic[ \t]+([A-Za-z0-9+/]+=*)[ \t]*$/i;
const CACHE_SIZE = 1024;
const BCRYPT_QUEUE = 64;

/** Whether `secret` is a bcrypt hash (`$2a$`, `$2b$` or `$2y$`). */
export function isBcryptHash(secret: string): boolean {
  return BCRYPT.test(secret);
}

function checkUser(user: string, where: string): void {
  if (!/^[^:\s\p{Cc}]+$/u.test(user)) {
    throw new RangeError(`${where} has a user name that is empty or holds a colon or space`);
  }
}

/**
 * Parses `DPRL_AUTH`: `user:password` pairs, comma-separated. The password
 * runs from the first colon to the next comma; it may be a bcrypt hash.
 * Throws a `RangeError` naming the entry (never the password).
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
 * Checks `Proxy-Authorization` values against a user list. Plain passwords
 * are compared in constant time (SHA-256 digests, so lengths do not show);
 * bcrypt hashes are verified one at a time on a worker thread (while 64
 * checks are under way, new credentials are refused at once), and both
 * outcomes are cached by the SHA-256 of the credentials, so a client pays
 * bcrypt once, and repeating a wrong password costs nothing.
 */
export class ProxyAuth {
  readonly #plain = new Map<string, Uint8Array>();
  readonly #hashed = new Map<string, string>();
  readonly #dummyDigest = sha256(crypto.randomUUID());
  readonly #dummyHash: string | undefined;
  readonly #granted = new Map<string, string>();
  readonly #refused = new Map<string, true>();
  readonly #checking = new Map<string, Promise<string | null>>();
  readonly #bcrypt = new BcryptVerifier(BCRYPT_QUEUE);

  /** Checks against `users` (user -> password or bcrypt hash). */
  constructor(users: Map<string, string>) {
    for (const [user, secret] of users) {
      if (isBcryptHash(secret)) this.#hashed.set(user, secret);
      else this.#plain.set(user, sha256(secret));
    }
    this.#dummyHash = this.#hashed.values().next().value;
  }

  /** Whether any user is configured. */
  get enabled(): boolean {
    return this.#plain.size + this.#hashed.size > 0;
  }

  /**
   * The user named by a valid `Proxy-Authorization` value, or `null`. Plain
   * passwords and cached results answer synchronously.
   */
  authenticate(value: string | undefined): Promise<string | null> | string | null {
    const match = value === undefined ? null : BASIC.exec(value.trim());
    if (!match) return null;
    let credentials: string;
    try {
      const binary = atob(match[1]);
      credentials = new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
    } catch {
      return null;
    }
    const colon = credentials.indexOf(":");
    if (colon < 0) return null;
    const user = credentials.slice(0, colon);
    const password = credentials.slice(colon + 1);

    const hash = this.#hashed.get(user);
    if (hash === undefined) {
      const expected = this.#plain.get(user);
      const ok = timingSafeEqual(sha256(password), expected ?? this.#dummyDigest);
      if (expected !== undefined && ok) return user;
      if (expected !== undefined || this.#dummyHash === undefined) return null;
    }
    const key = createHash("sha256").update(credentials).digest("hex");
    const cached = this.#granted.get(key);
    if (cached !== undefined) return cached;
    if (this.#refused.has(key)) return null;
    // Clients that present the same new credentials at once share one check.
    const checking = this.#checking.get(key);
    if (checking) return checking;
    // Unknown users are checked against a real hash too, so timing does not
    // tell which users exist.
    const check = this.#bcrypt.verify(password, hash ?? this.#dummyHash!).then((ok) => {
      this.#checking.delete(key);
      if (ok === undefined) return null;
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
