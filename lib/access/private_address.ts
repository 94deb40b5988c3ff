/**
 * Addresses that `--deny-private` refuses: everything that is not a public
 * unicast address of the internet.
 *
 * @module
 */

import { type Cidr, embeddedIpv4, type IpAddress, parseCidr, unmapIp } from "./cidr.ts";

/** The ranges `--deny-private` refuses, with the reason for each. */
export const PRIVATE_RANGES: readonly string[] = [
  "0.0.0.0/8", // "this network"; 0.0.0.0 reaches the local machine
  "10.0.0.0/8", // RFC 1918
  "100.64.0.0/10", // carrier-grade NAT
  "127.0.0.0/8", // loopback
  "169.254.0.0/16", // link-local, including cloud metadata at 169.254.169.254
  "172.16.0.0/12", // RFC 1918
  "192.0.0.0/24", // IETF protocol assignments
  "192.0.2.0/24", // documentation
  "192.168.0.0/16", // RFC 1918
  "198.18.0.0/15", // benchmarking
  "198.51.100.0/24", // documentation
  "203.0.113.0/24", // documentation
  "224.0.0.0/4", // multicast
  "240.0.0.0/4", // reserved, including the broadcast 255.255.255.255
  "::/96", // unspecified, loopback and the deprecated IPv4-compatible form
  "64:ff9b:1::/48", // local-use NAT64
  "100::/64", // discard-only
  "2001:db8::/32", // documentation
  "fc00::/7", // unique local
  "fe80::/10", // link-local
  "fec0::/10", // deprecated site-local
  "ff00::/8", // multicast
];

const RANGES: Cidr[] = PRIVATE_RANGES.map((text) => parseCidr(text)!);

/**
 * Whether `ip` is private in the sense of `--deny-private`: in one of
 * {@linkcode PRIVATE_RANGES}, or an IPv6 address (IPv4-mapped, NAT64, 6to4,
 * Teredo) that carries an IPv4 address that is.
 */
export function isPrivateAddress(ip: IpAddress): boolean {
  const addr = unmapIp(ip);
  if (RANGES.some((r) => r.contains(addr))) return true;
  return embeddedIpv4(addr).some((v4) => RANGES.some((r) => r.contains(v4)));
}
