/**
 * `deno task binaries`: the release's binaries. For every target of
 * {@linkcode TARGETS} it runs `deno compile` with the flags of `deno task
 * compile` (read from `deno.json`, so both build with the same permissions and
 * lock), the target and an output named after it, `dist/dprl-<target>`; then
 * it writes their SHA-256 sums to `dist/SHA256SUMS`, as `sha256sum` does.
 *
 * ```sh
 * deno task binaries            # builds every target (deno compile downloads each runtime)
 * deno task binaries --dry-run  # prints the deno compile command lines only
 * ```
 *
 * Leave `DENORT_BIN` unset: `deno compile` would build every target on that
 * one runtime instead of downloading each target's.
 *
 * @module
 */

import { compileFailure } from "./compile.ts";

/** The targets the release builds: Linux and macOS on x86_64 and arm64, Windows on x86_64. */
export const TARGETS: readonly string[] = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
  "x86_64-pc-windows-msvc",
];

/** The folder the binaries and their sums are written to, from the checkout's root. */
export const DIST = "dist";

/** The file name of the binary for `target`: `dprl-<target>`, with `.exe` for Windows. */
export function binaryName(target: string): string {
  return `dprl-${target}${target.includes("windows") ? ".exe" : ""}`;
}

/**
 * `deno compile`'s arguments for `target`, from `task` (`deno task compile`'s
 * command line): the words after `scripts/compile.ts`, with `--target` and
 * the output `dist/<binaryName(target)>` in place of the task's `--output`.
 */
export function compileArgs(task: string, target: string): string[] {
  if (/['"\\]/.test(task)) {
    throw new Error("the compile task must not quote: it is split on spaces");
  }
  const words = task.trim().split(/\s+/);
  const script = words.indexOf("scripts/compile.ts");
  if (script < 0) throw new Error("the compile task does not run scripts/compile.ts");
  const args = words.slice(script + 1);
  const output = args.indexOf("--output");
  if (output < 0 || output + 1 >= args.length) {
    throw new Error("the compile task has no --output");
  }
  args.splice(output, 2, "--target", target, "--output", `${DIST}/${binaryName(target)}`);
  return ["compile", ...args];
}

/** The SHA-256 of `bytes`, in lowercase hex. */
export async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The lines of a `SHA256SUMS` file for the files `names` of folder `dir`. */
export async function sha256Sums(dir: string, names: string[]): Promise<string> {
  const lines = [];
  for (const name of names) {
    lines.push(`${await sha256Hex(await Deno.readFile(`${dir}/${name}`))}  ${name}\n`);
  }
  return lines.join("");
}

/** Runs `deno` with `args` in `root`; exits with one line when it fails. */
async function compile(args: string[], root: URL): Promise<void> {
  const { code, stdout, stderr } = await new Deno.Command("deno", {
    args,
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    env: { RUST_BACKTRACE: "0" },
  }).output();
  if (code !== 0) {
    const text = new TextDecoder();
    console.error(compileFailure(text.decode(stderr) + text.decode(stdout)));
    Deno.exit(1);
  }
}

if (import.meta.main) {
  const root = new URL("../", import.meta.url);
  const dryRun = Deno.args.includes("--dry-run");
  const unknown = Deno.args.filter((a) => a !== "--dry-run");
  if (unknown.length > 0) {
    console.error(`binaries: unknown argument ${unknown[0]} (only --dry-run)`);
    Deno.exit(2);
  }
  const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", root)));
  const commands = TARGETS.map((target) => compileArgs(config.tasks.compile, target));
  if (dryRun) {
    for (const args of commands) console.log(["deno", ...args].join(" "));
    Deno.exit(0);
  }
  await Deno.mkdir(new URL(DIST, root), { recursive: true });
  for (const args of commands) {
    console.error(`binaries: deno ${args.join(" ")}`);
    await compile(args, root);
  }
  const dist = new URL(DIST, root).pathname;
  const sums = await sha256Sums(dist, TARGETS.map(binaryName));
  await Deno.writeTextFile(`${dist}/SHA256SUMS`, sums);
  console.log(sums.trimEnd());
}
