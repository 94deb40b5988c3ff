import assert from "node:assert/strict";
import { DestinationPolicy, DestinationRefusedError } from "../lib/access/destination_policy.ts";
import { HttpError } from "../lib/proxy/http_head.ts";
import { baseEnv } from "./_helpers/spawn.ts";

/** Asserts that `check` refuses with 403 and `proxyError`, the message matching `message`. */
async function refused(
  policy: DestinationPolicy,
  hostname: string,
  port: number,
  proxyError: string,
  message?: RegExp,
): Promise<void> {
  await assert.rejects(policy.check(hostname, port), (err: Error) => {
    assert.ok(err instanceof DestinationRefusedError, `${hostname}:${port}: ${err}`);
    assert.ok(err instanceof HttpError);
    assert.equal(err.status, 403);
    assert.equal(err.proxyError, proxyError, `${hostname}:${port}: ${err.message}`);
    if (message) assert.match(err.message, message);
    assert.ok(!err.message.includes("\n"));
    return true;
  }, `${hostname}:${port} must be refused`);
}

Deno.test("without rules a name is returned unresolved, so the dialer keeps Happy Eyeballs", async () => {
  const policy = new DestinationPolicy({});
  // No network here: had these been resolved, the check would fail.
  assert.deepEqual(await policy.check("Example.COM.", 443), ["example.com"]);
  assert.deepEqual(await policy.check("localhost", 80), ["localhost"]);
  assert.deepEqual(await policy.check("127.0.0.1", 80), ["127.0.0.1"]);
  assert.deepEqual(await policy.check("[::1]", 80), ["::1"]);
});

Deno.test("--deny-private refuses a name that resolves to loopback, and literals of every form", async () => {
  const policy = new DestinationPolicy({ denyPrivate: true });
  await refused(
    policy,
    "localhost",
    80,
    "destination_ip_prohibited",
    /localhost:80 \(127\.0\.0\.1\)/,
  );
  // getaddrinfo reads a bare number as an IPv4 address: 2130706433 is 127.0.0.1.
  await refused(policy, "2130706433", 443, "destination_ip_prohibited", /127\.0\.0\.1/);
  for (
    const literal of [
      "127.0.0.1",
      "[::1]",
      "::ffff:127.0.0.1",
      "169.254.169.254",
      "0.0.0.0",
      "[::]",
      "10.0.0.1",
      "64:ff9b::a9fe:a9fe",
    ]
  ) {
    await refused(policy, literal, 80, "destination_ip_prohibited", /private address/);
  }
  // A public address passes, and what is returned is what was checked.
  assert.deepEqual(await policy.check("16843009", 443), ["1.1.1.1"]);
  assert.deepEqual(await policy.check("8.8.8.8", 443), ["8.8.8.8"]);
});

Deno.test("an allow rule does not lift --deny-private", async () => {
  const policy = new DestinationPolicy({ denyPrivate: true, allow: ["127.0.0.0/8", "localhost"] });
  await refused(policy, "localhost", 80, "destination_ip_prohibited");
  await refused(policy, "127.0.0.1", 80, "destination_ip_prohibited");
});

Deno.test("the proxy dials exactly the addresses that were checked", async () => {
  await using upstream = listenEcho();
  // A CIDR rule makes the policy resolve; the name is never handed to the dialer.
  const policy = new DestinationPolicy({ deny: ["10.0.0.0/8"] });
  const addresses = await policy.check("localhost", upstream.port);
  assert.deepEqual(addresses, ["127.0.0.1"]);
  const conn = await Deno.connect({ hostname: addresses[0], port: upstream.port });
  try {
    await conn.write(new TextEncoder().encode("ping"));
    const buf = new Uint8Array(4);
    let got = 0;
    while (got < 4) {
      const n = await conn.read(buf.subarray(got));
      if (n === null) break;
      got += n;
    }
    assert.equal(new TextDecoder().decode(buf), "ping");
  } finally {
    conn.close();
  }
});

Deno.test("the proxy's own listening address is refused in every spelling, with no rule at all", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  const policy = new DestinationPolicy({});
  await policy.protect("127.0.0.1", port);
  const spellings = [
    "localhost",
    "LOCALHOST.",
    "127.0.0.1",
    "127.0.0.2",
    "[::1]",
    "::ffff:127.0.0.1",
    "0.0.0.0",
    "[::]",
    "2130706433",
  ];
  for (const host of spellings) {
    await refused(policy, host, port, "destination_ip_prohibited", /this proxy or its Redis/);
  }
  // Other ports of the same machine, and the same port elsewhere, are not the proxy.
  assert.deepEqual(await policy.check("localhost", port === 65535 ? 1 : port + 1), ["localhost"]);
  assert.deepEqual(await policy.check("8.8.8.8", port), ["8.8.8.8"]);
  assert.deepEqual(await policy.check("16843009", port), ["1.1.1.1"]);
});

Deno.test("a wildcard listener protects the port on the machine's interface addresses", async () => {
  const policy = new DestinationPolicy({});
  await policy.protect("0.0.0.0", 18080);
  assert.equal(policy.interfacesVisible, true); // the test runs with --allow-sys
  const addresses = Deno.networkInterfaces().map((nic) => nic.address);
  assert.ok(addresses.length > 0);
  for (const address of addresses) {
    const host = address.includes(":") ? `[${address.split("%")[0]}]` : address;
    await refused(policy, host, 18080, "destination_ip_prohibited");
  }
  await refused(policy, "localhost", 18080, "destination_ip_prohibited");
  assert.deepEqual(await policy.check("8.8.8.8", 18080), ["8.8.8.8"]);
});

Deno.test("a remote Redis address is refused on its port only", async () => {
  const policy = new DestinationPolicy({});
  await policy.protect("192.0.2.10", 6379);
  await refused(policy, "192.0.2.10", 6379, "destination_ip_prohibited");
  await refused(policy, "::ffff:192.0.2.10", 6379, "destination_ip_prohibited");
  assert.deepEqual(await policy.check("192.0.2.11", 6379), ["192.0.2.11"]);
  assert.deepEqual(await policy.check("192.0.2.10", 6380), ["192.0.2.10"]);
});

Deno.test("the fleet's addresses are refused in every spelling until the next list leaves them out", async () => {
  const policy = new DestinationPolicy({});
  await policy.protect("127.0.0.1", 18080);
  await policy.protectFleet([
    { hostname: "127.0.0.1", port: 19090 },
    { hostname: "192.0.2.20", port: 8080 },
  ]);
  const fleet = /is a proxy or admin server of the fleet/;
  for (const host of ["127.0.0.1", "localhost", "127.1", "::ffff:127.0.0.1", "0.0.0.0"]) {
    await refused(policy, host, 19090, "destination_ip_prohibited", fleet);
  }
  await refused(policy, "::ffff:192.0.2.20", 8080, "destination_ip_prohibited", fleet);
  assert.deepEqual(await policy.check("192.0.2.21", 8080), ["192.0.2.21"]);

  await policy.protectFleet([{ hostname: "192.0.2.20", port: 8080 }]);
  assert.deepEqual(await policy.check("127.0.0.1", 19090), ["127.0.0.1"], "a worker that left");
  await refused(policy, "192.0.2.20", 8080, "destination_ip_prohibited", fleet);
  await refused(policy, "localhost", 18080, "destination_ip_prohibited", /this proxy/);
});

Deno.test("a protected name that does not resolve yet is refused by name", async () => {
  const policy = new DestinationPolicy({});
  await policy.protect("redis.invalid", 6379);
  await refused(policy, "redis.invalid", 6379, "destination_ip_prohibited");
  assert.deepEqual(await policy.check("redis.invalid", 6380), ["redis.invalid"]);
});

Deno.test("allow rules: a destination must match one; names are refused without a lookup", async () => {
  const policy = new DestinationPolicy({ allow: ["*.example.com:443", "example.org"] });
  assert.deepEqual(await policy.check("www.example.com", 443), ["www.example.com"]);
  assert.deepEqual(await policy.check("example.org", 8443), ["example.org"]);
  await refused(policy, "www.example.com", 80, "destination_not_allowed", /matches no allow rule/);
  await refused(policy, "example.com", 443, "destination_not_allowed");
  await refused(policy, "other.net", 443, "destination_not_allowed");
  await refused(policy, "93.184.216.34", 443, "destination_not_allowed");
});

Deno.test("allow CIDRs are checked on the resolved addresses", async () => {
  const policy = new DestinationPolicy({ allow: ["127.0.0.0/8:80"] });
  assert.deepEqual(await policy.check("localhost", 80), ["127.0.0.1"]);
  await refused(policy, "localhost", 81, "destination_not_allowed", /\(127\.0\.0\.1\)/);
  await refused(policy, "16843009", 80, "destination_not_allowed");
});

Deno.test("deny wins over allow, on names and on addresses", async () => {
  const names = new DestinationPolicy({ allow: ["*"], deny: ["localhost", "*.internal"] });
  await refused(names, "localhost", 80, "destination_not_allowed", /rule "localhost"/);
  await refused(names, "db.internal", 5432, "destination_not_allowed");
  assert.deepEqual(await names.check("example.com", 443), ["example.com"]);

  const addresses = new DestinationPolicy({ allow: ["localhost"], deny: ["127.0.0.0/8:80"] });
  await refused(
    addresses,
    "localhost",
    80,
    "destination_ip_prohibited",
    /rule "127\.0\.0\.0\/8:80"/,
  );
  assert.deepEqual(await addresses.check("localhost", 81), ["127.0.0.1"]);
});

Deno.test("a name that does not resolve gives 502 dns_error when its address is needed", async () => {
  const policy = new DestinationPolicy({ denyPrivate: true });
  await assert.rejects(policy.check("nothing.invalid", 80), (err: Error) => {
    assert.ok(err instanceof HttpError && !(err instanceof DestinationRefusedError));
    assert.equal(err.status, 502);
    assert.equal(err.proxyError, "dns_error");
    assert.match(err.message, /Cannot resolve nothing\.invalid/);
    return true;
  });
});

/** A TCP echo server on loopback that closes when disposed. */
function listenEcho(): { port: number } & AsyncDisposable {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served = (async () => {
    for await (const conn of listener) {
      (async () => {
        try {
          await conn.readable.pipeTo(conn.writable);
        } catch {
          // the client went away
        }
      })();
    }
  })();
  return {
    port: listener.addr.port,
    async [Symbol.asyncDispose]() {
      listener.close();
      await served.catch(() => {});
    },
  };
}

Deno.test("without --allow-sys a wildcard listener is still protected on loopback, with no prompt", async () => {
  const module = new URL("../lib/access/destination_policy.ts", import.meta.url).href;
  const script = `
    import { DestinationPolicy } from "${module}";
    const policy = new DestinationPolicy({});
    await policy.protect("0.0.0.0", 18080);
    const outcome = [policy.interfacesVisible];
    for (const host of ["localhost", "127.0.0.1", "0.0.0.0"]) {
      outcome.push(await policy.check(host, 18080).then(() => "admitted", (e) => e.proxyError));
    }
    console.log(JSON.stringify(outcome));
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", "--allow-net", "-"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    clearEnv: true,
    env: baseEnv(),
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(script));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  assert.deepEqual(JSON.parse(new TextDecoder().decode(stdout)), [
    false,
    "destination_ip_prohibited",
    "destination_ip_prohibited",
    "destination_ip_prohibited",
  ]);
});

Deno.test("a malformed destination name gets 400 and is not echoed", async () => {
  const policy = new DestinationPolicy({});
  for (
    const host of [
      'evil"name',
      "a b",
      "x\r\nSet-Cookie: 1",
      "",
      "a..b",
      `${"a".repeat(254)}`,
      "café.fr",
    ]
  ) {
    await assert.rejects(policy.check(host, 80), (err: Error) => {
      assert.ok(err instanceof HttpError && !(err instanceof DestinationRefusedError), host);
      assert.equal(err.status, 400);
      assert.equal(err.message, "Destination host name is malformed");
      return true;
    }, JSON.stringify(host));
  }
  assert.deepEqual(await policy.check("under_score-1.example", 80), ["under_score-1.example"]);
});
