/**
 * Tests that need a command on PATH (`htpasswd`, `curl`): when it is
 * missing, the test is skipped with a loud warning, or fails when
 * `CI=true`, as the Redis tests do.
 *
 * @module
 */

/** Whether `name` can be started here (its exit code does not matter). */
export function hasCommand(name: string): boolean {
  try {
    new Deno.Command(name, { args: ["--version"], stdout: "null", stderr: "null" }).outputSync();
    return true;
  } catch {
    return false;
  }
}

/**
 * Registers a test that runs `command`. Without it, the test is skipped
 * with a warning naming what to install (`install`), or fails on CI.
 */
export function commandTest(
  name: string,
  need: { command: string; install: string },
  fn: (t: Deno.TestContext) => Promise<void>,
): void {
  if (hasCommand(need.command)) {
    Deno.test({ name, fn });
    return;
  }
  const why = `${need.command} is not on PATH`;
  if (Deno.env.get("CI") === "true") {
    Deno.test(name, () => {
      throw new Error(`Cannot run this test on CI: ${why}`);
    });
    return;
  }
  console.warn(`\n!!! SKIPPED test "${name}": ${why}. Install ${need.install} to run it.\n`);
  Deno.test({ name, ignore: true, fn() {} });
}
