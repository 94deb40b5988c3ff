/**
 * The wait queue under load: 200 clients ask at once for a host of limit 10
 * whose every answer takes 100 ms, through a dprl started with a queue
 * timeout, in memory, with Redis, and with three proxies on one Redis (the
 * clients spread over them in turn: one line across the fleet). Reported per
 * mode and request kind:
 *
 * - hand-off latency: from the end of one answer (a slot coming free) to the
 *   arrival of the next waiting request at the upstream, p50 and p99;
 * - slot utilisation: the slots' busy time over wall time (goal >= 0.95).
 *
 * Everything runs on loopback; every process it starts is stopped on exit.
 *
 * ```sh
 * deno run -A bench/queue.ts
 * ```
 *
 * @module
 */

import { freePort, spawn, type Spawned, stopAll, waitForPort } from "./process.ts";
import { RedisServer } from "./redis_server.ts";
import { startTaskV8Flags } from "./proxies.ts";

const CLIENTS = 200;
const LIMIT = 10;
const HOLD_MS = 100;
const enc = new TextEncoder();
const dec = new TextDecoder();

/** What the upstream saw of each request: arrival and end of the answer (ms). */
interface Seen {
  arrived: number;
  answered: number;
}

/** An HTTP/1.1 upstream that holds every request `HOLD_MS` and records it. */
function startUpstream(): { port: number; seen: Seen[]; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const seen: Seen[] = [];
  const body = "ok\n";
  const answer = enc.encode(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
  (async () => {
    for await (const conn of listener) {
      (async () => {
        const buf = new Uint8Array(16 * 1024);
        let pending = "";
        try {
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) break;
            pending += dec.decode(buf.subarray(0, n));
            while (pending.includes("\r\n\r\n")) {
              pending = pending.slice(pending.indexOf("\r\n\r\n") + 4);
              const arrived = performance.now();
              await new Promise((r) => setTimeout(r, HOLD_MS));
              let off = 0;
              while (off < answer.length) off += await conn.write(answer.subarray(off));
              seen.push({ arrived, answered: performance.now() });
            }
          }
        } catch {
          // the proxy closed it
        } finally {
          try {
            conn.close();
          } catch { /* closed */ }
        }
      })();
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    seen,
    close: () => listener.close(),
  };
}

/** One client: a plain GET, or a CONNECT and a GET through the tunnel. */
async function client(proxyPort: number, upstreamPort: number, kind: "http" | "connect") {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxyPort });
  const target = `127.0.0.1:${upstreamPort}`;
  const get = (path: string) =>
    enc.encode(`GET ${path} HTTP/1.1\r\nHost: ${target}\r\nConnection: close\r\n\r\n`);
  const buf = new Uint8Array(4096);
  let got = "";
  const readUntil = async (done: (s: string) => boolean) => {
    while (!done(got)) {
      const n = await conn.read(buf);
      if (n === null) break;
      got += dec.decode(buf.subarray(0, n));
    }
  };
  try {
    if (kind === "connect") {
      await conn.write(enc.encode(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`));
      await readUntil((s) => s.includes("\r\n\r\n"));
      if (!got.startsWith("HTTP/1.1 200")) throw new Error(got.split("\r\n")[0]);
      got = "";
      await conn.write(get("/"));
    } else {
      await conn.write(get(`http://${target}/`));
    }
    await readUntil((s) => s.endsWith("ok\n"));
    if (!got.startsWith("HTTP/1.1 200")) throw new Error(got.split("\r\n")[0]);
  } finally {
    conn.close();
  }
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

async function measure(redisUrl: string | null, kind: "http" | "connect", proxies = 1) {
  const upstream = startUpstream();
  const ports = Array.from({ length: proxies }, () => freePort());
  const args = (port: number) => [
    "run",
    "-A",
    ...startTaskV8Flags(),
    new URL("../cli.ts", import.meta.url).pathname,
    "--port",
    String(port),
    "--hostname",
    "127.0.0.1",
    "--max-connections",
    String(LIMIT),
    "--queue-timeout",
    "120s",
    ...(redisUrl ? ["--redis-url", redisUrl] : []),
  ];
  const procs: Spawned[] = ports.map((port, i) => spawn(`dprl-${i}`, Deno.execPath(), args(port)));
  try {
    for (const port of ports) await waitForPort(port, 20_000);
    const started = performance.now();
    const results = await Promise.allSettled(
      Array.from(
        { length: CLIENTS },
        (_, i) => client(ports[i % proxies], upstream.port, kind),
      ),
    );
    const wall = performance.now() - started;
    const failed = results.filter((r) => r.status === "rejected").length;
    const seen = upstream.seen;
    const arrivals = seen.map((s) => s.arrived).sort((a, b) => a - b);
    const answers = seen.map((s) => s.answered).sort((a, b) => a - b);
    // At saturation every answer lets exactly one waiter in: the k-th
    // arrival after the first LIMIT follows the (k - LIMIT)-th answer.
    const handOffs: number[] = [];
    for (let k = LIMIT; k < arrivals.length; k++) {
      handOffs.push(arrivals[k] - answers[k - LIMIT]);
    }
    handOffs.sort((a, b) => a - b);
    const busy = seen.reduce((sum, s) => sum + (s.answered - s.arrived), 0);
    const span = answers.at(-1)! - arrivals[0];
    return {
      mode: redisUrl ? (proxies > 1 ? `redis x${proxies}` : "redis") : "memory",
      kind,
      served: seen.length,
      failed,
      wallMs: Math.round(wall),
      handOffP50Ms: +percentile(handOffs, 0.5).toFixed(2),
      handOffP99Ms: +percentile(handOffs, 0.99).toFixed(2),
      utilisation: +(busy / (LIMIT * span)).toFixed(3),
    };
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    upstream.close();
  }
}

if (import.meta.main) {
  const dir = await Deno.makeTempDir({ prefix: "dprl-bench-queue-" });
  const redis = await RedisServer.start(dir);
  try {
    const rows = [];
    const url = `redis://127.0.0.1:${redis.port}`;
    for (const [redisUrl, proxies] of [[null, 1], [url, 1], [url, 3]] as const) {
      for (const kind of ["http", "connect"] as const) {
        rows.push(await measure(redisUrl, kind, proxies));
      }
    }
    console.table(rows);
    console.log(
      `${CLIENTS} clients at once, limit ${LIMIT}, ${HOLD_MS} ms per answer; ` +
        "utilisation = slots' busy time / (limit x wall time), goal >= 0.95",
    );
  } finally {
    await redis.stop();
    await stopAll();
    await Deno.remove(dir, { recursive: true });
  }
}
