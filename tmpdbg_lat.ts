import { RedisLimiter } from "./lib/limit/redis_limiter.ts";
const port = Number(Deno.args[0]);
const hosts = Number(Deno.args[1] ?? 2000);
const l = new RedisLimiter({ redis: `redis://127.0.0.1:${port}`, prefix: "lat" + Math.random() });
let calls = 0;
const cms: number[] = [];
l.onCall = (ms) => {
  calls++;
  cms.push(ms);
};
let n = 0, total = 0;
const lat: number[] = [];
const until = performance.now() + 4000;
let i = 0;
await Promise.all(Array.from({ length: 32 }, async () => {
  while (performance.now() < until) {
    const h = `h${i++ % hosts}.example:443`;
    const t = performance.now();
    await l.acquire(h, 64);
    lat.push(performance.now() - t);
    await new Promise((r) => setTimeout(r, 5));
    l.release(h);
    n++;
  }
}));
lat.sort((a, b) => a - b);
cms.sort((a, b) => a - b);
console.log(
  `calls=${calls} callp50=${cms[cms.length >> 1]?.toFixed(2)} n=${n} p50=${
    lat[lat.length >> 1].toFixed(2)
  } p90=${lat[Math.floor(lat.length * 0.9)].toFixed(2)} mean=${
    (lat.reduce((a, b) => a + b, 0) / lat.length).toFixed(2)
  }`,
);
await l.close();
