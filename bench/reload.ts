/**
 * The config file's reload: the time to read and check files of 4,000 to
 * 100,000 host rules (goal: linear, 100,000 in under 2 s), and what a
 * reload of 100,000 rules does to traffic: the longest proxied request and
 * the longest stall of the event loop while it runs (goal: under 50 ms),
 * beside the same reload run in the event loop's thread, and five reloads
 * asked for at once (goal: merged, two reads at most). Linux only (the
 * main thread's CPU comes from /proc).
 *
 * ```sh
 * deno run -A bench/reload.ts [--sizes=4000,8000,16000,50000,100000] [--rules=100000]
 * ```
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";
import { ProxyRateLimiter } from "../mod.ts";
import { loadRulesFile, RulesWorker } from "../lib/config/reload.ts";
import { RuleTable } from "../lib/limit/rules/rule_table.ts";

/** A config file of `n` host rules: exact hosts, hosts with a port, wildcards. */
export function rulesFile(n: number, limit = 1): string {
  const lines = ["default: 50", "hosts:"];
  for (let i = 0; i < n; i++) {
    const kind = i % 3;
    const pattern = kind === 0
      ? `h${i}.example.com`
      : kind === 1
      ? `p${i}.example.io:8443`
      : `"*.w${i}.example.net"`;
    lines.push(`  ${pattern}: ${limit + (i % 50)}`);
  }
  return lines.join("\n") + "\n";
}

/** A reload's context with nothing above the file and an empty table in use. */
const EMPTY = { above: {}, current: new RuleTable().rulesText };

/** Milliseconds of one call of `fn`. */
async function time(fn: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

/** Wall and CPU milliseconds (of the whole process, every thread) of one call of `fn`. */
async function cost(fn: () => Promise<unknown>): Promise<[number, number]> {
  const cpu = process.cpuUsage();
  const wall = await time(fn);
  const used = process.cpuUsage(cpu);
  return [wall, (used.user + used.system) / 1000];
}

/** Load times by size, in this thread and through the worker. */
async function loadTimes(dir: string, sizes: number[]): Promise<string[][]> {
  const rows: string[][] = [];
  for (const n of sizes) {
    const path = `${dir}/r${n}.yaml`;
    await Deno.writeTextFile(path, rulesFile(n));
    const here = await cost(() => loadRulesFile({ path, flags: {}, worker: false }, EMPTY));
    const worker = await cost(() => loadRulesFile({ path, flags: {} }, EMPTY));
    rows.push([n.toLocaleString("en"), ...[...here, ...worker].map((ms) => ms.toFixed(0))]);
  }
  return rows;
}

/** CPU milliseconds of this process's main thread (Linux), at 10 ms resolution. */
function mainThreadCpu(): number {
  const stat = Deno.readTextFileSync(`/proc/self/task/${Deno.pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** The longest gap of a 5 ms timer while `during` runs, less the 5 ms. */
async function stalls<T>(during: () => Promise<T>): Promise<[T, number]> {
  let worst = 0;
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    worst = Math.max(worst, now - last - 5);
    last = now;
  }, 5);
  try {
    return [await during(), worst];
  } finally {
    clearInterval(timer);
  }
}

/** Requests through the proxy one after another until `done`; the slowest, in ms. */
async function slowest(proxy: URL, target: string, done: () => boolean): Promise<number> {
  const client = Deno.createHttpClient({ proxy: { url: proxy.href } });
  let worst = 0;
  try {
    for (let i = 0; i < 100_000 && !done(); i++) {
      const took = await time(async () => await (await fetch(target, { client })).text());
      worst = Math.max(worst, took);
    }
  } finally {
    client.close();
  }
  return worst;
}

if (import.meta.main) await main();
async function main(): Promise<void> {
  const args = parseArgs({
    args: Deno.args,
    options: {
      sizes: { type: "string", default: "4000,8000,16000,50000,100000" },
      rules: { type: "string", default: "100000" },
    },
  }).values;
  const dir = await Deno.makeTempDir({ prefix: "dprl-reload-" });
  await using upstream = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("ok"),
  );
  try {
    const sizes = args.sizes.split(",").map(Number);
    const rows = await loadTimes(dir, sizes);
    const load = Deno.loadavg()[0].toFixed(1);
    console.log(`reading and checking a config file of host rules (ms; load average ${load})\n`);
    console.log("| host rules | here, wall | here, CPU | worker, wall | worker, CPU |");
    console.log("| ---------: | ---------: | --------: | -----------: | ----------: |");
    for (const row of rows) console.log(`| ${row.join(" | ")} |`);

    const n = Number(args.rules);
    const path = `${dir}/dprl.yaml`;
    await Deno.writeTextFile(path, rulesFile(n));
    let loads = 0;
    let worker = true;
    using rulesWorker = new RulesWorker();
    let limit = 1;
    await using proxy = new ProxyRateLimiter({
      port: 0,
      loadRules: (context) => (
        loads++, loadRulesFile({ path, flags: {}, worker: worker && rulesWorker }, context)
      ),
    });
    await proxy.start();
    // The first reload starts the worker, which holds the event loop a while.
    const [, firstStall] = await stalls(() => proxy.reload());
    const target = `http://127.0.0.1:${upstream.addr.port}/`;
    const baseline = await slowest(
      proxy.proxyUrl!,
      target,
      (() => {
        const end = performance.now() + 500;
        return () => performance.now() > end;
      })(),
    );
    const once = async () => {
      await Deno.writeTextFile(path, rulesFile(n, ++limit));
      let done = false;
      const traffic = slowest(proxy.proxyUrl!, target, () => done);
      const cpu = mainThreadCpu();
      const [took, stall] = await stalls(() =>
        time(() => proxy.reload().finally(() => done = true))
      );
      return { took, stall, request: await traffic, cpu: mainThreadCpu() - cpu };
    };
    worker = false;
    const here = await once();
    worker = true;
    const one = await once();
    loads = 0;
    await Deno.writeTextFile(path, rulesFile(n, ++limit));
    const [burst, burstStall] = await stalls(() =>
      time(() => Promise.all(Array.from({ length: 5 }, () => proxy.reload())))
    );
    console.log(`\na reload of ${n.toLocaleString("en")} rules under traffic\n`);
    console.log(`(load average ${Deno.loadavg()[0].toFixed(1)})\n`);
    console.log("| measure (ms) | in a worker | in the event loop's thread |");
    console.log("| ------------ | ----------: | -------------------------: |");
    const row = (name: string, f: (r: typeof one) => number, digits = 0) =>
      console.log(`| ${name} | ${f(one).toFixed(digits)} | ${f(here).toFixed(digits)} |`);
    row("one reload, wall", (r) => r.took);
    row("CPU of the event loop's thread during it", (r) => r.cpu);
    row("longest event-loop stall during it", (r) => r.stall, 1);
    row("slowest proxied request during it", (r) => r.request, 1);
    console.log(`| slowest proxied request before it | ${baseline.toFixed(1)} | |`);
    console.log(
      `| longest stall of the first reload (starts the worker) | ${firstStall.toFixed(1)} | |`,
    );
    console.log(
      `| five reloads at once, wall (${loads} reads of the file) | ${burst.toFixed(0)} |`,
    );
    console.log(`| longest event-loop stall during them | ${burstStall.toFixed(1)} |`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
