import assert from "node:assert/strict";
import { embeddedIpv4, formatIp, parseCidr, parseIp } from "../lib/access/cidr.ts";
import { isPrivateAddress } from "../lib/access/private_address.ts";

Deno.test("IP literals parse and format in canonical form", () => {
  const table: [string, string | null][] = [
    ["127.0.0.1", "127.0.0.1"],
    ["255.255.255.255", "255.255.255.255"],
    ["0.0.0.0", "0.0.0.0"],
    ["[::1]", "::1"],
    ["::", "::"],
    ["2001:DB8:0:0:0:0:0:1", "2001:db8::1"],
    ["2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"],
    ["fe80::1%eth0", "fe80::1"],
    ["::ffff:127.0.0.1", "::ffff:127.0.0.1"],
    ["::ffff:7f00:1", "::ffff:127.0.0.1"],
    ["64:ff9b::10.0.0.1", "64:ff9b::a00:1"],
    ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"],
    // Not literals: the resolver's shorthand forms must go through resolution.
    ["127.1", null],
    ["0177.0.0.1", null],
    ["2130706433", null],
    ["0x7f.0.0.1", null],
    ["256.0.0.1", null],
    ["1.2.3.4.5", null],
    ["1:2:3:4:5:6:7:8:9", null],
    ["1::2::3", null],
    ["1.2.3.4::", null],
    ["::12345", null],
    ["example.com", null],
    ["", null],
  ];
  for (const [text, want] of table) {
    const ip = parseIp(text);
    assert.deepEqual(ip === null ? null : formatIp(ip), want, text);
  }
});

Deno.test("CIDR ranges match IPv4, IPv6 and IPv4-mapped addresses", () => {
  const table: [string, string, boolean][] = [
    ["10.0.0.0/8", "10.255.1.2", true],
    ["10.0.0.0/8", "11.0.0.1", false],
    ["172.16.0.0/12", "172.31.255.255", true],
    ["172.16.0.0/12", "172.32.0.0", false],
    ["192.168.1.7", "192.168.1.7", true],
    ["192.168.1.7", "192.168.1.8", false],
    ["10.1.2.3/8", "10.9.9.9", true], // host bits are cleared
    ["0.0.0.0/0", "203.0.113.9", true],
    ["0.0.0.0/0", "::1", false],
    ["::/0", "::1", true],
    ["::1/128", "::1", true],
    ["::1/128", "::2", false],
    ["fc00::/7", "fdff::1", true],
    ["fc00::/7", "fe00::1", false],
    ["fe80::/10", "febf::1", true],
    ["fe80::/10", "fec0::1", false],
    // Mapped client or destination addresses match their IPv4 form.
    ["127.0.0.0/8", "::ffff:127.0.0.1", true],
    ["10.0.0.0/8", "::ffff:a00:1", true],
    ["::ffff:10.0.0.0/104", "10.1.1.1", true],
    ["::ffff:10.0.0.0/104", "11.1.1.1", false],
    ["::/0", "::ffff:1.2.3.4", false],
    ["2001:db8::/32", "2001:db8:ffff::1", true],
    ["2001:db8::/33", "2001:db8:8000::1", false],
  ];
  for (const [range, address, want] of table) {
    const cidr = parseCidr(range)!;
    assert.deepEqual(cidr.contains(parseIp(address)!), want, `${range} contains ${address}`);
  }
});

Deno.test("bad CIDRs are rejected", () => {
  for (const text of ["10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x", "10/8", "a.b.c.d/8"]) {
    assert.equal(parseCidr(text), null, text);
  }
});

Deno.test("a range covers the ranges inside it", () => {
  assert.deepEqual(parseCidr("10.0.0.0/8")!.covers(parseCidr("10.2.0.0/16")!), true);
  assert.deepEqual(parseCidr("10.0.0.0/8")!.covers(parseCidr("0.0.0.0/0")!), false);
  assert.deepEqual(parseCidr("10.0.0.0/8")!.covers(parseCidr("::/0")!), false);
});

Deno.test("IPv6 forms that carry an IPv4 address yield it", () => {
  const table: [string, string[]][] = [
    ["::ffff:169.254.169.254", ["169.254.169.254"]],
    ["::127.0.0.1", ["127.0.0.1"]],
    ["64:ff9b::7f00:1", ["127.0.0.1"]],
    ["2002:a9fe:a9fe::1", ["169.254.169.254"]],
    // Teredo: server 65.54.227.120, client 192.0.2.45 stored inverted.
    ["2001:0:4136:e378:8000:63bf:3fff:fdd2", ["65.54.227.120", "192.0.2.45"]],
    ["2001:db8::1", []],
    ["10.0.0.1", []],
  ];
  for (const [address, want] of table) {
    assert.deepEqual(embeddedIpv4(parseIp(address)!).map(formatIp), want, address);
  }
});

Deno.test("--deny-private covers every non-public form, and no public address", () => {
  const privates = [
    "127.0.0.1",
    "127.255.255.254",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.0.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "::",
    "::1",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",
    "::8.8.8.8", // deprecated IPv4-compatible form
    "64:ff9b::127.0.0.1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::1",
    "2002:7f00:1::1",
    "2002:c0a8:101::1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo client 127.0.0.1
    "2001:db8::1",
  ];
  for (const address of privates) {
    assert.deepEqual(isPrivateAddress(parseIp(address)!), true, address);
  }
  const publics = [
    "8.8.8.8",
    "1.1.1.1",
    "100.63.255.255",
    "100.128.0.0",
    "172.32.0.1",
    "169.255.0.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
  ];
  for (const address of publics) {
    assert.deepEqual(isPrivateAddress(parseIp(address)!), false, address);
  }
});
