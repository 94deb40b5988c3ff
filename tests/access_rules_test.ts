import assert from "node:assert/strict";
import {
  matchesAddress,
  matchesName,
  parseDestinationRule,
} from "../lib/access/destination_rule.ts";
import { parseIp } from "../lib/access/cidr.ts";

Deno.test("destination rules parse hosts, globs, CIDRs and ports", () => {
  const table: [string, string | undefined, string | undefined, number, number][] = [
    ["example.com", "example.com", undefined, 1, 65535],
    ["Example.COM.", "example.com", undefined, 1, 65535],
    ["*.example.com", "*.example.com", undefined, 1, 65535],
    ["*", "*", undefined, 1, 65535],
    ["*:443", "*", undefined, 443, 443],
    ["example.com:8000-8080", "example.com", undefined, 8000, 8080],
    ["10.0.0.0/8", undefined, "10.0.0.0/8", 1, 65535],
    ["10.0.0.0/8:22", undefined, "10.0.0.0/8", 22, 22],
    ["192.0.2.7", undefined, "192.0.2.7/32", 1, 65535],
    ["192.0.2.7:80", undefined, "192.0.2.7/32", 80, 80],
    ["::1", undefined, "::1/128", 1, 65535],
    ["::1/128", undefined, "::1/128", 1, 65535],
    ["[::1]:8080", undefined, "::1/128", 8080, 8080],
    ["[fd00::/8]:443", undefined, "fd00::/8", 443, 443],
    ["[fd00::]/8:1-1024", undefined, "fd00::/8", 1, 1024],
    ["::ffff:10.0.0.0/104", undefined, "10.0.0.0/8", 1, 65535],
  ];
  for (const [text, host, cidr, fromPort, toPort] of table) {
    const rule = parseDestinationRule(text);
    assert.deepEqual(
      [rule.host, rule.cidr?.toString(), rule.fromPort, rule.toPort],
      [host, cidr, fromPort, toPort],
      text,
    );
  }
});

Deno.test("bad destination rules fail with a one-line message naming the rule", () => {
  const table: [string, RegExp][] = [
    ["example.com:", /empty port/],
    ["example.com:0", /bad port "0"/],
    ["example.com:65536", /bad port/],
    ["example.com:http", /bad port/],
    ["example.com:90-80", /empty port range/],
    ["10.0.0.0/33", /not a valid address or CIDR/],
    ["1.2.3", /not a valid address or CIDR/],
    ["[::1", /closing bracket/],
    ["[::1]x", /after its closing bracket/],
    ["exa mple.com", /must be a host name/],
    ["ex*ample.com", /must be a host name/],
    ["*example.com", /must be a host name/],
    ["example..com", /must be a host name/],
    ["", /names no host/],
  ];
  for (const [text, message] of table) {
    assert.throws(() => parseDestinationRule(text), (err: Error) => {
      assert.ok(err instanceof RangeError, text);
      assert.match(err.message, message, text);
      assert.ok(!err.message.includes("\n"));
      return true;
    });
  }
});

Deno.test("host globs match names and ports", () => {
  const table: [string, string, number, boolean][] = [
    ["example.com", "example.com", 443, true],
    ["example.com", "www.example.com", 443, false],
    ["*.example.com", "www.example.com", 443, true],
    ["*.example.com", "a.b.example.com", 443, true],
    ["*.example.com", "example.com", 443, false],
    ["*.example.com", "badexample.com", 443, false],
    ["*.example.com", "example.com.evil.net", 443, false],
    ["example.com:443", "example.com", 443, true],
    ["example.com:443", "example.com", 80, false],
    ["*:1-1023", "anything.net", 1023, true],
    ["*:1-1023", "anything.net", 1024, false],
    ["*", "10.0.0.1", 22, true],
  ];
  for (const [text, host, port, want] of table) {
    assert.equal(
      matchesName(parseDestinationRule(text), host, port),
      want,
      `${text} ~ ${host}:${port}`,
    );
  }
});

Deno.test("address rules match addresses and ports, mapped forms as IPv4", () => {
  const table: [string, string, number, boolean][] = [
    ["10.0.0.0/8", "10.2.3.4", 80, true],
    ["10.0.0.0/8:80", "10.2.3.4", 81, false],
    ["10.0.0.0/8", "::ffff:10.2.3.4", 80, true],
    ["[::1]:8080", "::1", 8080, true],
    ["[::1]:8080", "::1", 8081, false],
    ["127.0.0.1", "::1", 80, false],
  ];
  for (const [text, address, port, want] of table) {
    assert.equal(
      matchesAddress(parseDestinationRule(text), parseIp(address)!, port),
      want,
      `${text} ~ ${address}:${port}`,
    );
  }
});
