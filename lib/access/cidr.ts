/**
 * IP addresses and CIDR ranges: parsing, matching, and the IPv4 address that
 * an IPv6 address carries in its IPv4-mapped, IPv4-compatible, NAT64, 6to4
 * and Teredo forms.
 *
 * @module
 */

import { boundedMemo } from "../bounded_memo.ts";

/** An IPv4 (4 bytes) or IPv6 (16 bytes) address. */
export interface IpAddress {
  /** 4 or 6. */
  readonly family: 4 | 6;
  /** The address in network order. */
  readonly bytes: Uint8Array;
}

const IPV4 = /^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$/;

function parseIpv4(text: string): Uint8Array | null {
  const parts = text.split(".");
  if (parts.length !== 4 || !parts.every((p) => IPV4.test(p))) return null;
  return new Uint8Array(parts.map(Number));
}

function parseIpv6(text: string): Uint8Array | null {
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const groups = (half: string): number[] | null => {
    if (half === "") return [];
    const out: number[] = [];
    const parts = half.split(":");
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i];
      if (i === parts.length - 1 && part.includes(".")) {
        const v4 = parseIpv4(part);
        if (!v4) return null;
        out.push(v4[0] << 8 | v4[1], v4[2] << 8 | v4[3]);
      } else if (/^[0-9a-f]{1,4}$/i.test(part)) {
        out.push(parseInt(part, 16));
      } else {
        return null;
      }
    }
    return out;
  };
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  if (!head || !tail) return null;
  if (halves[0].includes(".") && halves.length === 2) return null;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const all = [...head, ...new Array(halves.length === 2 ? missing : 0).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  all.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 0xff;
  });
  return bytes;
}

/**
 * Parses an IP address literal: dotted-quad IPv4 (no leading zeros, no
 * shortened forms) or IPv6, with or without brackets and zone (`%eth0`, which
 * is dropped). Returns `null` when `text` is not one.
 */
export function parseIp(text: string): IpAddress | null {
  return parseIpRemembered(text);
}

/** The same few addresses come back (clients, upstreams): the last ones are remembered. */
const parseIpRemembered = boundedMemo(parseIpText, 1024);

function parseIpText(text: string): IpAddress | null {
  let s = text.trim();
  if (s.startsWith("[") && s.endsWith("]")) s = s.slice(1, -1);
  if (s.includes(":")) {
    const zone = s.indexOf("%");
    if (zone >= 0) s = s.slice(0, zone);
    const bytes = parseIpv6(s);
    return bytes ? { family: 6, bytes } : null;
  }
  const bytes = parseIpv4(s);
  return bytes ? { family: 4, bytes } : null;
}

/** Formats an address: dotted quad, or RFC 5952 IPv6 (`::ffff:1.2.3.4` for mapped). */
export function formatIp(ip: IpAddress): string {
  const b = ip.bytes;
  if (ip.family === 4) return b.join(".");
  const groups = Array.from({ length: 8 }, (_, i) => b[2 * i] << 8 | b[2 * i + 1]);
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  }
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(":");
  return `${hex.slice(0, best).join(":")}::${hex.slice(best + bestLen).join(":")}`;
}

function v4(bytes: ArrayLike<number>): IpAddress {
  return { family: 4, bytes: Uint8Array.from(bytes) };
}

function startsWith(bytes: Uint8Array, prefix: number[]): boolean {
  return prefix.every((b, i) => bytes[i] === b);
}

/**
 * The IPv4 form of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`); any other
 * address is returned as it is. The kernel connects to a mapped address over
 * IPv4, so rules must see it as IPv4.
 */
export function unmapIp(ip: IpAddress): IpAddress {
  if (ip.family === 6 && startsWith(ip.bytes, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff])) {
    return v4(ip.bytes.subarray(12));
  }
  return ip;
}

/**
 * The IPv4 addresses an IPv6 address carries and may lead to: IPv4-mapped
 * (`::ffff:0:0/96`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`),
 * 6to4 (`2002::/16`) and Teredo (`2001::/32`: server and client). Empty for
 * IPv4 addresses and other IPv6 addresses.
 */
export function embeddedIpv4(ip: IpAddress): IpAddress[] {
  if (ip.family === 4) return [];
  const b = ip.bytes;
  const zero12 = b.subarray(0, 12).every((x) => x === 0);
  if (zero12 || startsWith(b, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff])) {
    return [v4(b.subarray(12))];
  }
  if (startsWith(b, [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0])) return [v4(b.subarray(12))];
  if (startsWith(b, [0x20, 0x02])) return [v4(b.subarray(2, 6))];
  if (startsWith(b, [0x20, 0x01, 0, 0])) {
    return [v4(b.subarray(4, 8)), v4(Array.from(b.subarray(12), (x) => x ^ 0xff))];
  }
  return [];
}

/** A CIDR range: a network address and a prefix length. */
export class Cidr {
  readonly #network: IpAddress;
  readonly #prefix: number;

  /** A range of `prefix` leading bits of `network` (host bits are cleared). */
  constructor(network: IpAddress, prefix: number) {
    const bytes = Uint8Array.from(network.bytes);
    for (let i = 0; i < bytes.length; i++) {
      const keep = Math.max(0, Math.min(8, prefix - 8 * i));
      bytes[i] &= (0xff << (8 - keep)) & 0xff;
    }
    this.#network = { family: network.family, bytes };
    this.#prefix = prefix;
  }

  /** The address family of the range. */
  get family(): 4 | 6 {
    return this.#network.family;
  }

  /** Whether every address of `other` lies in this range. */
  covers(other: Cidr): boolean {
    return other.#prefix >= this.#prefix && this.contains(other.#network);
  }

  /** Whether `ip` (IPv4-mapped addresses as IPv4) lies in this range. */
  contains(ip: IpAddress): boolean {
    const addr = unmapIp(ip);
    if (addr.family !== this.#network.family) return false;
    const net = this.#network.bytes;
    for (let i = 0; i < net.length; i++) {
      const keep = Math.max(0, Math.min(8, this.#prefix - 8 * i));
      if (keep === 0) break;
      const mask = (0xff << (8 - keep)) & 0xff;
      if ((addr.bytes[i] & mask) !== net[i]) return false;
    }
    return true;
  }

  /** `network/prefix`. */
  toString(): string {
    return `${formatIp(this.#network)}/${this.#prefix}`;
  }
}

/**
 * Parses `address/prefix` or a bare address (a single-address range). An
 * IPv4-mapped IPv6 range of prefix 96 or more becomes the IPv4 range it maps.
 * Returns `null` when `text` is neither.
 */
export function parseCidr(text: string): Cidr | null {
  const slash = text.indexOf("/");
  const ip = parseIp(slash < 0 ? text : text.slice(0, slash));
  if (!ip) return null;
  const max = ip.family === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^[0-9]{1,3}$/.test(p) || Number(p) > max) return null;
    prefix = Number(p);
  }
  const unmapped = unmapIp(ip);
  if (unmapped !== ip && prefix >= 96) return new Cidr(unmapped, prefix - 96);
  return new Cidr(ip, prefix);
}
