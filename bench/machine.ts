/**
 * What the benchmark ran on: the machine and the versions of every program.
 *
 * @module
 */

import { run } from "./process.ts";

/** A description of the machine and software, as label/value pairs. */
export type Facts = [string, string][];

async function firstLine(
  cmd: string,
  args: string[],
  pick: RegExp = /.+/,
): Promise<string> {
  try {
    const r = await run(cmd, args, { timeoutMs: 10_000 });
    const text = `${r.stdout}\n${r.stderr}`;
    const line = text.split("\n").find((l) => pick.test(l));
    return line?.trim() ?? "unknown";
  } catch {
    return "not installed";
  }
}

function readOr(path: string, fallback = ""): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return fallback;
  }
}

/** Machine facts (nproc, memory, kernel, CPU). */
export function machineFacts(): Facts {
  const cpuinfo = readOr("/proc/cpuinfo");
  const model = cpuinfo.match(/^model name\s*:\s*(.+)$/m)?.[1] ?? "unknown";
  const memKiB = Number(
    readOr("/proc/meminfo").match(/^MemTotal:\s+(\d+)/m)?.[1] ?? NaN,
  );
  const openFiles = readOr("/proc/self/limits").match(
    /^Max open files\s+(\d+)\s+(\d+)/m,
  );
  return [
    ["CPUs (nproc)", String(navigator.hardwareConcurrency)],
    ["CPU model", model.trim()],
    ["memory", `${(memKiB / 1024 / 1024).toFixed(1)} GiB`],
    ["kernel", `${Deno.osRelease()} (${Deno.build.os} ${Deno.build.arch})`],
    [
      "open files (soft / hard)",
      openFiles ? `${openFiles[1]} / ${openFiles[2]}` : "unknown",
    ],
  ];
}

/** Versions of the programs involved. */
export async function versionFacts(proxyChainDir: string): Promise<Facts> {
  const pc = readOr(`${proxyChainDir}/node_modules/proxy-chain/package.json`);
  let pcVersion = "not installed";
  try {
    pcVersion = JSON.parse(pc).version;
  } catch {
    // not installed yet
  }
  return [
    ["deno", `${Deno.version.deno} (V8 ${Deno.version.v8})`],
    ["go", await firstLine("go", ["version"])],
    ["tinyproxy", await firstLine("tinyproxy", ["-v"], /tinyproxy/)],
    [
      "node / proxy-chain",
      `${await firstLine("node", ["--version"])} / ${pcVersion}`,
    ],
    [
      "redis",
      (await firstLine("redis-server", ["--version"])).match(/v=(\S+)/)?.[1] ?? "unknown",
    ],
    [
      "wrk",
      (await firstLine("wrk", ["-v"], /wrk/)).split(" ").slice(0, 2).join(" "),
    ],
    [
      "curl",
      (await firstLine("curl", ["--version"])).split(" ").slice(0, 2).join(" "),
    ],
  ];
}
