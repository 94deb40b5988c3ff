/**
 * The control plane's cost under load, for the suite's `admin` section: a
 * proxy is given 500 hosts' worth of statistics, then `/metrics` is scraped
 * over HTTP (once a second while the load runs, back to back for the
 * scrape-time figure).
 *
 * @module
 */

import { freePort, sleep } from "./process.ts";
import { median } from "./measure.ts";

/** Hosts given statistics before a measurement: the scrape renders this many host series. */
export const ADMIN_HOSTS = 500;

/** Timing of `/metrics` scrapes over HTTP. */
export interface ScrapeStats {
  count: number;
  failed: number;
  medianMs: number;
  p95Ms: number;
  maxMs: number;
  /** Hosts with their own series (`_other` included) in the last scrape. */
  hostSeries: number;
}

/**
 * Sends one plain-HTTP request through the proxy to each of `count`
 * distinct `127.0.0.1:<port>` hosts (ports that were free a moment ago:
 * each gets a 502), so that the proxy keeps statistics for `count` hosts.
 */
export async function giveHosts(proxyPort: number, count = ADMIN_HOSTS): Promise<void> {
  const client = Deno.createHttpClient({ proxy: { url: `http://127.0.0.1:${proxyPort}` } });
  try {
    const ports = new Set<number>();
    while (ports.size < count) ports.add(freePort());
    const list = [...ports];
    for (let i = 0; i < list.length; i += 50) {
      await Promise.all(
        list.slice(i, i + 50).map(async (port) => {
          try {
            const res = await fetch(`http://127.0.0.1:${port}/`, {
              client,
              signal: AbortSignal.timeout(5_000),
            });
            await res.body?.cancel();
          } catch {
            // A host that answers slowly still counts once the proxy dialed it.
          }
        }),
      );
    }
  } finally {
    client.close();
  }
}

/** Scrapes `/metrics` once; returns the time in ms and the body. */
async function scrapeOnce(adminPort: number): Promise<{ ms: number; body: string }> {
  const start = performance.now();
  const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`, {
    signal: AbortSignal.timeout(10_000),
  });
  const body = await res.text();
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return { ms: performance.now() - start, body };
}

function hostSeries(body: string): number {
  const hosts = new Set<string>();
  for (const m of body.matchAll(/^dprl_connections_admitted_total\{host="((?:[^"\\]|\\.)*)"\}/gm)) {
    hosts.add(m[1]);
  }
  return hosts.size;
}

function summarize(times: number[], failed: number, last: string): ScrapeStats {
  const sorted = [...times].sort((a, b) => a - b);
  return {
    count: times.length,
    failed,
    medianMs: times.length ? median(times) : NaN,
    p95Ms: sorted.length
      ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.95))]
      : NaN,
    maxMs: sorted.at(-1) ?? NaN,
    hostSeries: hostSeries(last),
  };
}

/** Scrapes `/metrics` `count` times back to back (after 3 unrecorded ones). */
export async function scrapeTimes(adminPort: number, count = 30): Promise<ScrapeStats> {
  const times: number[] = [];
  let last = "";
  for (let i = 0; i < count + 3; i++) {
    const { ms, body } = await scrapeOnce(adminPort);
    if (i >= 3) times.push(ms);
    last = body;
  }
  return summarize(times, 0, last);
}

/**
 * A scraper as Prometheus would be: one scrape every `intervalMs` while a
 * load runs ({@linkcode Scraper.during}); the timings add up across loads.
 */
export class Scraper {
  readonly #adminPort: number;
  readonly #intervalMs: number;
  #times: number[] = [];
  #failed = 0;
  #last = "";

  /** A scraper of the admin server on `adminPort`; nothing is scraped before {@linkcode during}. */
  constructor(adminPort: number, intervalMs = 1000) {
    this.#adminPort = adminPort;
    this.#intervalMs = intervalMs;
  }

  /** Scrapes once every interval, from now until `load` settles; settles as it does. */
  async during<T>(load: () => Promise<T>): Promise<T> {
    let running = true;
    const loop = (async () => {
      while (running) {
        const due = performance.now() + this.#intervalMs;
        try {
          const { ms, body } = await scrapeOnce(this.#adminPort);
          this.#times.push(ms);
          this.#last = body;
        } catch {
          this.#failed++;
        }
        while (running && performance.now() < due) {
          await sleep(Math.min(100, due - performance.now()));
        }
      }
    })();
    try {
      return await load();
    } finally {
      running = false;
      await loop;
    }
  }

  /** The timing of every scrape so far. */
  stats(): ScrapeStats {
    return summarize(this.#times, this.#failed, this.#last);
  }
}
