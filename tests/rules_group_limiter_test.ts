// Group caps in the limiters: a member needs room in its group and in its own
// limit, in memory and across a fleet sharing one Redis (single or Cluster).
import assert from "node:assert/strict";
import { LocalLimiter } from "../lib/limit/local_limiter.ts";
import { RedisLimiter } from "../lib/limit/redis_limiter.ts";
import type { RedisConfig } from "../lib/limit/redis_config.ts";
import { RedisClusterServers, RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { giveBack, take } from "./_helpers/held_slots.ts";

const storage = { name: "storage", limit: 5 };

Deno.test("LocalLimiter: a group member needs room in its group and in its own limit", async () => {
  const l = new LocalLimiter();
  for (let i = 0; i < 2; i++) assert.equal(await take(l, "a.s3", 2, { group: storage }), true);
  assert.equal(await take(l, "a.s3", 2, { group: storage }), false, "own limit");
  for (let i = 0; i < 3; i++) assert.equal(await take(l, "b.s3", 10, { group: storage }), true);
  assert.equal(l.groupCount("storage"), 5);
  assert.equal(await take(l, "c.s3", 10, { group: storage }), false, "group limit");
  assert.equal(await take(l, "other", 1), true, "a host outside the group is not capped");
  giveBack(l, "a.s3");
  assert.equal(l.groupCount("storage"), 4);
  assert.equal(
    await take(l, "c.s3", 10, { group: storage }),
    true,
    "a release frees a group slot",
  );
  assert.equal(
    await take(l, "c.s3", 10, { group: { name: "storage", limit: 6 } }),
    true,
    "raised at once",
  );
  assert.equal(
    await take(l, "c.s3", 10, { group: { name: "storage", limit: 3 } }),
    false,
    "lowered",
  );
  for (const h of ["a.s3", "b.s3", "b.s3", "b.s3", "c.s3", "c.s3"]) giveBack(l, h);
  assert.equal(l.groupCount("storage"), 0);
  await l.close();
});

async function fleetHoldsGroupCap(redis: RedisConfig): Promise<void> {
  const limiters = [0, 1, 2].map((i) =>
    new RedisLimiter({ redis, prefix: "grp", lease: 3000, workerId: `w${i}` })
  );
  try {
    const hosts = ["a.s3.example", "b.s3.example", "c.s3.example", "d.s3.example"];
    // 3 workers x 4 hosts x 4 attempts at once: 48 asks for a cap of 5.
    const asks = limiters.flatMap((l) =>
      hosts.flatMap((h) =>
        [0, 1, 2, 3].map(() => take(l, h, 3, { group: storage }).then((ok) => ok && h))
      )
    );
    const granted = (await Promise.all(asks)).filter(Boolean) as string[];
    assert.equal(granted.length, 5, `granted ${granted.length}`);
    for (const h of hosts) assert.ok(granted.filter((g) => g === h).length <= 3);
    // A slot given back by one worker is taken by another, and no more.
    const [first] = granted;
    const holder = (await Promise.all(limiters.map((l) => l.count(first))))[0];
    assert.ok(holder >= 1);
    const owner = limiters.find((l) => l.localCount(first) > 0)!;
    giveBack(owner, first);
    // Written before the others ask: count sends what waits first.
    await owner.count(first);
    const again = await Promise.all(
      limiters.map((l) => take(l, "e.s3.example", 10, { group: storage })),
    );
    assert.equal(again.filter(Boolean).length, 1);
  } finally {
    await Promise.all(limiters.map((l) => l.close()));
  }
}

await redisTest("a group cap is held exactly by three workers on one Redis", "server", async () => {
  await using redis = await RedisServer.start();
  await fleetHoldsGroupCap(redis.url);
  const keys = await redis.cli("KEYS", "grp:*");
  assert.doesNotMatch(keys, /:h:.*:n/, "close removes every member's count");
});

await redisTest(
  "a group cap is held exactly by three workers on a 3-master Cluster",
  "server",
  async () => {
    await using cluster = await RedisClusterServers.start();
    await fleetHoldsGroupCap({ cluster: cluster.nodes });
  },
);

Deno.test("RedisLimiter in failure mode local caps a group in this process while Redis is down", async () => {
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (closed.addr as Deno.NetAddr).port;
  closed.close();
  const limiter = new RedisLimiter({
    redis: `redis://127.0.0.1:${port}`,
    failureMode: "local",
    timeout: 200,
  });
  try {
    const group = { name: "storage", limit: 2 };
    const grants = [];
    for (const host of ["a.s3", "b.s3", "c.s3"]) {
      grants.push(await take(limiter, host, 5, { group: group }));
    }
    assert.deepEqual(grants, [true, true, false]);
    giveBack(limiter, "a.s3");
    assert.equal(
      await take(limiter, "c.s3", 5, { group: group }),
      true,
      "a release frees a group slot",
    );
  } finally {
    await limiter.close();
  }
});
