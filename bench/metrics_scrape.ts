/**
 * The cost of the control plane's own work, apart from the proxy: the time
 * of one `/metrics` scrape (handler to response text) with 500 and 10,000
 * hosts, and the time of the statistics calls the engine makes per event.
 *
 * `deno run bench/metrics_scrape.ts` (no permissions needed).
 *
 * @module
 */

import { createAdminHandler } from "../lib/admin/admin_handler.ts";
import { TableAdminSource } from "../tests/_helpers/admin_source.ts";

const SCRAPES = 50;

async function scrapeTimes(hosts: number): Promise<number[]> {
  const source = new TableAdminSource({ defaultLimit: 10, workers: [] });
  for (let i = 0; i < hosts; i++) {
    const host = `host-${i}.example.com:${8000 + (i % 1000)}`;
    source.setPool(host, i % 11, i % 3, i % 17);
    const stats = source.stats.host(host);
    stats.admitted = i * 13;
    stats.refused.limit = i % 5;
    if (i % 9 === 0) stats.upstreamErrors.set("connection_refused", i % 4);
  }
  for (let i = 0; i < 1000; i++) source.stats.onConnectDuration(i % 200);
  const handler = createAdminHandler(source, { metricsMaxHosts: 500 });
  const times: number[] = [];
  for (let i = 0; i < SCRAPES + 5; i++) {
    const start = performance.now();
    const res = await handler(new Request("http://admin/metrics"));
    await res.text();
    if (i >= 5) times.push(performance.now() - start);
  }
  return times.sort((a, b) => a - b);
}

function hotPathNs(): number {
  const source = new TableAdminSource();
  const stats = source.stats;
  const n = 2_000_000;
  const record = stats.host("api.example.com");
  const start = performance.now();
  for (let i = 0; i < n; i++) {
    stats.onRequest("connect");
    record.admitted++;
    stats.onConnectDuration(i % 50);
    stats.onBytes(100, 1000);
  }
  return ((performance.now() - start) * 1e6) / n;
}

for (const hosts of [500, 10_000]) {
  const times = await scrapeTimes(hosts);
  const median = times[Math.floor(times.length / 2)];
  const p95 = times[Math.floor(times.length * 0.95)];
  console.log(
    `scrape with ${hosts} hosts (500 series + _other): median ${median.toFixed(2)} ms, ` +
      `p95 ${p95.toFixed(2)} ms, max ${times.at(-1)!.toFixed(2)} ms over ${SCRAPES} scrapes`,
  );
}
console.log(
  `per event (request + admitted + connect histogram + bytes): ${hotPathNs().toFixed(1)} ns`,
);
