/**
 * A worker process for tests: takes slots through a {@linkcode RedisLimiter}
 * and holds them until it is killed.
 *
 * Usage: `deno run -A tests/_helpers/redis_worker.ts <redis-url> <host> <slots> <lease-ms>`.
 * Prints `held <n>` once the slots are taken.
 *
 * @module
 */

import { RedisLimiter } from "../../lib/limit/redis_limiter.ts";

const [url, host, slots, lease] = Deno.args;
const limiter = new RedisLimiter({ redis: url, lease: Number(lease) });
let held = 0;
for (let i = 0; i < Number(slots); i++) {
  if (await limiter.acquire(host, 0)) held++;
}
console.log(`held ${held}`);
// Keep the process (and its heartbeat) alive until killed.
setInterval(() => {}, 60_000);
