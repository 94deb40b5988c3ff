/**
 * Child processes of the tests.
 *
 * @module
 */

/** Kills `child` (if it still runs), waits for it and lets go of its stdout. */
export async function killChild(child: Deno.ChildProcess): Promise<void> {
  try {
    child.kill("SIGKILL");
  } catch {
    // already dead
  }
  await child.status;
  await child.stdout.cancel().catch(() => {});
}
