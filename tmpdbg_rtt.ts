import { Redis } from "ioredis";
import { RedisLimiter } from "./lib/limit/redis_limiter.ts";
const port = Number(Deno.args[0]);
const r = new Redis(port);
let t = performance.now();
for (let i = 0; i < 2000; i++) await r.ping();
console.log(`ping rtt ${((performance.now() - t) / 2000).toFixed(3)} ms`);
const l = new RedisLimiter({ redis: `redis://127.0.0.1:${port}`, prefix: "rtt" });
t = performance.now();
for (let i = 0; i < 2000; i++) {
  await l.acquire(`h${i}.x:1`, 64);
  l.release(`h${i}.x:1`);
}
console.log(`sequential acquire ${((performance.now() - t) / 2000).toFixed(3)} ms`);
await l.close();
r.disconnect();
