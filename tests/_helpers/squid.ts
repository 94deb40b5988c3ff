/**
 * A real squid for a test: its own config in a temporary folder, on a free
 * port of 127.0.0.1, in the foreground (`-N`), optionally asking for Basic
 * credentials (checked by squid's `basic_ncsa_auth` against a file made
 * with `htpasswd`). A system squid plays no part: this one has its own
 * config, port and no pid file.
 *
 * @module
 */

import { Proc, SPAWN_WAIT_MS, tempDir } from "./spawn.ts";
import { closedPort } from "./upstream.ts";
import { waitFor } from "./raw.ts";

/** A running squid; `await using` stops it and removes its folder. */
export interface Squid extends AsyncDisposable {
  /** Its port on 127.0.0.1. */
  readonly port: number;
  /** `http://127.0.0.1:port`, without credentials. */
  readonly origin: string;
}

/** Options of {@linkcode startSquid}. */
export interface SquidOptions {
  /** Credentials squid asks for (Basic), as `user:password`. */
  auth?: string;
}

const HELPER = "/usr/lib/squid/basic_ncsa_auth";

/** Starts squid and waits until it accepts connections. */
export async function startSquid(options: SquidOptions = {}): Promise<Squid> {
  const dir = await tempDir();
  // squid started as root runs its helpers as its own user: they must read the folder.
  await Deno.chmod(dir.path, 0o755);
  const port = closedPort();
  const access = ["acl localnet src 127.0.0.0/8"];
  if (options.auth) {
    const [user, password] = options.auth.split(":");
    const made = await new Deno.Command("htpasswd", {
      args: ["-bcm", `${dir.path}/passwd`, user, password],
      stdout: "null",
      stderr: "null",
    }).output();
    if (!made.success) throw new Error("htpasswd failed");
    await Deno.chmod(`${dir.path}/passwd`, 0o644);
    access.push(
      `auth_param basic program ${HELPER} ${dir.path}/passwd`,
      "auth_param basic children 2",
      "acl users proxy_auth REQUIRED",
      "http_access allow localnet users",
    );
  } else access.push("http_access allow localnet");
  await Deno.writeTextFile(
    `${dir.path}/squid.conf`,
    [
      `http_port 127.0.0.1:${port}`,
      ...access,
      "http_access deny all",
      "cache deny all",
      "cache_mem 8 MB",
      "access_log none",
      "cache_log /dev/null",
      "pid_filename none",
      `coredump_dir ${dir.path}`,
      "workers 1",
      // The target sees a Via field: the request went through squid.
      "via on",
      "forwarded_for delete",
      "shutdown_lifetime 0 seconds",
      "",
    ].join("\n"),
  );
  const proc = new Proc("squid", ["-f", `${dir.path}/squid.conf`, "-N", "-d0"], dir.path);
  const stop = async () => {
    await proc[Symbol.asyncDispose]();
    await dir[Symbol.asyncDispose]();
  };
  try {
    await waitFor(
      async () => {
        if (proc.exited) throw new Error(`squid exited:\n${proc.transcript}`);
        try {
          (await Deno.connect({ hostname: "127.0.0.1", port })).close();
          return true;
        } catch {
          return false;
        }
      },
      () => `squid listening on ${port}:\n${proc.transcript}`,
      SPAWN_WAIT_MS,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return { port, origin: `http://127.0.0.1:${port}`, [Symbol.asyncDispose]: stop };
}
