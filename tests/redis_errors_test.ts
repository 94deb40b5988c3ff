// Redis failures as classes with a code: error replies of a real
// redis-server told apart by their protocol code, never by their wording.
import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { RedisServer, redisTest } from "./_helpers/redis_server.ts";
import {
  isAnswered,
  isAuthError,
  RedisCorruptedKeyError,
  RedisCountsLostError,
  type RedisError,
  RedisReplyError,
  RedisTimeoutError,
  replyCode,
  toRedisError,
} from "../lib/limit/redis_errors.ts";
import { withTimeout } from "../lib/with_timeout.ts";

/** The error `call` rejects with. */
async function failure(call: Promise<unknown>): Promise<unknown> {
  try {
    await call;
  } catch (error) {
    return error;
  }
  throw new Error("The call did not fail");
}

await redisTest(
  "a refused password is an auth error, a script error is answered",
  "server",
  async () => {
    await using server = await RedisServer.start({ args: ["--requirepass", "right"] });
    const wrong = new Redis(server.url, {
      password: "wrong",
      lazyConnect: true,
      retryStrategy: () => null,
      maxRetriesPerRequest: 0,
    });
    // ioredis reports a refused AUTH on the client's error event.
    const reported = new Promise<unknown>((resolve) => wrong.once("error", resolve));
    try {
      wrong.connect().catch(() => {});
      const refused = await reported;
      assert.ok(isAuthError(refused), `an auth error: ${String(refused)}`);
      assert.ok(!isAnswered(refused), "a refused password is no answer");
    } finally {
      wrong.disconnect();
    }
    const client = new Redis(server.url, { password: "right" });
    try {
      const error = await failure(client.eval("return redis.error_reply('BOOM it failed')", 0));
      assert.equal(replyCode(error), "BOOM");
      assert.ok(isAnswered(error));
      assert.ok(!isAuthError(error));
      const marked = toRedisError(error);
      assert.ok(marked instanceof RedisReplyError);
      assert.equal((marked as RedisError).code, "redis_reply");
      // Answered from a server that is loading: not an answer about the call.
      const loading = await failure(client.eval("return redis.error_reply('LOADING wait')", 0));
      assert.ok(!isAnswered(loading));
      assert.equal(toRedisError(loading), loading);
    } finally {
      client.disconnect();
    }
  },
);

Deno.test("a call that does not settle in time rejects with RedisTimeoutError", async () => {
  const never = new Promise<never>(() => {});
  const error = await failure(withTimeout(never, 10, () => new RedisTimeoutError(10)));
  assert.ok(error instanceof RedisTimeoutError);
  assert.equal(error.code, "redis_timeout");
  assert.equal(error.ms, 10);
  assert.equal(error.message, "Redis did not answer within 10 ms");
});

Deno.test("each failure has its class and code; none is an error reply", () => {
  const lost = new RedisCountsLostError();
  assert.equal(lost.code, "redis_counts_lost");
  assert.equal(lost.name, "RedisCountsLostError");
  const corrupted = new RedisCorruptedKeyError("p:{h}:n", "string", "hash");
  assert.equal(corrupted.code, "redis_corrupted_key");
  assert.equal(corrupted.key, "p:{h}:n");
  assert.equal(replyCode(lost), undefined);
  assert.equal(replyCode(new Error("WRONGPASS looks like a reply")), undefined);
});
