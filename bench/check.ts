/**
 * `deno task bench:check`: the quick guard to run before committing engine
 * changes (about 50 s). One dprl, started as `deno task start` starts it
 * (nothing turned off), is given 32 keep-alive clients sending plain-HTTP
 * requests, then 32 clients opening CONNECT tunnels, in five windows of 4 s
 * each; its CPU per request and per tunnel (user + sys, from /proc; the least
 * of the five windows) hardly depend on other load on the machine. Each is compared with `bench/baseline.json`:
 * more than 15% worse fails loudly (exit code 1).
 *
 * ```sh
 * deno task bench:check            # compare with the baseline
 * deno task bench:check --update   # measure and write the baseline (after a full bench run)
 * ```
 *
 * @module
 */

import { cpuSeconds, stopAll } from "./process.ts";
import { type Load, requestLoad, startDprl, startHttpUpstream, tunnelLoad } from "./deno_load.ts";
import { startEcho } from "./redis_cost.ts";
import { compare, TOLERANCE } from "./guard.ts";

const BASELINE = new URL("./baseline.json", import.meta.url);
/** Seconds of each window; the figure is the least of the windows (the least disturbed). */
const SECONDS = 4;
const WINDOWS = 5;

/** The proxy's CPU per operation of `load`, in µs: the least of the windows, after a warm-up. */
async function cpuPerOp(proxy: { port: number; proc: { pid: number } }, load: Load) {
  await load(proxy.port, undefined, 1000);
  let least = Infinity;
  for (let w = 0; w < WINDOWS; w++) {
    const c0 = cpuSeconds(proxy.proc.pid);
    let done = 0;
    for (let i = 0; i < SECONDS * 2; i++) done += (await load(proxy.port, undefined, 500))[0];
    const c1 = cpuSeconds(proxy.proc.pid);
    least = Math.min(least, (1e6 * (c1.user + c1.sys - c0.user - c0.sys)) / done);
  }
  return least;
}

async function measure(): Promise<Record<string, number>> {
  const http = startHttpUpstream();
  const echo = startEcho(1);
  const proxy = await startDprl([]);
  try {
    return {
      "proxy CPU µs per plain-HTTP request (keep-alive)": await cpuPerOp(
        proxy,
        requestLoad(`127.0.0.1:${http.port}`),
      ),
      "proxy CPU µs per CONNECT tunnel": await cpuPerOp(proxy, tunnelLoad(echo.targets[0])),
    };
  } finally {
    await proxy.proc.stop();
    http.close();
    echo.close();
  }
}

if (import.meta.main) {
  try {
    const now = await measure();
    if (Deno.args.includes("--update")) {
      const figures = Object.fromEntries(Object.entries(now).map(([k, v]) => [k, Math.round(v)]));
      await Deno.writeTextFile(BASELINE, JSON.stringify(figures, null, 2) + "\n");
      console.log("wrote bench/baseline.json", figures);
    } else {
      const baseline = JSON.parse(await Deno.readTextFile(BASELINE));
      const rows = compare(baseline, now);
      console.table(rows.map((r) => ({
        figure: r.name,
        baseline: r.baseline,
        now: Math.round(r.now),
        change: Number.isNaN(r.change) ? "—" : `${(100 * r.change).toFixed(0)}%`,
        verdict: r.worse ? "WORSE" : "ok",
      })));
      const worse = rows.filter((r) => r.worse);
      if (worse.length > 0) {
        console.error(
          `\nbench:check FAILED: ${worse.map((r) => r.name).join("; ")} ` +
            `worse by more than ${100 * TOLERANCE}% than bench/baseline.json`,
        );
        Deno.exitCode = 1;
      }
    }
  } finally {
    await stopAll();
  }
}
