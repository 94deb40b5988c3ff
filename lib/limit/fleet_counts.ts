/**
 * {@linkcode FleetCounts}: the open connections of the whole fleet per host,
 * as this worker last learnt them (from an acquire's answer, a sync or a
 * count), and the `COUNT` calls that refresh them.
 *
 * @module
 */

import { COUNT, runScript } from "./redis_script_codec.ts";
import type { LimiterContext } from "./limiter_context.ts";
import { groupBySlot } from "./sync_pipeline.ts";

/** The fleet's counts by host, and how they are read from Redis. */
export class FleetCounts {
  #o: LimiterContext;

  /** Creates the counts, kept in `options.fleet`. */
  constructor(options: LimiterContext) {
    this.#o = options;
  }

  /** The fleet's open connections to each of `hosts` now, in one call per slot; remembered. */
  async read(hosts: string[]): Promise<number[]> {
    const { keys, call, client } = this.#o;
    const totals = new Map<string, number>();
    await Promise.all(
      groupBySlot(hosts, (host) => keys.epoch(host)).map(async ([, batch]) => {
        const reply = await call(() =>
          runScript(client, COUNT, {
            lease: this.#o.lease,
            hosts: batch.map((host) => ({
              n: keys.key(host, "n"),
              leases: keys.leases(keys.epoch(host)),
            })),
          })
        );
        batch.forEach((host, i) => totals.set(host, reply.totals[i]));
        this.#o.recovery.healed(reply.healed);
      }),
    );
    return hosts.map((host) => totals.get(host) ?? 0);
  }

  /**
   * Refreshes the counts of the hosts this worker holds nothing of (`held`
   * tells), forgetting those the fleet holds nothing of either.
   */
  refresh(held: (host: string) => boolean): void {
    const others = [...this.#o.fleet.keys()].filter((host) => !held(host));
    if (others.length === 0) return;
    this.read(others).then((totals) => {
      others.forEach((host, i) => {
        if (totals[i] > 0 || held(host)) this.#o.fleet.set(host, totals[i]);
        else this.#o.fleet.delete(host);
      });
    }, () => {});
  }
}
