import assert from "node:assert/strict";
import { ClientPolicy, PROXY_AUTHENTICATE } from "../lib/access/client_policy.ts";
import { parseHtpasswd, parseUsers } from "../lib/access/proxy_auth.ts";
import { parseAccessFlags } from "../lib/access/access_flags.ts";
import { BCRYPTJS } from "../lib/access/bcrypt_verifier.ts";
import { commandTest } from "./_helpers/command.ts";

/** Two users as `htpasswd -nbB` wrote them: alice / "wonder:land", bob / "builder". */
const HTPASSWD = [
  "# written by htpasswd -B",
  "alice:$2y$05$SfOnY4taBA.6yacl1QpZweuAwYz2I6QzrI4f8RE0cD5SbD.ZuD.bK",
  "",
  "bob:$2y$05$5ch4KkFyX.Ud9O9eoc1tnOIzLrJD1hIm7X3GkAOEr8Ug1EZxBimKm",
].join("\r\n");

function basic(user: string, password: string): string {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  return `Basic ${btoa(String.fromCharCode(...bytes))}`;
}

Deno.test("by default loopback and private clients are admitted, others are not", () => {
  const policy = new ClientPolicy({});
  assert.equal(policy.authRequired, false);
  const table: [string, boolean][] = [
    ["127.0.0.1", true],
    ["127.9.9.9", true],
    ["::1", true],
    ["::ffff:127.0.0.1", true],
    ["::ffff:192.168.1.20", true],
    ["10.20.30.40", true],
    ["172.16.0.1", true],
    ["172.31.255.255", true],
    ["192.168.0.1", true],
    ["fd00::2", true],
    ["fc00::1", true],
    ["8.8.8.8", false],
    ["::ffff:8.8.8.8", false],
    ["172.32.0.1", false],
    ["100.64.0.1", false],
    ["169.254.169.254", false],
    ["fe80::1%eth0", false],
    ["2001:db8::1", false],
    ["not an address", false],
    ["", false],
  ];
  for (const [address, want] of table) {
    assert.equal(policy.admitsAddress(address), want, address);
  }
});

Deno.test("--allow-clients replaces the default list", () => {
  const policy = new ClientPolicy({ allowClients: ["203.0.113.0/24", "2001:db8::/32"] });
  assert.equal(policy.admitsAddress("203.0.113.77"), true);
  assert.equal(policy.admitsAddress("::ffff:203.0.113.77"), true);
  assert.equal(policy.admitsAddress("2001:db8::5"), true);
  assert.equal(policy.admitsAddress("127.0.0.1"), false);
  assert.throws(
    () => new ClientPolicy({ allowClients: ["10.0.0.0/8", "10.0.0.0/40"] }),
    /^RangeError: --allow-clients needs CIDRs such as 10\.0\.0\.0\/8, got "10\.0\.0\.0\/40"$/,
  );
});

Deno.test("with authentication any address may connect, unless clients are listed too", () => {
  const users = parseUsers("alice:pw");
  const open = new ClientPolicy({ users });
  assert.equal(open.authRequired, true);
  assert.equal(open.admitsAddress("8.8.8.8"), true);
  const listed = new ClientPolicy({ users, allowClients: ["10.0.0.0/8"] });
  assert.equal(listed.admitsAddress("8.8.8.8"), false);
  assert.equal(listed.admitsAddress("10.1.1.1"), true);
});

Deno.test("plain passwords from DPRL_AUTH authenticate synchronously", () => {
  const policy = new ClientPolicy({ users: parseUsers("alice:wonder:land, bob:builder") });
  assert.equal(policy.authenticate(basic("alice", "wonder:land")), "alice");
  assert.equal(policy.authenticate(basic("bob", "builder")), "bob");
  assert.equal(policy.authenticate(`basic   ${basic("bob", "builder").slice(6)}  `), "bob");
  assert.equal(policy.authenticate(basic("bob", "wonder:land")), null);
  assert.equal(policy.authenticate(basic("alice", "wonder")), null);
  assert.equal(policy.authenticate(basic("carol", "builder")), null);
  assert.equal(policy.authenticate(basic("", "")), null);
  assert.equal(policy.authenticate(undefined), null);
  assert.equal(policy.authenticate(""), null);
  assert.equal(policy.authenticate("Bearer abc"), null);
  assert.equal(policy.authenticate("Basic !!!"), null);
  assert.equal(policy.authenticate(`Basic ${btoa("alice")}`), null);
  assert.equal(policy.authenticate(`Basic ${btoa("alice:wonder:land")} extra`), null);
});

Deno.test("bcrypt hashes from htpasswd -B authenticate, and the result is cached", async () => {
  const policy = new ClientPolicy({ users: parseHtpasswd(HTPASSWD, "users.htpasswd") });
  const first = policy.authenticate(basic("alice", "wonder:land"));
  assert.ok(first instanceof Promise);
  assert.equal(await first, "alice");
  // The second check of the same credentials pays no bcrypt: it answers at once.
  assert.equal(policy.authenticate(basic("alice", "wonder:land")), "alice");

  const wrong = policy.authenticate(basic("alice", "builder"));
  assert.ok(wrong instanceof Promise);
  assert.equal(await wrong, null);
  assert.equal(policy.authenticate(basic("alice", "builder")), null);

  // Unknown users are checked against a real hash too (no timing difference), and refused.
  const stranger = policy.authenticate(basic("mallory", "builder"));
  assert.ok(stranger instanceof Promise);
  assert.equal(await stranger, null);
  // Not even with the password of the hash it is checked against.
  assert.equal(await policy.authenticate(basic("mallory", "wonder:land")), null);

  // Many concurrent first checks from one client all settle: its share (8) is checked,
  // the rest are told to come back; valid ones from elsewhere still pass.
  const many = await Promise.all(
    Array.from(
      { length: 20 },
      (_, i) =>
        Promise.resolve(policy.authenticate(basic("bob", `guess${i}`), "10.0.0.1"))
          .catch((err: Error) => err.name),
    ),
  );
  assert.deepEqual(many, [...new Array(8).fill(null), ...new Array(12).fill("AuthBusyError")]);
  assert.equal(await policy.authenticate(basic("bob", "builder"), "10.0.0.2"), "bob");
});

Deno.test("clients presenting the same new credentials at once all get their answer", async () => {
  const policy = new ClientPolicy({ users: parseHtpasswd(HTPASSWD, "users.htpasswd") });
  const answers = await Promise.all(
    Array.from(
      { length: 30 },
      (_, i) => policy.authenticate(basic("alice", i % 2 ? "wonder:land" : "x")),
    ),
  );
  assert.deepEqual(answers, Array.from({ length: 30 }, (_, i) => i % 2 ? "alice" : null));
});

Deno.test("the bcrypt worker loads the bcryptjs pinned in deno.json", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  assert.equal(config.imports.bcryptjs, BCRYPTJS);
});

Deno.test("DPRL_AUTH may carry bcrypt hashes beside plain passwords", async () => {
  const hash = HTPASSWD.split("\r\n")[1].split(":")[1];
  const policy = new ClientPolicy({ users: parseUsers(`alice:${hash},carol:plain`) });
  assert.equal(await policy.authenticate(basic("alice", "wonder:land")), "alice");
  assert.equal(await policy.authenticate(basic("carol", "plain")), "carol");
  assert.equal(await policy.authenticate(basic("carol", hash)), null);
});

commandTest("an htpasswd file written by htpasswd -B now authenticates", {
  command: "htpasswd",
  install: "apache2-utils (htpasswd)",
}, async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/users`;
    const run = new Deno.Command("htpasswd", { args: ["-cbB", file, "carol", "s3cret pass"] });
    assert.equal((await run.output()).code, 0);
    const { clients } = parseAccessFlags({ authFile: file });
    const policy = new ClientPolicy(clients);
    assert.equal(await policy.authenticate(basic("carol", "s3cret pass")), "carol");
    assert.equal(await policy.authenticate(basic("carol", "s3cret")), null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("htpasswd lines that are not bcrypt are errors naming file and line", () => {
  const table: [string, RegExp][] = [
    [
      "alice:$apr1$abc$def",
      /^users:1 for user "alice" is not a bcrypt hash \(write it with htpasswd -B\)$/,
    ],
    ["# c\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", /^users:2 for user "bob" is not a bcrypt hash/],
    ["carol:plaintext", /^users:1 for user "carol" is not a bcrypt hash/],
    ["\n\njustaname", /^users:3 must be user:hash$/],
    [":$2y$05$SfOnY4taBA.6yacl1QpZweuAwYz2I6QzrI4f8RE0cD5SbD.ZuD.bK", /^users:1 has a user name/],
    [
      `${HTPASSWD}\nalice:${HTPASSWD.split("\r\n")[1].split(":")[1]}`,
      /^users:5 repeats user "alice"$/,
    ],
  ];
  for (const [text, message] of table) {
    assert.throws(() => parseHtpasswd(text, "users"), (err: Error) => {
      assert.ok(err instanceof RangeError);
      assert.match(err.message, message);
      return true;
    }, text);
  }
  assert.equal(parseHtpasswd("", "empty").size, 0);
});

Deno.test("bad DPRL_AUTH entries are named by position, never by password", () => {
  const table: [string, RegExp][] = [
    ["alice", /^DPRL_AUTH entry 1 must be user:password$/],
    ["alice:topsecret,bob", /^DPRL_AUTH entry 2 must be user:password$/],
    ["alice:topsecret,bob:", /^DPRL_AUTH entry 2 must be user:password$/],
    [":topsecret", /^DPRL_AUTH entry 1 has a user name that is empty/],
    ["al ice:topsecret", /^DPRL_AUTH entry 1 has a user name/],
    ["alice:topsecret,alice:other", /^DPRL_AUTH entry 2 repeats user "alice"$/],
    ["alice:topsecret,,bob:x", /^DPRL_AUTH entry 2 must be user:password$/],
  ];
  for (const [text, message] of table) {
    assert.throws(() => parseUsers(text), (err: Error) => {
      assert.match(err.message, message);
      assert.ok(!err.message.includes("topsecret"));
      return true;
    }, text);
  }
  assert.equal(parseUsers("").size, 0);
});

Deno.test("the 407 challenge names the Basic scheme and the dprl realm", () => {
  assert.equal(PROXY_AUTHENTICATE, 'Basic realm="dprl", charset="UTF-8"');
});

Deno.test("an open allow-list without authentication gives a start-up warning", () => {
  assert.equal(new ClientPolicy({}).exposureWarning("0.0.0.0"), undefined);
  const open = new ClientPolicy({ allowClients: ["0.0.0.0/0", "10.0.0.0/8"] });
  assert.match(open.exposureWarning("0.0.0.0")!, /^Open proxy: anyone at 0\.0\.0\.0\/0 may use it/);
  assert.match(open.exposureWarning("192.0.2.2")!, /^Open proxy/);
  assert.equal(open.exposureWarning("127.0.0.1"), undefined);
  assert.equal(open.exposureWarning("localhost"), undefined);
  const authenticated = new ClientPolicy({ allowClients: ["0.0.0.0/0"], users: parseUsers("a:b") });
  assert.equal(authenticated.exposureWarning("0.0.0.0"), undefined);
});

Deno.test("access flags become policy options, bad values one-line errors", async () => {
  const { clients, destinations } = parseAccessFlags({
    allowClients: "10.0.0.0/8, 192.168.0.0/16",
    auth: "alice:pw",
    allow: ["*.example.com:443,example.org", "10.0.0.0/8"],
    deny: ["[::1]:8080"],
    denyPrivate: "yes",
  });
  assert.deepEqual(clients.allowClients, ["10.0.0.0/8", "192.168.0.0/16"]);
  assert.deepEqual([...clients.users!], [["alice", "pw"]]);
  assert.deepEqual(destinations, {
    allow: ["*.example.com:443", "example.org", "10.0.0.0/8"],
    deny: ["[::1]:8080"],
    denyPrivate: true,
  });
  const none = parseAccessFlags({ allowClients: "" });
  assert.equal(none.clients.allowClients, undefined);
  assert.equal(none.destinations.denyPrivate, false);
  assert.equal((parseAccessFlags({ denyPrivate: true })).destinations.denyPrivate, true);

  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/users`, HTPASSWD);
    const table: [Parameters<typeof parseAccessFlags>[0], RegExp][] = [
      [{ allowClients: "10.0.0.0/8,nope" }, /^--allow-clients needs CIDRs .* got "nope"$/],
      [{ allow: ["ok.com", "bad host"] }, /^--allow: Rule "bad host" must be a host name/],
      [{ deny: ["x.com:0"] }, /^--deny: Rule "x\.com:0" has a bad port "0"/],
      [{ denyPrivate: "maybe" }, /^--deny-private must be true or false, got "maybe"$/],
      [{ authFile: `${dir}/missing` }, /^--auth-file .*missing cannot be read: no such file$/],
      [
        { authFile: `${dir}/users`, auth: "bob:x" },
        /^User "bob" is in both DPRL_AUTH and --auth-file$/,
      ],
    ];
    for (const [values, message] of table) {
      assert.throws(() => parseAccessFlags(values), (err: Error) => {
        assert.ok(err instanceof RangeError);
        assert.match(err.message, message);
        return true;
      }, JSON.stringify(values));
    }
    const both = parseAccessFlags({ authFile: `${dir}/users`, auth: "carol:x" });
    assert.deepEqual([...both.clients.users!.keys()], ["carol", "alice", "bob"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

commandTest("credentials as curl --proxy-user sends them pass, for plain HTTP and CONNECT", {
  command: "curl",
  install: "curl",
}, async () => {
  const users = parseHtpasswd(HTPASSWD, "users.htpasswd");
  users.set("zoë", "pässwörd:with colon");
  const policy = new ClientPolicy({ users });
  await using gate = listenAuthGate(policy);
  const curl = async (user: string, ...args: string[]): Promise<string> => {
    const { stdout } = await new Deno.Command("curl", {
      args: [
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_connect}",
        "--max-time",
        "10",
        "--proxy",
        `http://127.0.0.1:${gate.port}`,
        "--proxy-user",
        user,
        ...args,
      ],
      env: { NO_PROXY: "", no_proxy: "" },
    }).output();
    return new TextDecoder().decode(stdout);
  };
  assert.equal(await curl("alice:wonder:land", "http://upstream.test/"), "200 000");
  assert.equal(await curl("alice:wrong", "http://upstream.test/"), "407 000");
  assert.equal(await curl("zoë:pässwörd:with colon", "http://upstream.test/"), "200 000");
  // The tunnel opens (200); the request inside it then meets the closed connection (000).
  assert.equal(await curl("bob:builder", "-p", "http://upstream.test:8443/"), "000 200");
  assert.equal(await curl("bob:wrong", "-p", "http://upstream.test:8443/"), "000 407");
  assert.deepEqual(gate.challenges, [PROXY_AUTHENTICATE, PROXY_AUTHENTICATE]);
});

/**
 * A listener that answers each request head with 200 when its
 * Proxy-Authorization passes `policy`, else 407, and closes.
 */
function listenAuthGate(
  policy: ClientPolicy,
): { port: number; challenges: string[] } & AsyncDisposable {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const challenges: string[] = [];
  const answer = async (conn: Deno.Conn) => {
    let head = "";
    const buf = new Uint8Array(4096);
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      if (n === null) return;
      head += new TextDecoder().decode(buf.subarray(0, n));
    }
    const field = /^proxy-authorization:[ \t]*(.*?)[ \t]*$/im.exec(head)?.[1];
    const user = await policy.authenticate(field);
    let reply = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    if (user === null) {
      challenges.push(PROXY_AUTHENTICATE);
      reply = "HTTP/1.1 407 Proxy Authentication Required\r\n" +
        `Proxy-Authenticate: ${PROXY_AUTHENTICATE}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`;
    }
    await conn.write(new TextEncoder().encode(reply));
  };
  const served = (async () => {
    for await (const conn of listener) {
      answer(conn).catch(() => {}).finally(() => conn.close());
    }
  })();
  return {
    port: listener.addr.port,
    challenges,
    async [Symbol.asyncDispose]() {
      listener.close();
      await served.catch(() => {});
    },
  };
}
