// The Lua scripts' codec without Redis: each script's keys and arguments in
// the order the script reads them, and its reply decoded by name.
import assert from "node:assert/strict";
import { ACQUIRE, COUNT, QUEUE, REGISTER, SYNC } from "../lib/limit/redis_script_codec.ts";
import { ACQUIRE_LUA, QUEUE_LUA, SYNC_LUA } from "../lib/limit/redis_scripts.ts";

const HOST = {
  host: "h",
  n: "p:{h}:n",
  members: "p:{h}:n",
  q: "p:{h}:q",
  qw: "p:{h}:qw",
  a: "p:{h}:a",
  floor: 2,
  trusted: true,
  releases: 1,
  groupLimit: -1,
  pause: 0,
  rate: "h 100 0",
  adaptive: "",
  samples: "",
  asks: [{ limit: 4, ticket: "" }, { limit: 4, ticket: "w1|7" }, {
    limit: 0,
    ticket: "",
    slot: false,
  }],
};

const ACQUIRE_INPUT = {
  leases: "p:leases",
  epoch: "p:epoch",
  worker: "w1",
  lease: 15_000,
  ttl: 180_000,
  known: "tok",
  fresh: "new",
  hosts: [HOST, {
    ...HOST,
    host: "g",
    n: "p:{g}:n",
    members: "p:{g}:n",
    q: "p:{g}:q",
    qw: "p:{g}:qw",
    a: "p:{g}:a",
    adaptive: "1 64",
    samples: "50 60 0 3",
    asks: [],
  }],
};

Deno.test("acquire: keys leases, epoch, then n, members, q, qw, a per host; per host its block with the asks last", () => {
  const { keys, args } = ACQUIRE.encode(ACQUIRE_INPUT);
  assert.deepEqual(keys, [
    "p:leases",
    "p:epoch",
    ...["p:{h}:n", "p:{h}:n", "p:{h}:q", "p:{h}:qw", "p:{h}:a"],
    ...["p:{g}:n", "p:{g}:n", "p:{g}:q", "p:{g}:qw", "p:{g}:a"],
  ]);
  assert.deepEqual(args, [
    ...["w1", 15_000, 180_000, "tok", "new"],
    ...["h", 2, 1, 1, -1, 0, "h 100 0", "", "", 3, 4, "4 w1|7", "r"],
    ...["g", 2, 1, 1, -1, 0, "h 100 0", "1 64", "50 60 0 3", 0],
  ]);
  // The script reads its arguments at these positions.
  assert.match(ACQUIRE_LUA, /local ttl = tonumber\(ARGV\[3\]\)/);
  assert.match(ACQUIRE_LUA, /local pause = tonumber\(ARGV\[a \+ 5\]\)/);
  assert.match(ACQUIRE_LUA, /local rate = ARGV\[a \+ 6\]/);
  assert.match(ACQUIRE_LUA, /local adapt = ARGV\[a \+ 7\]/);
  assert.match(ACQUIRE_LUA, /local samples = ARGV\[a \+ 8\]/);
  assert.match(ACQUIRE_LUA, /local asks = tonumber\(ARGV\[a \+ 9\]\)/);
  const untrusted = { ...ACQUIRE_INPUT, hosts: [{ ...HOST, trusted: false }] };
  assert.deepEqual(ACQUIRE.encode(untrusted).args[7], 0);
});

Deno.test("acquire: the reply by name, per host its total, loss, queue, pause and grants, then healed keys", () => {
  const reply = ACQUIRE.decode(
    ["tok", 0, 3, 2, 5, 0, 1, 0, 251, 1, 0, 0, 9_000, 7, 2, 48_500, "p:{h}:q", "string", "zset"],
    ACQUIRE_INPUT,
  );
  assert.deepEqual(reply, {
    epoch: "tok",
    lost: 0,
    hosts: [
      {
        total: 3,
        lost: 2,
        waiting: 5,
        paused: 0,
        granted: [true, false, true],
        waitMs: [0, 0, 250],
        retryMs: [0, 0, 0],
      },
      {
        total: 1,
        lost: 0,
        waiting: 0,
        paused: 9_000,
        adaptive: { limit: 7, reason: 2, noLoadMs: 48.5 },
        granted: [],
        waitMs: [],
        retryMs: [],
      },
    ],
    healed: [{ key: "p:{h}:q", type: "string", kind: "zset" }],
  });
  assert.deepEqual(
    ACQUIRE.decode(["t", 0, 1, 0, 0, 0, 1, 0, -40, 1, 0, 0, 0, 1, 0, 0], ACQUIRE_INPUT).healed,
    [],
  );
  assert.deepEqual(
    ACQUIRE.decode(["t", 0, 1, 0, 0, 0, 1, 0, -40, 1, 0, 0, 0, 1, 0, 0], ACQUIRE_INPUT).hosts[0]
      .retryMs,
    [0, 0, 40],
  );
  assert.throws(() => ACQUIRE.decode("OK", ACQUIRE_INPUT), TypeError);
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
  assert.deepEqual(QUEUE.encode(input), {
    keys: ["q", "qw"],
    args: ["w", 300, 3_600, "leave", "h", 1, "w|1", "w|0", "w|2"],
  });
  assert.match(QUEUE_LUA, /local adds = tonumber\(ARGV\[6\]\)/);
  assert.deepEqual(QUEUE.decode([2], input), { length: 2, healed: [] });
});

Deno.test("on Cluster the scripts that wake the line publish on sharded channels", () => {
  assert.ok(!ACQUIRE.lua(false).includes("SPUBLISH"));
  assert.ok(ACQUIRE.lua(true).includes("SPUBLISH"));
  assert.equal(SYNC.lua(true), SYNC.lua(false));
});
