// A proxy's state does not grow with every host ever requested: hosts that
// hold nothing are forgotten, against real sockets and a closed port.
import assert from "node:assert/strict";
import { BufferedConn, readHead, statusOf, waitFor } from "./_helpers/raw.ts";
import { connectRequest, startProxy } from "./_helpers/proxy.ts";
import { closedPort } from "./_helpers/upstream.ts";

Deno.test("after 1,200 distinct hosts that each refused the connection, the proxy keeps per-host statistics for 500 at most", async () => {
  await using p = await startProxy({ defaultMaxConnectionsPerHost: 4 });
  const port = closedPort();
  const handler = p.proxy.adminHandler();
  const listed = async (): Promise<number> => {
    const res = await handler(new Request("http://admin/api/hosts?limit=1"));
    return (await res.json()).total;
  };
  const hosts = 1_200;
  let next = 0;
  const statuses: number[] = [];
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < hosts) {
      const n = 256 + next++;
      const c = await BufferedConn.connect(p.addr);
      try {
        await c.write(connectRequest(`127.0.${n >> 8}.${n & 255}:${port}`));
        statuses.push(statusOf((await readHead(c))!));
      } finally {
        c.close();
      }
    }
  }));
  assert.equal(statuses.length, hosts);
  assert.ok(statuses.every((s) => s === 502), `statuses ${[...new Set(statuses)]}`);
  let last = 0;
  await waitFor(async () => (last = await listed()) <= 501, () => `${last} hosts listed`, 5_000);
  // The folded hosts still count in the totals.
  const metrics = await (await handler(new Request("http://admin/metrics"))).text();
  const admitted = [...metrics.matchAll(/^dprl_connections_admitted_total\{[^}]*\} (\d+)$/gm)]
    .reduce((sum, m) => sum + Number(m[1]), 0);
  assert.equal(admitted, hosts);
});
