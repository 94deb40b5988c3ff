// The checks behind proxy authentication: every wrong credential costs one
// bcrypt comparison whoever the user is, bcrypt work is shared fairly between
// client addresses, and secrets that look like other hashes are refused.
import assert from "node:assert/strict";
import bcrypt from "bcryptjs";
import { AuthBusyError, checkUsers, parseUsers, ProxyAuth } from "../lib/access/proxy_auth.ts";
import { ProxyRateLimiter } from "../mod.ts";

const HASH = bcrypt.hashSync("alice's secret", 4);

function basic(user: string, password: string): string {
  return `Basic ${btoa(`${user}:${password}`)}`;
}

/** The bcrypt comparisons one authentication started, and its answer. */
async function cost(auth: ProxyAuth, user: string, password: string) {
  const before = auth.bcryptChecks;
  const user2 = await auth.authenticate(basic(user, password), "10.0.0.1");
  return { checks: auth.bcryptChecks - before, user: user2 };
}

Deno.test("every first wrong credential costs one bcrypt check: unknown, plain and bcrypt users alike", async () => {
  const auth = new ProxyAuth(parseUsers(`alice:${HASH},carol:carol's secret`));
  for (
    const [user, password] of [
      ["mallory", "guess"], // unknown
      ["carol", "guess"], // plain, wrong
      ["alice", "guess"], // bcrypt, wrong
      ["carol", "alice's secret"], // plain, with the password of the hash it is checked against
      ["mallory", "alice's secret"],
    ]
  ) {
    assert.deepEqual(await cost(auth, user, password), { checks: 1, user: null }, user);
    // Repeated, the same wrong credential is refused from the cache, with no bcrypt.
    assert.deepEqual(await cost(auth, user, password), { checks: 0, user: null }, user);
  }
  assert.deepEqual(await cost(auth, "alice", "alice's secret"), { checks: 1, user: "alice" });
  assert.deepEqual(await cost(auth, "alice", "alice's secret"), { checks: 0, user: "alice" });
  // A right plain password passes at once.
  assert.deepEqual(await cost(auth, "carol", "carol's secret"), { checks: 0, user: "carol" });
});

Deno.test("with plain passwords only, no check costs bcrypt", async () => {
  const auth = new ProxyAuth(parseUsers("carol:carol's secret"));
  assert.deepEqual(await cost(auth, "carol", "guess"), { checks: 0, user: null });
  assert.deepEqual(await cost(auth, "mallory", "guess"), { checks: 0, user: null });
  assert.deepEqual(await cost(auth, "carol", "carol's secret"), { checks: 0, user: "carol" });
});

Deno.test("a client gets its share of bcrypt checks, beyond it AuthBusyError, others take turns", async () => {
  const auth = new ProxyAuth(parseUsers(`alice:${HASH}`), { maxPerClient: 3 });
  // Checked once: from now on a cache hit.
  assert.equal(await auth.authenticate(basic("alice", "alice's secret"), "10.0.0.9"), "alice");
  const before = auth.bcryptChecks;
  const order: string[] = [];
  const flood = Array.from(
    { length: 6 },
    (_, i) =>
      Promise.resolve(auth.authenticate(basic("mallory", `guess ${i}`), "10.0.0.1")).then(
        (user) => order.push(`flood ${i} ${user}`),
        (err: Error) => order.push(`flood ${i} ${err.name}`),
      ),
  );
  // During the flood a cached credential answers at once, from the flooding address too.
  assert.equal(auth.authenticate(basic("alice", "alice's secret"), "10.0.0.1"), "alice");
  const other = Promise.resolve(auth.authenticate(basic("bob", "guess"), "10.0.0.2"))
    .then((user) => order.push(`other ${user}`));
  await Promise.all([...flood, other]);
  assert.deepEqual(order, [
    "flood 3 AuthBusyError",
    "flood 4 AuthBusyError",
    "flood 5 AuthBusyError",
    "flood 0 null",
    // The other address's check runs next, before the flood's waiting ones.
    "other null",
    "flood 1 null",
    "flood 2 null",
  ]);
  assert.equal(auth.bcryptChecks - before, 4);
});

Deno.test("when every place is taken, a newcomer displaces the newest check of the biggest holder", async () => {
  const auth = new ProxyAuth(parseUsers(`alice:${HASH}`), { maxWaiting: 4, maxPerClient: 4 });
  const answers = Array.from(
    { length: 4 },
    (_, i) =>
      Promise.resolve(auth.authenticate(basic("mallory", `guess ${i}`), "10.0.0.1")).catch((
        err: Error,
      ) => err.name),
  );
  const newcomer = auth.authenticate(basic("alice", "alice's secret"), "10.0.0.2");
  assert.equal(await newcomer, "alice");
  assert.deepEqual(await Promise.all(answers), [null, null, null, "AuthBusyError"]);
  // Four clients holding one each: a fifth gets no place (503), none is taken from them.
  const pairs = ["10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map((client, i) =>
    Promise.resolve(auth.authenticate(basic("bob", `guess ${i}`), client)).catch((err: Error) =>
      err.name
    )
  );
  await assert.rejects(
    Promise.resolve(auth.authenticate(basic("bob", "late"), "10.0.0.7")),
    (err: Error) => {
      assert.ok(err instanceof AuthBusyError);
      assert.equal(err.retryAfter, 1);
      assert.match(err.message, /^Too many credential checks waiting for 10\.0\.0\.7/);
      return true;
    },
  );
  assert.deepEqual(await Promise.all(pairs), [null, null, null, null]);
});

Deno.test("an IPv6 /64 shares one share, and an IPv4-mapped client is its IPv4 address", async () => {
  const auth = new ProxyAuth(parseUsers(`alice:${HASH}`), { maxPerClient: 2 });
  const busy = async (client: string, i: number) =>
    await Promise.resolve(auth.authenticate(basic("bob", `${client} ${i}`), client))
      .then(() => "", (err: Error) => err.message);
  const answers = await Promise.all([
    busy("2001:db8:0:1::1", 0),
    busy("2001:db8:0:1:ffff::2", 1),
    busy("2001:db8:0:1::3", 2),
    busy("2001:db8:0:2::1", 3), // another /64
    busy("10.0.0.1", 4),
    busy("::ffff:10.0.0.1", 5),
    busy("::ffff:10.0.0.1", 6),
  ]);
  assert.deepEqual(answers, [
    "",
    "",
    "Too many credential checks waiting for 2001:db8:0:1::/64; try again later",
    "",
    "",
    "",
    "Too many credential checks waiting for 10.0.0.1; try again later",
  ]);
});

const NOT_BCRYPT = [
  "$apr1$abcdefgh$0123456789abcdefghijkl",
  "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
  "{SSHA}abcdefghijklmnop",
  HASH.slice(0, 30),
  "$2b$10$",
  "$6$salt$hash",
  "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
];

Deno.test("DPRL_AUTH refuses a value that looks like a hash but is not bcrypt", () => {
  for (const secret of NOT_BCRYPT) {
    assert.throws(() => parseUsers(`alice:pw,bob:${secret}`), (err: Error) => {
      assert.ok(err instanceof RangeError);
      assert.equal(
        err.message,
        'DPRL_AUTH entry 2 for user "bob" looks like a hash but is not a bcrypt hash ' +
          "(only bcrypt is supported: write it with htpasswd -B)",
      );
      return true;
    }, secret);
  }
  // Passwords with dollars or braces elsewhere stay passwords; bcrypt hashes stay hashes.
  for (const secret of ["pa$$word", "a{SHA}b", "$ 1$", HASH]) {
    assert.equal(parseUsers(`bob:${secret}`).get("bob"), secret);
  }
});

Deno.test("the users option refuses hashes that are not bcrypt and values that are not strings", () => {
  for (const secret of NOT_BCRYPT) {
    assert.throws(
      () => new ProxyRateLimiter({ users: { bob: secret } }),
      /^RangeError: users option for user "bob" looks like a hash but is not a bcrypt hash/,
    );
  }
  assert.throws(
    () => checkUsers({ bob: 42 }),
    /^TypeError: users option for user "bob" must be a non-empty string$/,
  );
  assert.throws(() => checkUsers({ "b ob": "pw" }), /^RangeError: users option has a user name/);
  checkUsers({ alice: HASH, bob: "plain" });
});
