/**
 * The container's health check: exits 0 when the admin server on
 * `127.0.0.1:$DPRL_ADMIN_PORT` answers `GET /healthz` with 200, 1 otherwise,
 * and 0 at once when `DPRL_ADMIN_PORT` is unset (no admin server to ask).
 *
 * `deno run --allow-net=127.0.0.1 --allow-env=DPRL_ADMIN_PORT scripts/healthcheck.ts`
 *
 * It speaks HTTP/1.0 over a raw socket, so that no proxy variable of the
 * environment can send the check elsewhere.
 *
 * @module
 */

const port = Number(Deno.env.get("DPRL_ADMIN_PORT") || "");
if (!Deno.env.get("DPRL_ADMIN_PORT")) Deno.exit(0);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error(`healthcheck: DPRL_ADMIN_PORT must be a port from 1 to 65535`);
  Deno.exit(1);
}

async function check(): Promise<boolean> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode("GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"));
    const buf = new Uint8Array(64);
    let got = 0;
    while (got < 12) {
      const n = await conn.read(buf.subarray(got));
      if (n === null) break;
      got += n;
    }
    return /^HTTP\/1\.[01] 200 /.test(new TextDecoder().decode(buf.subarray(0, got)));
  } finally {
    conn.close();
  }
}

const timer = setTimeout(() => {
  console.error("healthcheck: no answer from the admin server within 3 s");
  Deno.exit(1);
}, 3000);
try {
  const ok = await check();
  if (!ok) console.error("healthcheck: /healthz did not answer 200");
  Deno.exit(ok ? 0 : 1);
} catch (err) {
  console.error(`healthcheck: ${err instanceof Error ? err.message : err}`);
  Deno.exit(1);
} finally {
  clearTimeout(timer);
}
