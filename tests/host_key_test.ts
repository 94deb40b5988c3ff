import assert from "node:assert/strict";
import { hostKey } from "../mod.ts";
import { LimitTable } from "../lib/limit/limit_table.ts";
import { canonicalHost } from "../lib/limit/host_key.ts";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";

Deno.test("hostKey lower-cases the host name", () => {
  assert.equal(hostKey("API.Example.COM"), "api.example.com");
});

Deno.test("hostKey drops the default ports 80 and 443", () => {
  assert.equal(hostKey("api.example.com:80"), "api.example.com");
  assert.equal(hostKey("api.example.com:443"), "api.example.com");
  assert.equal(hostKey("api.example.com", 443), "api.example.com");
  assert.equal(hostKey("api.example.com", "80"), "api.example.com");
});

Deno.test("hostKey keeps any other port", () => {
  assert.equal(hostKey("api.example.com:8443"), "api.example.com:8443");
  assert.equal(hostKey("127.0.0.1:8000"), "127.0.0.1:8000");
  assert.equal(hostKey("127.0.0.1", 8000), "127.0.0.1:8000");
  assert.equal(hostKey("Localhost", "9000"), "localhost:9000");
});

Deno.test("hostKey brackets IPv6 literals", () => {
  assert.equal(hostKey("[::1]:9000"), "[::1]:9000");
  assert.equal(hostKey("::1", 9000), "[::1]:9000");
  assert.equal(hostKey("[::1]", 9000), "[::1]:9000");
  assert.equal(hostKey("[::1]"), "[::1]");
  assert.equal(hostKey("[::1]:443"), "[::1]");
  assert.equal(hostKey("[FE80::1]:8080"), "[fe80::1]:8080");
});

Deno.test("hostKey drops the trailing dot of a fully qualified name", () => {
  assert.equal(hostKey("api.example.com.:8443"), "api.example.com:8443");
  assert.equal(hostKey("api.example.com."), "api.example.com");
});

Deno.test("hostKey gives one key for every spelling of the same host", () => {
  const spellings = [
    "api.example.com",
    "API.example.com:443",
    "api.EXAMPLE.com:80",
    "api.example.com.",
  ];
  assert.deepEqual(
    new Set(spellings.map((s) => hostKey(s))),
    new Set(["api.example.com"]),
  );
});

Deno.test("hostKey keys every numeric spelling of an IPv4 address as the address", () => {
  const spellings = [
    "127.0.0.1:8080",
    "127.1:8080",
    "2130706433:8080",
    "0x7f000001:8080",
    "0177.0.0.1:8080",
    "127.000.000.001:8080",
    "127.0.0.1.:8080",
  ];
  for (const s of spellings) assert.equal(hostKey(s), "127.0.0.1:8080", s);
  assert.equal(hostKey("0x7f000001", 80), "127.0.0.1");
  assert.equal(hostKey("10.1"), "10.0.0.1");
});

Deno.test("hostKey keys IPv4-mapped IPv6 as the IPv4 address it reaches", () => {
  assert.equal(hostKey("[::ffff:127.0.0.1]:8080"), "127.0.0.1:8080");
  assert.equal(hostKey("::ffff:7f00:1", 8080), "127.0.0.1:8080");
  assert.equal(hostKey("[0:0:0:0:0:FFFF:7F00:0001]"), "127.0.0.1");
});

Deno.test("hostKey keys every IPv6 spelling in its compressed form", () => {
  assert.equal(hostKey("[0:0:0:0:0:0:0:1]:9000"), "[::1]:9000");
  assert.equal(hostKey("[0000::0001]:9000"), "[::1]:9000");
  assert.equal(hostKey("2001:DB8:0:0:1:0:0:1", 9000), "[2001:db8::1:0:0:1]:9000");
});

Deno.test("configured limits normalise like the hosts they limit", () => {
  const table = new LimitTable(0, {
    "0x7f000001:8080": 3,
    "[0:0::1]:9000": 4,
    "API.example.com.:443": 5,
  });
  assert.equal(table.limitFor(hostKey("127.0.0.1", 8080)), 3);
  assert.equal(table.limitFor(hostKey("[::1]:9000")), 4);
  assert.equal(table.limitFor(hostKey("api.example.com")), 5);
  table.set("2130706433:8080", 7);
  assert.equal(table.limitFor("127.0.0.1:8080"), 7);
});

Deno.test("hostKey leaves names it cannot canonicalise lower-cased", () => {
  assert.equal(hostKey("*.Example.com"), "*.example.com");
  assert.equal(hostKey("host.0x1:81"), "host.0x1:81");
});

/** What WHATWG URL parsing makes of a host; IPv4-mapped IPv6 as IPv4. */
function urlOracle(host: string): string | null {
  let name: string;
  try {
    name = new URL(`http://${host.includes(":") && !host.startsWith("[") ? `[${host}]` : host}/`)
      .hostname;
  } catch {
    return null;
  }
  name = name.replace(/^\[|\]$/g, "");
  const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(name);
  if (m) {
    const [hi, lo] = [parseInt(m[1], 16), parseInt(m[2], 16)];
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  return name.replace(/\.$/, "");
}

Deno.test("canonicalHost agrees with URL parsing on generated names and addresses", () => {
  const label = fc.oneof(
    fc.string({ unit: fc.constantFrom(..."abfgxzAFXZ019_-"), minLength: 1, maxLength: 6 }),
    fc.integer({ min: 0, max: 0xffffffff }).map((n) => String(n)),
    fc.integer({ min: 0, max: 0xffffffff }).map((n) => `0x${n.toString(16)}`),
    fc.integer({ min: 0, max: 0o777 }).map((n) => `0${n.toString(8)}`),
    fc.constantFrom("xn--", "xn--bcher-kva", "0x", "0"),
  );
  const name = fc.tuple(fc.array(label, { minLength: 1, maxLength: 5 }), fc.boolean())
    .map(([ls, dot]) => ls.join(".") + (dot ? "." : ""));
  const ipv6 = fc.tuple(fc.ipV6(), fc.boolean()).map(([a, upper]) => upper ? a.toUpperCase() : a);
  fc.assert(
    fc.property(fc.oneof(name, ipv6, fc.ipV4Extended()), (host) => {
      assert.equal(canonicalHost(host), urlOracle(host), host);
    }),
    { numRuns: 2000 },
  );
});
