// The Lua scripts' codec without Redis: each script's keys and arguments in
// the order the script reads them, and its reply decoded by name.
import assert from "node:assert/strict";
import { ACQUIRE, COUNT, LINE, REGISTER, RELEASE, SYNC } from "../lib/limit/redis_script_codec.ts";
import { ACQUIRE_LUA, LINE_LUA, SYNC_LUA } from "../lib/limit/redis_scripts.ts";

const ACQUIRE_INPUT = {
  n: "p:{h}:n",
  leases: "p:leases",
  epoch: "p:epoch",
  members: "p:{h}:n",
  q: "p:{h}:q",
  qw: "p:{h}:qw",
  worker: "w1",
  lease: 15_000,
  floor: 2,
  ttl: 180_000,
  known: "tok",
  fresh: "new",
  trusted: true,
  releases: 1,
  host: "h",
  groupLimit: -1,
  asks: [{ limit: 4, ticket: "" }, { limit: 4, ticket: "w1|7" }],
};

Deno.test("acquire: keys n, leases, epoch, members, q, qw; the asks last, a ticket after its limit", () => {
  const { keys, args } = ACQUIRE.encode(ACQUIRE_INPUT);
  assert.deepEqual(keys, ["p:{h}:n", "p:leases", "p:epoch", "p:{h}:n", "p:{h}:q", "p:{h}:qw"]);
  assert.deepEqual(args, [
    "w1",
    15_000,
    2,
    180_000,
    "tok",
    "new",
    1,
    1,
    "h",
    -1,
    4,
    "4 w1|7",
  ]);
  // The script reads its arguments at these positions.
  assert.match(ACQUIRE_LUA, /local releases = tonumber\(ARGV\[8\]\)/);
  assert.match(ACQUIRE_LUA, /local host = ARGV\[9\]/);
  assert.deepEqual(ACQUIRE.encode({ ...ACQUIRE_INPUT, trusted: false }).args[6], 0);
});

Deno.test("acquire: the reply by name, grants per ask, the line's length, then healed keys", () => {
  const reply = ACQUIRE.decode(
    [3, 2, "tok", 1, 0, 5, "p:{h}:q", "string", "zset"],
    ACQUIRE_INPUT,
  );
  assert.deepEqual(reply, {
    total: 3,
    lost: 2,
    epoch: "tok",
    granted: [true, false],
    waiting: 5,
    healed: [{ key: "p:{h}:q", type: "string", kind: "zset" }],
  });
  assert.deepEqual(ACQUIRE.decode([1, 0, "t", 1, 0, 0], ACQUIRE_INPUT).healed, []);
  assert.throws(() => ACQUIRE.decode("OK", ACQUIRE_INPUT), TypeError);
});

Deno.test("release: keys n, epoch, q; worker, count, host; remaining then healed", () => {
  const input = { n: "n", epoch: "e", q: "q", worker: "w", count: 2, host: "h" };
  assert.deepEqual(RELEASE.encode(input), { keys: ["n", "e", "q"], args: ["w", 2, "h"] });
  assert.deepEqual(RELEASE.decode([0], input), { remaining: 0, healed: [] });
});

Deno.test("sync: epoch, lease set, then n of each host; four arguments per host; a pair per host in the reply", () => {
  const input = {
    epoch: "e",
    leases: "L",
    worker: "w",
    lease: 300,
    ttl: 3_600,
    known: "",
    fresh: "f",
    held: true,
    hosts: [
      { host: "a", n: "na", count: 1, floor: 1, trusted: true },
      { host: "b", n: "nb", count: 0, floor: 2, trusted: false },
    ],
  };
  const { keys, args } = SYNC.encode(input);
  assert.deepEqual(keys, ["e", "L", "na", "nb"]);
  assert.deepEqual(args, ["w", 300, 3_600, "", "f", 1, 1, 1, 1, "a", 0, 2, 0, "b"]);
  assert.deepEqual(SYNC.encode({ ...input, held: "leave" }).args[5], "leave");
  assert.deepEqual(SYNC.encode({ ...input, held: false }).args[5], 0);
  assert.match(SYNC_LUA, /if ARGV\[6\] == 'leave'/);
  assert.deepEqual(SYNC.decode(["tok", 1, 4, 0, 0, 2, "L", "hash", "zset"], input), {
    epoch: "tok",
    lost: 1,
    hosts: [{ total: 4, lost: false }, { total: 0, lost: true }],
    healed: [{ key: "L", type: "hash", kind: "zset" }],
  });
});

Deno.test("count: n and lease set per host; one total per host, then healed", () => {
  const input = { lease: 300, hosts: [{ n: "na", leases: "L" }, { n: "nb", leases: "L" }] };
  assert.deepEqual(COUNT.encode(input), { keys: ["na", "L", "nb", "L"], args: [300] });
  assert.deepEqual(COUNT.decode([2, 0], input), { totals: [2, 0], healed: [] });
});

Deno.test("register: the registry key; worker, lease, op; the live ids", () => {
  const input = { workers: "p:workers", worker: "w", lease: 300, op: "list" as const };
  assert.deepEqual(REGISTER.encode(input), { keys: ["p:workers"], args: ["w", 300, "list"] });
  assert.deepEqual(REGISTER.decode(["w", "x"], input), ["w", "x"]);
});

Deno.test("line: q, qw; the number of adds, the adds, then the removes", () => {
  const input = {
    q: "q",
    qw: "qw",
    worker: "w",
    lease: 300,
    ttl: 3_600,
    op: "leave" as const,
    host: "h",
    adds: ["w|1"],
    removes: ["w|0", "w|2"],
  };
  assert.deepEqual(LINE.encode(input), {
    keys: ["q", "qw"],
    args: ["w", 300, 3_600, "leave", "h", 1, "w|1", "w|0", "w|2"],
  });
  assert.match(LINE_LUA, /local adds = tonumber\(ARGV\[6\]\)/);
  assert.deepEqual(LINE.decode([2], input), { length: 2, healed: [] });
});

Deno.test("on Cluster the scripts that wake the line publish on sharded channels", () => {
  assert.ok(!ACQUIRE.lua(false).includes("SPUBLISH"));
  assert.ok(ACQUIRE.lua(true).includes("SPUBLISH"));
  assert.equal(SYNC.lua(true), SYNC.lua(false));
});
