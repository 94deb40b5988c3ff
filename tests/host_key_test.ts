import assert from "node:assert/strict";
import { hostKey } from "../mod.ts";

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
