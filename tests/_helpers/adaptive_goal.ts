/**
 * The adaptive limit's goal as the tests measure it: an upstream that
 * serves 4 requests at a time and fails past 12 in flight, 40 clients
 * hammering it through dprl for 10 s, and what the upstream saw.
 */
import assert from "node:assert/strict";
import { startProxy } from "./proxy.ts";
import { type CapacityUpstream, startCapacityUpstream } from "./capacity_upstream.ts";
import type { ProxyRateLimiter, ProxyRateLimiterOptions } from "../../mod.ts";

export const UPSTREAM = { capacity: 4, serviceMs: 50, maxInFlight: 12 };
const RUN_MS = 10_000;

/** What a run of 40 clients for 10 s saw at the upstream. */
export interface Run {
  /** Share of the upstream's answers that were 503. */
  dropped: number;
  /** Median in flight at the upstream, at each arrival. */
  medianInFlight: number;
  /** 200 answers per second. */
  goodput: number;
}

/** 40 clients, spread over `proxies`, send requests one after the other for 10 s. */
export async function hammer(up: CapacityUpstream, proxies: string[]): Promise<Run> {
  const start = performance.now();
  await Promise.all(Array.from({ length: 40 }, async (_, i) => {
    const client = Deno.createHttpClient({ proxy: { url: proxies[i % proxies.length] } });
    try {
      // Bounded in time and in count.
      for (let n = 0; n < 10_000 && performance.now() - start < RUN_MS; n++) {
        const res = await fetch(up.url, { client });
        await res.body?.cancel();
      }
    } finally {
      client.close();
    }
  }));
  const seconds = (performance.now() - start) / 1000;
  const ok = up.answers.get(200) ?? 0;
  const failed = up.answers.get(503) ?? 0;
  const sorted = [...up.inflight].sort((a, b) => a - b);
  return {
    dropped: failed / Math.max(1, ok + failed),
    medianInFlight: sorted[Math.floor(sorted.length / 2)] ?? 0,
    goodput: ok / seconds,
  };
}

/**
 * The goodput of a static limit of 4, measured at the same time as the
 * adaptive run it is compared with (so both see the same machine).
 */
export async function staticGoodput(): Promise<number> {
  await using up = startCapacityUpstream(UPSTREAM);
  await using tp = await startProxy({ defaultMaxConnectionsPerHost: 4, queueTimeout: 10_000 });
  return (await hammer(up, [tp.url])).goodput;
}

export function assertGoal(run: Run, goodput: number): void {
  const seen = JSON.stringify({ ...run, staticGoodput: goodput });
  assert.ok(run.dropped <= 0.02, `at most 2% 503s: ${seen}`);
  assert.ok(run.medianInFlight <= 8, `median in flight at most 8: ${seen}`);
  assert.ok(run.goodput >= 0.8 * goodput, `goodput at least 0.8x the static 4's: ${seen}`);
}

export const ADAPTIVE: ProxyRateLimiterOptions = {
  adaptive: true,
  defaultMaxConnectionsPerHost: 64,
  queueTimeout: 10_000,
};

/** The adaptive limit of `host` and its reason, as /api/hosts shows them (null while not listed). */
export async function adaptiveView(proxy: ProxyRateLimiter, host: string) {
  const res = await proxy.adminHandler()(
    new Request(`http://admin/api/hosts/${encodeURIComponent(host)}`),
  );
  const view = await res.json();
  return { limit: view.effectiveLimit as number | null, reason: view.limitReason as string | null };
}
