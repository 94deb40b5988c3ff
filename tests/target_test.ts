// Request targets and their authorities, without sockets; WHATWG URL
// parsing is the oracle of the canonical host.
import assert from "node:assert/strict";
import { parseConnectTarget, parsePort, parseTarget } from "../lib/proxy/target.ts";
import { HttpError } from "../lib/proxy/http_head.ts";

function refused(fn: () => unknown): boolean {
  try {
    fn();
    return false;
  } catch (err) {
    if (err instanceof HttpError && err.status === 400) return true;
    throw err;
  }
}

/** The host WHATWG URL parsing gives, IPv4-mapped IPv6 as IPv4. */
function oracle(authority: string): string {
  const host = new URL(`http://${authority}/`).hostname.replace(/^\[|\]$/g, "");
  const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(host);
  if (!m) return host.replace(/\.$/, "");
  const [hi, lo] = [parseInt(m[1], 16), parseInt(m[2], 16)];
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

const LOOPBACK_SPELLINGS = [
  "127.0.0.1",
  "127.1",
  "127.0.1",
  "2130706433",
  "0x7f000001",
  "0X7F000001",
  "0x7f.1",
  "0177.0.0.1",
  "0177.1",
  "127.000.000.001",
  "127.0.0.01",
  "127.0.0.1.",
  "[::ffff:127.0.0.1]",
  "[::ffff:7f00:1]",
  "[0:0:0:0:0:ffff:7f00:0001]",
  "[::FFFF:127.0.0.1]",
];

Deno.test("every spelling of 127.0.0.1 dials and keys as 127.0.0.1", () => {
  for (const host of LOOPBACK_SPELLINGS) {
    const t = parseTarget(`http://${host}:8080/p`);
    assert.equal(oracle(host), "127.0.0.1", host);
    assert.equal(t.hostname, "127.0.0.1", host);
    assert.equal(t.key, "127.0.0.1:8080", host);
    assert.equal(t.authority, `${host}:8080`);
    const c = parseConnectTarget(`${host}:443`);
    assert.equal(c.hostname, "127.0.0.1", host);
    assert.equal(c.key, "127.0.0.1", host);
  }
});

Deno.test("hosts follow the URL oracle, IPv6 compressed", () => {
  const hosts = [
    "Example.COM",
    "example.com.",
    "a_b.example",
    "10.1",
    "0",
    "0x0",
    "4294967295",
    "0xffffffff",
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[FE80::0:1]",
    "[2001:db8::1:0:0:1]",
    "[::127.0.0.1]",
    "[1:2:3:4:5:6:7:8]",
  ];
  for (const host of hosts) {
    const t = parseTarget(`http://${host}:81/`);
    assert.equal(t.hostname, oracle(host), host);
    const bracketed = t.hostname.includes(":") ? `[${t.hostname}]` : t.hostname;
    assert.equal(t.key, `${bracketed}:81`, host);
  }
});

Deno.test("hosts the URL parser refuses are refused with 400", () => {
  for (
    const host of [
      "256.0.0.1",
      "4294967296",
      "0x100000000",
      "1.2.3.4.5",
      "host.0x1",
      "host.123",
      "[::1::2]",
      "[1.2.3.4]",
      "[example.com]",
      "08.0.0.1",
    ]
  ) {
    assert.throws(() => new URL(`http://${host}/`), TypeError, host);
    assert.ok(refused(() => parseTarget(`http://${host}/`)), host);
    assert.ok(refused(() => parseConnectTarget(`${host}:443`)), host);
  }
});

Deno.test("authorities with credentials, odd characters or bare IPv6 get 400", () => {
  const bad = [
    "user@127.0.0.1",
    "user:pw@127.0.0.1",
    "@127.0.0.1",
    "127.0.0.1%2f",
    "127.0.0.%31",
    "[::1%25eth0]",
    "::1",
    "[::1",
    "::1]",
    "exa mple.com",
    "exa\tmple.com",
    "exa*mple.com",
    "ex\\ample.com",
    "",
  ];
  for (const authority of bad) {
    assert.ok(refused(() => parseTarget(`http://${authority}/x`)), authority);
    assert.ok(refused(() => parseConnectTarget(`${authority}:443`)), authority);
  }
});

Deno.test("CONNECT targets need a valid port and nothing else", () => {
  for (
    const target of [
      "127.0.0.1",
      "127.0.0.1:",
      "127.0.0.1:0",
      "127.0.0.1:65536",
      "127.0.0.1:+80",
      "127.0.0.1:80/",
      "127.0.0.1:80?",
      "http://127.0.0.1:80",
      "[::1]",
      "127.0.0.1:443:443",
    ]
  ) {
    assert.ok(refused(() => parseConnectTarget(target)), target);
  }
  assert.deepEqual(parseConnectTarget("Example.com:8443"), {
    key: "example.com:8443",
    hostname: "example.com",
    port: 8443,
    authority: "Example.com:8443",
  });
  assert.equal(parseConnectTarget("[::1]:443").key, "[::1]");
});

Deno.test("absolute-form targets give the origin-form path", () => {
  const cases: [string, string, number][] = [
    ["http://a.example", "/", 80],
    ["http://a.example:", "/", 80],
    ["http://a.example:8080", "/", 8080],
    ["HTTP://a.example/x?y#z", "/x?y", 80],
    ["http://a.example?q", "/?q", 80],
    ["http://a.example#frag", "/", 80],
    ["http://a.example/%2e%2e/x", "/%2e%2e/x", 80],
  ];
  for (const [target, path, port] of cases) {
    const t = parseTarget(target);
    assert.equal(t.path, path, target);
    assert.equal(t.port, port, target);
  }
  for (const target of ["/x", "*", "https://a.example/", "ftp://a.example/", "a.example:80"]) {
    assert.ok(refused(() => parseTarget(target)), target);
  }
});

Deno.test("parsePort accepts 1 to 65535 in decimal only", () => {
  assert.equal(parsePort("1"), 1);
  assert.equal(parsePort("65535"), 65535);
  assert.equal(parsePort("08080"), 8080);
  for (const p of ["", "0", "65536", "-1", "+1", "1e3", "0x50", " 80", "123456"]) {
    assert.equal(parsePort(p), null, p);
  }
});
