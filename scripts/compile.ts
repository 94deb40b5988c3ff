/**
 * `deno task compile`: runs `deno compile` with the arguments given and, when
 * it fails, says why in one line instead of its chain of causes and backtrace.
 *
 * ```sh
 * deno run --allow-run=deno scripts/compile.ts --output dist/dprl cli.ts
 * ```
 *
 * @module
 */

/**
 * The one line that explains a failed `deno compile` from its output: the
 * error, its deepest cause, and what to do when the runtime could not be had.
 */
export function compileFailure(output: string): string {
  // deno-lint-ignore no-control-regex
  const lines = output.replace(/\x1b\[[0-9;]*m/g, "").split("\n").map((l) => l.trim());
  const error = lines.find((l) => l.startsWith("error:"))?.slice(6).trim() ??
    lines.find(Boolean) ?? "no output";
  const causes = lines.map((l) => /^[0-9]+: (.+)$/.exec(l)?.[1]).filter((c) =>
    c && c !== "<unknown>"
  );
  const cause = causes.at(-1);
  const runtime = /denort|base binary/i.test(output)
    ? `; it needs the Deno runtime (denort ${Deno.version.deno}): set DENORT_BIN to one`
    : "";
  return `deno compile failed: ${error}${cause ? ` (${cause})` : ""}${runtime}`;
}

if (import.meta.main) {
  const { code, stdout, stderr } = await new Deno.Command("deno", {
    args: ["compile", ...Deno.args],
    stdout: "piped",
    stderr: "piped",
    env: { RUST_BACKTRACE: "0" },
  }).output();
  const text = new TextDecoder();
  if (code === 0) {
    await Deno.stdout.write(stdout);
    await Deno.stderr.write(stderr);
  } else {
    console.error(compileFailure(text.decode(stderr) + text.decode(stdout)));
  }
  Deno.exit(code === 0 ? 0 : 1);
}
