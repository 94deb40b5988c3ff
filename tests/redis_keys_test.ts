// dprl's keys in Redis against a real redis-server and a real proxy: a key
// overwritten with another type is logged, deleted and rebuilt.
import assert from "node:assert/strict";
import { captureLogs, messageText } from "./_helpers/logs.ts";
import { RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { BufferedConn, readHead, statusOf, waitFor } from "./_helpers/raw.ts";
import { connectRequest, startProxy } from "./_helpers/proxy.ts";
import { startEchoUpstream } from "./_helpers/upstream.ts";
import { RedisLimiter } from "../lib/limit/redis_limiter.ts";
import { take } from "./_helpers/held_slots.ts";

const records = await captureLogs();

await redisTest(
  "a host's count key overwritten with a string is logged once, deleted, and the host works again",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using echo = startEchoUpstream();
    await using p = await startProxy({
      redis: redis.url,
      lease: 600,
      defaultMaxConnectionsPerHost: 4,
    });
    const authority = `127.0.0.1:${echo.port}`;
    const key = `dprl:{${authority}}:n`;
    // A tunnel held open: the host's keys exist and count it.
    const held = await BufferedConn.connect(p.addr);
    try {
      await held.write(connectRequest(authority));
      assert.equal(statusOf((await readHead(held))!), 200);
      assert.match(await redis.cli("TYPE", key), /hash/);
      await redis.cli("SET", key, "not a hash");
      const tunnel = async (): Promise<number> => {
        const c = await BufferedConn.connect(p.addr);
        try {
          await c.write(connectRequest(authority));
          return statusOf((await readHead(c))!);
        } finally {
          c.close();
        }
      };
      const statuses: number[] = [];
      await waitFor(
        async () => {
          statuses.push(await tunnel());
          return statuses.at(-1) === 200;
        },
        () => `a tunnel after the key was healed (statuses ${statuses.join(",")})`,
        5_000,
      );
      // Healed at once, or refused within the host's recovery window only.
      assert.ok(statuses.slice(0, -1).every((s) => s === 503), statuses.join(","));
      const warned = records.filter((r) =>
        r.level === "warning" && r.properties.key === key && messageText(r).includes("held a")
      );
      assert.equal(warned.length, 1, records.map(messageText).join(" | "));
      assert.equal(warned[0].properties.type, "string");
      assert.equal(records.filter((r) => messageText(r).includes("lost dprl's counts")).length, 0);
      // The heartbeat rebuilt the held tunnel's count.
      await waitFor(
        async () => /^1$/m.test(await redis.cli("HVALS", key)),
        "the held tunnel counted again",
        5_000,
      );
    } finally {
      held.close();
    }
  },
);

await redisTest(
  "a host's queue keys overwritten with strings are logged, deleted, and acquires go on",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    const limiter = new RedisLimiter({ redis: redis.url, prefix: "strayq", lease: 600 });
    try {
      const host = "stray-queue.example:443";
      assert.equal(await take(limiter, host, 2), true);
      await redis.cli("SET", `strayq:{${host}}:q`, "not a sorted set");
      await redis.cli("SET", `strayq:{${host}}:qw`, "nor this");
      assert.equal(await take(limiter, host, 2), true);
      assert.equal(await take(limiter, host, 2), false, "the limit still holds");
      for (const kind of ["q", "qw"]) {
        const key = `strayq:{${host}}:${kind}`;
        assert.match(await redis.cli("TYPE", key), /none/);
        const warned = records.filter((r) =>
          r.level === "warning" && r.properties.key === key && messageText(r).includes("held a")
        );
        assert.equal(warned.length, 1, `${key}: ${records.map(messageText).join(" | ")}`);
      }
    } finally {
      await limiter.close();
    }
  },
);
