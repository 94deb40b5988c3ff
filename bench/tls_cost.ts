/**
 * What TLS on the proxy port costs: two dprl processes, one with
 * `--tls-cert/--tls-key` and one without, run side by side, the load
 * alternating between them in half-second slices (the first of each pair
 * alternating too) so that both see the same machine. The same Deno client
 * drives both, over `Deno.connectTls` or `Deno.connect`:
 *
 * - CONNECT tunnels/s: 32 clients, each tunnel a new connection to the proxy
 *   (a TLS handshake each), one byte there and back, close;
 * - plain HTTP requests/s: 32 keep-alive connections to the proxy, each
 *   sending absolute-form GETs one after another.
 *
 * With each proxy's CPU per operation. The certificate is an ECDSA P-256
 * one made with `openssl` for the run.
 *
 * ```sh
 * deno run -A bench/tls_cost.ts            # 5 s per proxy and load
 * deno run -A bench/tls_cost.ts --quick    # 2 s
 * ```
 *
 * @module
 */

import { cpuSeconds, type Spawned, stopAll } from "./process.ts";
import { type Load, requestLoad, startDprl, startHttpUpstream, tunnelLoad } from "./deno_load.ts";
import { startEcho } from "./redis_cost.ts";
import { fmt, table } from "./markdown_table.ts";

const dec = new TextDecoder();

/** One load's figures, plain then TLS. */
export interface TlsLoadFigures {
  /** Operations per second through the plain proxy, then the TLS one. */
  perSecond: [number, number];
  /** Each proxy's CPU per operation (user + sys), µs. */
  cpuUs: [number, number];
  /** Operations that failed, both proxies. */
  failed: number;
}

/** What {@linkcode measureTls} measured. */
export interface TlsFigures {
  tunnels: TlsLoadFigures;
  requests: TlsLoadFigures;
}

/** A certificate for 127.0.0.1 and its key, made with openssl in `dir`. */
async function makeCertificate(dir: string): Promise<{ cert: string; key: string }> {
  const cert = `${dir}/cert.pem`, key = `${dir}/key.pem`;
  const out = await new Deno.Command("openssl", {
    args: [
      ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
      ...["-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=dprl bench"],
      ...["-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=CA:FALSE"],
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`openssl failed: ${dec.decode(out.stderr)}`);
  return { cert, key };
}

/** `load` on both proxies side by side for `seconds` each, in half-second slices. */
async function sideBySide(
  proxies: { port: number; proc: Spawned; ca?: string }[],
  load: Load,
  seconds: number,
): Promise<TlsLoadFigures> {
  await load(proxies[0].port, proxies[0].ca, 300);
  await load(proxies[1].port, proxies[1].ca, 300);
  const tally = proxies.map((p) => ({ done: 0, failed: 0, ms: 0, cpu0: cpuSeconds(p.proc.pid) }));
  for (let slice = 0; slice < seconds * 2; slice++) {
    for (const i of slice % 2 ? [1, 0] : [0, 1]) {
      const started = performance.now();
      const [done, failed] = await load(proxies[i].port, proxies[i].ca, 500);
      tally[i].ms += performance.now() - started;
      tally[i].done += done;
      tally[i].failed += failed;
    }
  }
  const cpuUs = proxies.map((p, i) => {
    const c = cpuSeconds(p.proc.pid);
    const used = c.user + c.sys - tally[i].cpu0.user - tally[i].cpu0.sys;
    return (1e6 * used) / tally[i].done;
  });
  return {
    perSecond: [0, 1].map((i) => (1000 * tally[i].done) / tally[i].ms) as [number, number],
    cpuUs: cpuUs as [number, number],
    failed: tally[0].failed + tally[1].failed,
  };
}

/** Measures tunnels/s and keep-alive requests/s through dprl with and without TLS, side by side. */
export async function measureTls(seconds: number): Promise<TlsFigures> {
  const dir = await Deno.makeTempDir({ prefix: "dprl-bench-tls-" });
  const echo = startEcho(1);
  const http = startHttpUpstream();
  try {
    const { cert, key } = await makeCertificate(dir);
    const plain = await startDprl([]);
    const tls = await startDprl(["--tls-cert", cert, "--tls-key", key]);
    const proxies = [plain, { ...tls, ca: await Deno.readTextFile(cert) }];
    try {
      return {
        tunnels: await sideBySide(proxies, tunnelLoad(echo.targets[0]), seconds),
        requests: await sideBySide(proxies, requestLoad(`127.0.0.1:${http.port}`), seconds),
      };
    } finally {
      await Promise.all([plain.proc.stop(), tls.proc.stop()]);
    }
  } finally {
    echo.close();
    http.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** The figures as a Markdown table. */
export function tlsTable(f: TlsFigures | undefined): string {
  if (!f) return "Not measured.";
  const row = (what: string, l: TlsLoadFigures) => [
    what,
    fmt(l.perSecond[0]),
    fmt(l.perSecond[1]),
    `${(l.perSecond[1] / l.perSecond[0]).toFixed(2)}×`,
    `${l.cpuUs[0].toFixed(0)} / ${l.cpuUs[1].toFixed(0)}`,
    String(l.failed),
  ];
  return table(
    ["load (32 clients)", "plain", "TLS", "TLS ÷ plain", "proxy CPU µs/op, plain / TLS", "failed"],
    [
      row("CONNECT tunnels/s (a handshake each)", f.tunnels),
      row("plain HTTP requests/s (keep-alive)", f.requests),
    ],
    ["l", "r", "r", "r", "r", "r"],
  );
}

if (import.meta.main) {
  const quick = Deno.args.includes("--quick");
  try {
    console.log(tlsTable(await measureTls(quick ? 2 : 5)));
  } finally {
    await stopAll();
  }
}
