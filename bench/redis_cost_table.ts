/**
 * What distributed mode costs Redis (the figures of the benchmark's
 * `distributed` section) and their table against the goals.
 *
 * @module
 */

import { fmt, table } from "./markdown_table.ts";
import type { SideBySide } from "./redis_cost.ts";

/** What distributed mode costs Redis, per round where it is measured per round. */
export interface RedisCostFigures {
  /** Script calls (EVALSHA, EVAL, FCALL) per tunnel at 32 concurrent tunnels to one host. */
  scriptsPerTunnel: number[];
  /**
   * dprl in memory and on Redis running side by side, the load alternating
   * between them in half-second slices, one entry per round: each one's
   * tunnels/s and CPU per tunnel (µs, memory then Redis).
   */
  sideBySide: { memory: number; redis: number; cpuUs: number[] }[];
  /** The same, one run, with 100,000 unrelated keys in Redis. */
  sideBySideFull?: { memory: number; redis: number; cpuUs: number[] };
  /**
   * The same, one short run, the 32 clients round-robin over many hosts:
   * with the script calls per tunnel and Redis's CPU per tunnel (µs).
   */
  manyHosts?: SideBySide & { hosts: number };
  /**
   * The same over so many hosts that none is come back to within the time a
   * worker keeps a slot (`KEEP_FAR_MS`): every tunnel's acquire and release
   * go to Redis, batched.
   */
  coldHosts?: SideBySide & { hosts: number };
  /** One worker holding 10,000 hosts, idle. */
  heartbeat?: {
    hosts: number;
    redisCpuPercent: number;
    /** The idle Redis alone, before the hosts are held. */
    idleCpuPercent?: number;
    roundTripsPerSecond: number;
  };
}

/**
 * What distributed mode costs Redis, against its goals: few script calls per
 * tunnel (to one host and over many), tunnels/s near memory's, a cheap heartbeat.
 */
export function redisCostTable(c: RedisCostFigures | undefined): string {
  if (!c) return "Redis cost: not measured";
  const list = (xs: number[], digits: number) =>
    xs.length ? xs.map((x) => fmt(x, digits)).join(", ") : "—";
  const verdict = (ok: boolean | undefined) =>
    ok === undefined ? "not measured" : ok ? "pass" : "**miss**";
  const valid = (xs: number[]) => xs.filter((x) => Number.isFinite(x));
  const spt = valid(c.scriptsPerTunnel);
  const side = valid(c.sideBySide.map((x) => x.redis / x.memory));
  const hb = c.heartbeat;
  const many = c.manyHosts;
  const manyRatio = many ? many.redis / many.memory : undefined;
  const cold = c.coldHosts;
  return table(
    ["figure", "value (per round)", "goal", ""],
    [
      [
        "script calls per tunnel, 32 tunnels to one host (INFO commandstats)",
        list(c.scriptsPerTunnel, 3),
        "≤ 1.0",
        verdict(spt.length ? Math.max(...spt) <= 1 : undefined),
      ],
      [
        "Redis-mode tunnels/s ÷ in-memory tunnels/s, side by side (alternating ½-s slices)",
        list(side, 2),
        "≥ 0.9 in every round",
        verdict(side.length ? Math.min(...side) >= 0.9 : undefined),
      ],
      [
        "proxy CPU per tunnel side by side, µs (memory / Redis)",
        c.sideBySide.map((x) => x.cpuUs.map((u) => fmt(u, 0)).join(" / ")).join(", ") || "—",
        "",
        "",
      ],
      [
        `script calls per tunnel, 32 tunnels round-robin over ${fmt(many?.hosts ?? 2000)} hosts`,
        fmt(many?.scriptsPerTunnel, 3),
        "≤ 1.2",
        verdict(many && many.scriptsPerTunnel <= 1.2),
      ],
      [
        "the same hosts: Redis ÷ in-memory tunnels/s side by side (CPU µs/tunnel: " +
        "memory / Redis proxy; Redis server)",
        many
          ? `${fmt(manyRatio, 2)} (${many.cpuUs.map((u) => fmt(u)).join(" / ")}; ` +
            `${fmt(many.redisCpuUs)})`
          : "—",
        "≥ 0.9",
        verdict(manyRatio === undefined ? undefined : manyRatio >= 0.9),
      ],
      [
        `the same over ${fmt(cold?.hosts ?? 12_000)} hosts, each come back to every 3 s or more: ` +
        "Redis ÷ in-memory tunnels/s (script calls per tunnel; CPU µs/tunnel as above)",
        cold
          ? `${fmt(cold.redis / cold.memory, 2)} (${fmt(cold.scriptsPerTunnel, 3)}; ` +
            `${cold.cpuUs.map((u) => fmt(u)).join(" / ")}; ${fmt(cold.redisCpuUs)})`
          : "—",
        "",
        "info",
      ],
      [
        `heartbeat, ${fmt(hb?.hosts ?? 10_000)} hosts held: Redis CPU (% of a core)`,
        hb ? fmt(hb.redisCpuPercent, 2) : "—",
        "≤ 1",
        verdict(hb ? hb.redisCpuPercent <= 1 : undefined),
      ],
      [
        "the same Redis idle, before any host is held (% of a core)",
        hb?.idleCpuPercent !== undefined ? fmt(hb.idleCpuPercent, 2) : "—",
        "",
        "",
      ],
      [
        `heartbeat, ${fmt(hb?.hosts ?? 10_000)} hosts held: round trips per second`,
        hb ? fmt(hb.roundTripsPerSecond, 1) : "—",
        "≤ 50",
        verdict(hb ? hb.roundTripsPerSecond <= 50 : undefined),
      ],
    ],
    ["l", "r", "r", "l"],
  );
}
