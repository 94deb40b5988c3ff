// A slot from acquire() goes back exactly once, whether released, disposed
// of, or both, in memory and through Redis.
import assert from "node:assert/strict";
import type { Limiter } from "../lib/limit/limiter.ts";
import { LocalLimiter } from "../lib/limit/local_limiter.ts";
import { RedisLimiter } from "../lib/limit/redis_limiter.ts";
import { RedisServer, redisTest } from "./_helpers/redis_server.ts";

/** Takes two slots of a host with limit 2, gives one back three ways, and checks the counts. */
async function oncePerSlot(limiter: Limiter): Promise<void> {
  const host = "once.example:443";
  const a = await limiter.acquire(host, 2);
  const b = await limiter.acquire(host, 2);
  assert.ok(a && b);
  assert.equal(a.host, host);
  assert.equal(await limiter.acquire(host, 2), null, "at the limit: refused");
  a.release();
  a.release();
  a[Symbol.dispose]();
  assert.equal(await limiter.count(host), 1, "a slot given back three times counts once");
  {
    using c = await limiter.acquire(host, 2);
    assert.ok(c, "the freed slot is granted again");
    assert.equal(await limiter.count(host), 2);
  }
  assert.equal(await limiter.count(host), 1, "using gives the slot back at the block's end");
  b[Symbol.dispose]();
  b.release();
  assert.equal(await limiter.count(host), 0);
}

Deno.test("in memory, a slot goes back once however often it is released or disposed of", async () => {
  await oncePerSlot(new LocalLimiter());
});

await redisTest(
  "through Redis, a slot goes back once however often it is released or disposed of",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    const limiter = new RedisLimiter({ redis: redis.url, prefix: "slots", lease: 600 });
    try {
      await oncePerSlot(limiter);
    } finally {
      await limiter.close();
    }
  },
);
