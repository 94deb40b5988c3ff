/**
 * Where an idle tunnel's memory goes: starts dprl (or the bare relay, or
 * proxy-chain) with the V8 inspector on, holds N idle CONNECT tunnels
 * through it from this process, and prints per tunnel the RSS it adds
 * (before and after a forced garbage collection), the JS heap and external
 * memory it adds, and, from heap snapshots taken before and while holding,
 * the object groups (by constructor, closures also by where they were
 * written; with `--holders`, arrays and anonymous closures also by what
 * holds them) that grew the most. Snapshots swell the process's RSS: read
 * RSS from a run with `--no-snapshot`.
 *
 *     deno run -A bench/idle_heap.ts                  # dprl, with deno task start's V8 flags
 *     deno run -A bench/idle_heap.ts --tunnels 4000 --no-snapshot --more 2000
 *     deno run -A bench/idle_heap.ts --bare 512       # the bare relay, 512-byte buffers
 *     deno run -A bench/idle_heap.ts --proxy-chain --no-snapshot
 *     deno run -A bench/idle_heap.ts --deno-flag=--v8-flags=--max-semi-space-size=4  # instead
 *
 * @module
 */

import { parseArgs } from "node:util";
import { freePort, rssKiB, sleep, spawn, type Spawned, waitForPort } from "./process.ts";
import { paths } from "./setup.ts";
import { proxyChainDir, startTaskV8Flags } from "./proxies.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    tunnels: { type: "string", default: "2000" },
    bare: { type: "string" },
    "proxy-chain": { type: "boolean", default: false },
    "no-snapshot": { type: "boolean", default: false },
    top: { type: "string", default: "25" },
    holders: { type: "boolean", default: false },
    /** Then opens this many more and prints the RSS they add, per tunnel (the marginal cost). */
    more: { type: "string", default: "0" },
    "deno-flag": { type: "string", multiple: true, default: [] },
  },
});
const count = Number(values.tunnels);
const repo = paths().repo;

/** A minimal Chrome DevTools Protocol session over the inspector's WebSocket. */
class Inspector {
  #ws: WebSocket;
  #next = 1;
  #waiting = new Map<number, (r: unknown) => void>();
  #chunks: string[] = [];
  /** Script URLs by id, to name closures by where they were written. */
  readonly scripts = new Map<string, string>();

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.method === "HeapProfiler.addHeapSnapshotChunk") this.#chunks.push(msg.params.chunk);
      else if (msg.method === "Debugger.scriptParsed") {
        this.scripts.set(msg.params.scriptId, msg.params.url);
      } else if (msg.id !== undefined) this.#waiting.get(msg.id)?.(msg.result);
    };
  }

  static async open(port: number): Promise<Inspector> {
    const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
    const ws = new WebSocket(list[0].webSocketDebuggerUrl);
    await new Promise((res, rej) => {
      ws.onopen = res;
      ws.onerror = rej;
    });
    return new Inspector(ws);
  }

  call(method: string, params: Record<string, unknown> = {}): Promise<unknown> {
    const id = this.#next++;
    return new Promise((res) => {
      this.#waiting.set(id, res);
      this.#ws.send(JSON.stringify({ id, method, params }));
    });
  }

  async memory(gc = true): Promise<Deno.MemoryUsage> {
    if (gc) await this.call("HeapProfiler.collectGarbage");
    const r = await this.call("Runtime.evaluate", {
      expression: "JSON.stringify(globalThis.Deno ? Deno.memoryUsage() : process.memoryUsage())",
    }) as { result: { value: string } };
    return JSON.parse(r.result.value);
  }

  async snapshot(): Promise<Map<string, Group>> {
    this.#chunks = [];
    await this.call("HeapProfiler.takeHeapSnapshot", { reportProgress: false });
    const snapshot = JSON.parse(this.#chunks.join(""));
    this.#chunks = [];
    // Only now: a debugger on while tunnels open would add objects of its own.
    await this.call("Debugger.enable");
    await this.call("Debugger.disable");
    return groups(snapshot, this.scripts);
  }

  close(): void {
    this.#ws.close();
  }
}

interface Group {
  count: number;
  bytes: number;
}

interface Snapshot {
  snapshot: {
    meta: {
      node_fields: string[];
      node_types: [string[]];
      edge_fields: string[];
      edge_types: [string[]];
      location_fields: string[];
    };
  };
  nodes: number[];
  edges: number[];
  strings: string[];
  locations: number[];
}

/** Where each closure node was written (`file:line:column`), by node index. */
function closureSites(s: Snapshot, scripts: Map<string, string>): Map<number, string> {
  const fields = s.snapshot.meta.location_fields;
  const width = fields.length;
  const [indexAt, scriptAt, lineAt, columnAt] = ["object_index", "script_id", "line", "column"]
    .map((f) => fields.indexOf(f));
  const sites = new Map<number, string>();
  for (let i = 0; i < (s.locations ?? []).length; i += width) {
    const url = scripts.get(String(s.locations[i + scriptAt])) ?? "?";
    const file = url.replace(/^.*\/(lib|bench|ext|src)\//, "$1/");
    sites.set(
      s.locations[i + indexAt],
      `${file}:${s.locations[i + lineAt] + 1}:${s.locations[i + columnAt] + 1}`,
    );
  }
  return sites;
}

/**
 * Self sizes summed by group: object and closure nodes by name (closures
 * also by where they were written), the rest by type.
 */
function groups(s: Snapshot, scripts: Map<string, string>): Map<string, Group> {
  const sites = closureSites(s, scripts);
  const holders = values.holders ? arrayHolders(s) : new Map<number, Holder>();
  const fields = s.snapshot.meta.node_fields;
  const types = s.snapshot.meta.node_types[0];
  const width = fields.length;
  const [typeAt, nameAt, sizeAt] = ["type", "name", "self_size"].map((f) => fields.indexOf(f));
  const out = new Map<string, Group>();
  for (let i = 0; i < s.nodes.length; i += width) {
    const type = types[s.nodes[i + typeAt]];
    const named = type === "object" || type === "closure" || type === "native";
    const site = type === "closure" ? ` @ ${sites.get(i) ?? "?"}` : "";
    const holder = holders.get(i);
    const held = holder ? ` in ${holder.name}` : "";
    const outer = holder && holders.get(holder.from);
    const chain = outer ? ` in ${outer.name}` : "";
    const key = named
      ? `${type} ${s.strings[s.nodes[i + nameAt]]}${site}${held}`
      : `(${type})${held}${chain}`;
    const g = out.get(key) ?? { count: 0, bytes: 0 };
    g.count++;
    g.bytes += s.nodes[i + sizeAt];
    out.set(key, g);
  }
  return out;
}

function startProxy(port: number, inspectPort: number): Spawned {
  const inspect = `--inspect=127.0.0.1:${inspectPort}`;
  if (values["proxy-chain"]) {
    return spawn("proxy-chain", "bash", [
      `${paths().shared}/peers/proxy-chain/run.sh`,
      String(port),
    ], {
      env: { PEER_DIR: proxyChainDir(paths()), NODE_OPTIONS: inspect },
    });
  }
  if (values.bare) {
    return spawn("bare relay", Deno.execPath(), [
      "run",
      "-A",
      inspect,
      ...values["deno-flag"],
      `${repo}/bench/bare_relay.ts`,
      "--port",
      String(port),
      "--buffer",
      values.bare,
    ]);
  }
  return spawn("dprl", Deno.execPath(), [
    "run",
    "-A",
    inspect,
    ...(values["deno-flag"].length ? values["deno-flag"] : startTaskV8Flags()),
    `${repo}/cli.ts`,
    "--hostname",
    "127.0.0.1",
    "--port",
    String(port),
    "--max-connections",
    String(count + Number(values.more) + 100),
    "--log-level",
    "warn",
  ], { cwd: repo });
}

/** Opens one tunnel to `target` through the proxy and reads its 200. */
async function openTunnel(proxyPort: number, target: string): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxyPort });
  await conn.write(
    new TextEncoder().encode(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`),
  );
  const buf = new Uint8Array(256);
  let head = "";
  while (!head.includes("\r\n\r\n")) {
    const n = await conn.read(buf);
    if (n === null) throw new Error("The proxy closed the tunnel");
    head += new TextDecoder().decode(buf.subarray(0, n));
  }
  if (!head.startsWith("HTTP/1.1 200")) throw new Error(`The proxy said ${head.split("\r\n")[0]}`);
  return conn;
}

async function openMany(proxyPort: number, target: string, n: number): Promise<Deno.TcpConn[]> {
  const conns: Deno.TcpConn[] = [];
  for (let i = 0; i < n; i += 50) {
    const batch = Math.min(50, n - i);
    conns.push(
      ...await Promise.all(Array.from({ length: batch }, () => openTunnel(proxyPort, target))),
    );
  }
  return conns;
}

function name(): string {
  return values.bare ? "the bare relay" : values["proxy-chain"] ? "proxy-chain" : "dprl";
}

function perTunnel(before: number, after: number): string {
  return ((after - before) / 1024 / count).toFixed(2);
}

/** What holds a node: the holder's group and edge, and the holder's own node index. */
interface Holder {
  name: string;
  from: number;
}

/**
 * For each array, closure and plain container node, the first node and edge
 * that hold it (diagnostics).
 */
function arrayHolders(s: Snapshot): Map<number, Holder> {
  const nf = s.snapshot.meta.node_fields;
  const ef = s.snapshot.meta.edge_fields;
  const types = s.snapshot.meta.node_types[0];
  const etypes = s.snapshot.meta.edge_types[0];
  const nw = nf.length;
  const ew = ef.length;
  const [typeAt, nameAt, countAt] = ["type", "name", "edge_count"].map((f) => nf.indexOf(f));
  const [etypeAt, enameAt, toAt] = ["type", "name_or_index", "to_node"].map((f) => ef.indexOf(f));
  const out = new Map<number, Holder>();
  let e = 0;
  for (let i = 0; i < s.nodes.length; i += nw) {
    const holder = `${types[s.nodes[i + typeAt]]} ${s.strings[s.nodes[i + nameAt]]}`;
    for (let k = 0; k < s.nodes[i + countAt]; k++, e += ew) {
      const to = s.edges[e + toAt];
      const toType = types[s.nodes[to + typeAt]];
      const toName = s.strings[s.nodes[to + nameAt]];
      const wanted = toType === "array" || toType === "closure" ||
        (toType === "object" && ["Object", "Array", "Set", "Promise", "Map"].includes(toName));
      if (!wanted) continue;
      const et = etypes[s.edges[e + etypeAt]];
      const name = et === "element" || et === "hidden"
        ? `[${et}]`
        : s.strings[s.edges[e + enameAt]];
      if (!out.has(to)) out.set(to, { name: `${holder}.${name}`, from: i });
    }
  }
  return out;
}

function printGrowth(base: Map<string, Group>, held: Map<string, Group>): void {
  const rows = [...held].map(([key, g]) => {
    const b = base.get(key) ?? { count: 0, bytes: 0 };
    return { key, count: (g.count - b.count) / count, bytes: (g.bytes - b.bytes) / count };
  }).filter((r) => r.bytes > 0).sort((a, b) => b.bytes - a.bytes);
  const total = rows.reduce((s, r) => s + r.bytes, 0);
  console.log(`\nheap snapshot growth per tunnel: ${(total / 1024).toFixed(2)} KiB`);
  console.log("bytes/tunnel  objects/tunnel  group");
  for (const r of rows.slice(0, Number(values.top))) {
    console.log(
      `${r.bytes.toFixed(0).padStart(12)}  ${r.count.toFixed(2).padStart(14)}  ${r.key}`,
    );
  }
}

/** Prints what `count` idle tunnels add, then what `more` further ones add. */
async function measure(proxy: Spawned, inspector: Inspector, port: number, target: string) {
  for (const c of await openMany(port, target, 20)) c.close();
  await sleep(500);
  const baseMem = await inspector.memory();
  const baseRss = rssKiB(proxy.pid) * 1024;
  const baseHeap = values["no-snapshot"] ? null : await inspector.snapshot();
  const conns = await openMany(port, target, count);
  try {
    await sleep(1500);
    const heldRss = rssKiB(proxy.pid) * 1024;
    const heldNoGc = await inspector.memory(false);
    const heldMem = await inspector.memory();
    const gcRss = rssKiB(proxy.pid) * 1024;
    const heap = (k: "heapUsed" | "heapTotal" | "external") => perTunnel(baseMem[k], heldMem[k]);
    console.log(`${count} idle tunnels through ${name()}, KiB per tunnel:`);
    console.log(
      `  RSS ${perTunnel(baseRss, heldRss)}, after a full GC ${perTunnel(baseRss, gcRss)}`,
    );
    console.log(
      `  JS heap before the GC: total ${perTunnel(baseMem.heapTotal, heldNoGc.heapTotal)}, used ${
        perTunnel(baseMem.heapUsed, heldNoGc.heapUsed)
      }`,
    );
    console.log(`  JS heap after: total ${heap("heapTotal")}, used ${heap("heapUsed")}`);
    console.log(`  external ${heap("external")}`);
    if (baseHeap) printGrowth(baseHeap, await inspector.snapshot());
    const more = Number(values.more);
    if (more > 0) {
      const rss0 = rssKiB(proxy.pid);
      conns.push(...await openMany(port, target, more));
      await sleep(1500);
      const added = (rssKiB(proxy.pid) - rss0) / more;
      console.log(`  ${more} more: RSS ${added.toFixed(2)}`);
    }
  } finally {
    for (const c of conns) c.close();
  }
}

const upstream = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const accepted: Deno.Conn[] = [];
(async () => {
  for await (const c of upstream) accepted.push(c);
})();
const port = freePort();
const inspectPort = freePort();
const proxy = startProxy(port, inspectPort);
try {
  await waitForPort(port, 60_000, proxy);
  await waitForPort(inspectPort, 10_000, proxy);
  const inspector = await Inspector.open(inspectPort);
  await measure(proxy, inspector, port, `127.0.0.1:${upstream.addr.port}`);
  inspector.close();
} finally {
  await proxy.stop(2000);
  upstream.close();
  for (const c of accepted) c.close();
}
