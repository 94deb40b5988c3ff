/**
 * The control plane's cost as the benchmark reports it: the figures of the
 * `admin` section and their table.
 *
 * @module
 */

import type { ScrapeStats } from "./admin_cost.ts";
import { fmt, table } from "./markdown_table.ts";

/** One round of the admin section: the same loads without and with the admin server. */
export interface AdminRound {
  /** Plain-HTTP req/s without the admin server. */
  httpOff: number;
  /** Plain-HTTP req/s with the admin server, scraped once a second. */
  httpOn: number;
  /** Tunnels/s without the admin server. */
  tunnelsOff: number;
  /** Tunnels/s with the admin server, scraped once a second. */
  tunnelsOn: number;
  /** CPU µs per request without / with the admin server. */
  httpCpuOff: number;
  httpCpuOn: number;
  /** CPU µs per tunnel without / with the admin server. */
  tunnelCpuOff: number;
  tunnelCpuOn: number;
}

/** The control plane's cost: two processes measured in turns, and scrape times. */
export interface AdminFigures {
  /** Seconds of each run. */
  seconds: number;
  rounds: AdminRound[];
  /** The once-a-second scrapes during every load of the proxy with the admin server. */
  scrapesUnderLoad?: ScrapeStats;
  /** Back-to-back scrapes of the idle proxy holding 500 hosts' statistics. */
  scrape500?: ScrapeStats;
}

/** The admin section: every round's rates without and with the admin server, and scrape times. */
export function adminTable(a: AdminFigures | undefined): string {
  if (!a?.rounds.length) return "Not measured.";
  const pair = (
    off: number,
    on: number,
    digits = 0,
  ) => [fmt(off, digits), fmt(on, digits), `${fmt(on / off, 2)}×`];
  const rates = table(
    [
      "round",
      "plain HTTP req/s: no admin server",
      "admin, /metrics every 1 s",
      "ratio",
      "CPU µs/req: no admin / admin",
      "tunnels/s: no admin server",
      "admin, /metrics every 1 s",
      "ratio",
      "CPU µs/tunnel: no admin / admin",
    ],
    a.rounds.map((r, i) => [
      String(i + 1),
      ...pair(r.httpOff, r.httpOn),
      `${fmt(r.httpCpuOff)} / ${fmt(r.httpCpuOn)}`,
      ...pair(r.tunnelsOff, r.tunnelsOn),
      `${fmt(r.tunnelCpuOff)} / ${fmt(r.tunnelCpuOn)}`,
    ]),
    ["r", "r", "r", "r", "r", "r", "r", "r", "r"],
  );
  const scrapeRows: [string, ScrapeStats | undefined][] = [
    ["idle proxy, back to back", a.scrape500],
    ["under load, once a second", a.scrapesUnderLoad],
  ];
  const scrapes = table(
    [
      "scrapes of /metrics over HTTP",
      "count",
      "host series",
      "median ms",
      "p95 ms",
      "max ms",
      "failed",
    ],
    scrapeRows.map(([label, s]) => [
      label,
      fmt(s?.count),
      fmt(s?.hostSeries),
      fmt(s?.medianMs, 1),
      fmt(s?.p95Ms, 1),
      fmt(s?.maxMs, 1),
      fmt(s?.failed),
    ]),
    ["l", "r", "r", "r", "r", "r", "r"],
  );
  return `${rates}

${scrapes}`;
}
