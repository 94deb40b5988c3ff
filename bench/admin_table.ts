/**
 * The control plane's cost as the benchmark reports it: the figures of the
 * `admin` section and their table.
 *
 * @module
 */

import type { ScrapeStats } from "./admin_cost.ts";
import type { TunnelsResult, WrkResult } from "./measure.ts";
import { table } from "./markdown_table.ts";

/** The control plane's cost: the same loads without and with the admin server. */
export interface AdminFigures {
  off: { http?: WrkResult; tunnels?: TunnelsResult };
  on: { http?: WrkResult; tunnels?: TunnelsResult };
  /** The once-a-second scrapes during the loads of the best "on" round. */
  scrapesUnderLoad?: ScrapeStats;
  /** Back-to-back scrapes of the idle proxy holding 500 hosts' statistics. */
  scrape500?: ScrapeStats;
}

/** Labels of the admin section's rates, for the rounds table. */
export const ADMIN_LABELS = {
  httpOff: "dprl, no admin server: plain HTTP req/s",
  httpOn: "dprl, admin server scraped every 1 s: plain HTTP req/s",
  tunnelsOff: "dprl, no admin server: CONNECT tunnels/s",
  tunnelsOn: "dprl, admin server scraped every 1 s: CONNECT tunnels/s",
} as const;

/** The admin section: rates without and with the admin server, and scrape times. */
export function adminTable(a: AdminFigures | undefined): string {
  if (!a) return "Not measured.";
  const f = (n: number | undefined, digits = 0): string =>
    n === undefined || Number.isNaN(n) ? "—" : n.toFixed(digits);
  const ratio = (x: number | undefined, y: number | undefined): string =>
    x !== undefined && y !== undefined && y > 0 ? `${(x / y).toFixed(2)}×` : "—";
  type Side = AdminFigures["on"];
  const rows: [string, (x: Side) => number | undefined][] = [
    ["plain HTTP req/s", (x) => x.http?.reqPerSec],
    ["CONNECT tunnels/s", (x) => x.tunnels?.perSec],
    ["proxy CPU µs per request", (x) => x.http?.cpuUsPerOp],
    ["proxy CPU µs per tunnel", (x) => x.tunnels?.cpuUsPerOp],
  ];
  const rates = table(
    ["load", "no admin server", "admin, /metrics every 1 s", "ratio"],
    rows.map(([load, of]) => [load, f(of(a.off)), f(of(a.on)), ratio(of(a.on), of(a.off))]),
    ["l", "r", "r", "r"],
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
      f(s?.count),
      f(s?.hostSeries),
      f(s?.medianMs, 1),
      f(s?.p95Ms, 1),
      f(s?.maxMs, 1),
      f(s?.failed),
    ]),
    ["l", "r", "r", "r", "r", "r", "r"],
  );
  return `${rates}

${scrapes}`;
}
