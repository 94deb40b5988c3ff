/**
 * A proxy process for fleet tests: starts a {@linkcode ProxyRateLimiter} on
 * 127.0.0.1 (port 0) sharing its counters through Redis, prints
 * `listening <url>` and serves until it is killed.
 *
 * Usage: `deno run -A tests/_helpers/proxy_worker.ts <redis-url> <limit> <lease-ms>
 * [queue-timeout-ms]`.
 *
 * @module
 */

import { ProxyRateLimiter } from "../../mod.ts";

const [redis, limit, lease, queueTimeout] = Deno.args;
const proxy = new ProxyRateLimiter({
  port: 0,
  defaultMaxConnectionsPerHost: Number(limit),
  redis,
  lease: Number(lease),
  queueTimeout: Number(queueTimeout ?? 0),
});
await proxy.start();
console.log(`listening ${proxy.proxyUrl?.href}`);
