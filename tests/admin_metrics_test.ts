import assert from "node:assert/strict";
import { createAdminHandler } from "../lib/admin/admin_handler.ts";
import { escapeLabel } from "../lib/metrics/prometheus.ts";
import { Histogram, ProxyStats } from "../lib/metrics/proxy_stats.ts";
import { TableAdminSource } from "./_helpers/admin_source.ts";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Exposition {
  samples: Sample[];
  types: Map<string, string>;
  helps: Map<string, string>;
}

/** Parses the Prometheus text format 0.0.4 strictly; throws on any malformed line. */
function parseExposition(text: string): Exposition {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  const helps = new Map<string, string>();
  assert.ok(text.endsWith("\n"), "exposition ends with a line feed");
  // The family whose samples may follow (a metric's lines form one group).
  let family = "";
  for (const line of text.slice(0, -1).split("\n")) {
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (meta) {
      const map = meta[1] === "HELP" ? helps : types;
      assert.ok(!map.has(meta[2]), `one ${meta[1]} per metric: ${meta[2]}`);
      map.set(meta[2], meta[3]);
      family = meta[2];
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    let rest = m[3] ?? "";
    while (rest !== "") {
      const l = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/.exec(rest);
      assert.ok(l, `labels: ${JSON.stringify(m[3])}`);
      labels[l[1]] = l[2].replace(/\\([\\"n])/g, (_, c) => (c === "n" ? "\n" : c));
      rest = rest.slice(l[0].length);
    }
    const own = types.get(family) === "histogram"
      ? [family, `${family}_bucket`, `${family}_sum`, `${family}_count`]
      : [family];
    assert.ok(own.includes(m[1]), `${m[1]} among the samples of ${family}`);
    const value = m[4] === "+Inf" ? Infinity : Number(m[4]);
    assert.ok(!Number.isNaN(value), `value: ${m[4]}`);
    samples.push({ name: m[1], labels, value });
  }
  return { samples, types, helps };
}

function find(exp: Exposition, name: string, labels: Record<string, string> = {}): Sample[] {
  return exp.samples.filter((s) =>
    s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)
  );
}

function value(exp: Exposition, name: string, labels: Record<string, string> = {}): number {
  const found = find(exp, name, labels);
  assert.equal(found.length, 1, `one sample of ${name} ${JSON.stringify(labels)}`);
  return found[0].value;
}

async function scrape(source: TableAdminSource, maxHosts?: number): Promise<Exposition> {
  const handler = createAdminHandler(source, { metricsMaxHosts: maxHosts });
  const res = await handler(new Request("http://admin.test/metrics"));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  return parseExposition(await res.text());
}

Deno.test("metrics list every dprl metric with HELP and TYPE", async () => {
  const source = new TableAdminSource({
    defaultLimit: 5,
    hostLimits: { "api.example.com": 3 },
    workers: [],
  });
  source.setPool("api.example.com", 3, 1, 7);
  const stats = source.stats;
  stats.onRequest("connect");
  stats.onRequest("http");
  stats.onRequest("http");
  stats.onAdmitted("api.example.com");
  stats.onRefused("api.example.com", "limit");
  stats.onRefused("api.example.com", "limiter_unavailable");
  stats.onUpstreamError("api.example.com", "connection_refused");
  stats.onClientError(400);
  stats.onClientOpen();
  stats.onBytes(10, 2000);
  stats.onConnectDuration(3);
  stats.onRedisCall(0.7);
  stats.onPause(429);
  stats.onConfigReload("ok");
  stats.onIdleCollection();
  const exp = await scrape(source);

  const expected: Record<string, string> = {
    dprl_upstream_connections: "gauge",
    dprl_upstream_connections_idle: "gauge",
    dprl_fleet_upstream_connections: "gauge",
    dprl_host_limit: "gauge",
    dprl_connections_admitted_total: "counter",
    dprl_connections_refused_total: "counter",
    dprl_upstream_errors_total: "counter",
    dprl_requests_total: "counter",
    dprl_client_errors_total: "counter",
    dprl_client_connections: "gauge",
    dprl_bytes_relayed_total: "counter",
    dprl_connect_duration_seconds: "histogram",
    dprl_redis_up: "gauge",
    dprl_redis_call_duration_seconds: "histogram",
    dprl_build_info: "gauge",
    dprl_upstream_pauses_total: "counter",
    dprl_config_reloads_total: "counter",
    dprl_idle_collections_total: "counter",
  };
  for (const [name, type] of Object.entries(expected)) {
    assert.equal(exp.types.get(name), type, name);
    assert.ok(exp.helps.get(name), `HELP of ${name}`);
  }
  assert.equal(value(exp, "dprl_idle_collections_total"), 1);
  const host = { host: "api.example.com" };
  assert.equal(value(exp, "dprl_upstream_connections", host), 3);
  assert.equal(value(exp, "dprl_upstream_connections_idle", host), 1);
  assert.equal(value(exp, "dprl_fleet_upstream_connections", host), 7);
  assert.equal(value(exp, "dprl_host_limit", host), 3);
  assert.equal(value(exp, "dprl_connections_admitted_total", host), 1);
  assert.equal(value(exp, "dprl_connections_refused_total", { ...host, reason: "limit" }), 1);
  assert.equal(
    value(exp, "dprl_connections_refused_total", { ...host, reason: "limiter_unavailable" }),
    1,
  );
  assert.equal(
    value(exp, "dprl_upstream_errors_total", { ...host, error: "connection_refused" }),
    1,
  );
  assert.equal(value(exp, "dprl_requests_total", { kind: "http" }), 2);
  assert.equal(value(exp, "dprl_requests_total", { kind: "connect" }), 1);
  assert.equal(value(exp, "dprl_requests_total", { kind: "upgrade" }), 0);
  assert.equal(value(exp, "dprl_client_errors_total", { status: "400" }), 1);
  assert.equal(value(exp, "dprl_client_connections"), 1);
  assert.equal(value(exp, "dprl_bytes_relayed_total", { direction: "upstream" }), 10);
  assert.equal(value(exp, "dprl_bytes_relayed_total", { direction: "downstream" }), 2000);
  assert.equal(value(exp, "dprl_redis_up"), 1);
  assert.equal(value(exp, "dprl_build_info", { version: "0.0.0-test" }), 1);
  assert.equal(value(exp, "dprl_connect_duration_seconds_count"), 1);
  assert.equal(value(exp, "dprl_connect_duration_seconds_sum"), 0.003);
  assert.equal(value(exp, "dprl_connect_duration_seconds_bucket", { le: "0.0025" }), 0);
  assert.equal(value(exp, "dprl_connect_duration_seconds_bucket", { le: "0.005" }), 1);
  assert.equal(value(exp, "dprl_redis_call_duration_seconds_bucket", { le: "0.001" }), 1);
  assert.equal(value(exp, "dprl_redis_call_duration_seconds_bucket", { le: "0.0005" }), 0);
});

Deno.test("metrics in memory mode have no Redis or fleet series", async () => {
  const source = new TableAdminSource();
  source.setPool("a.example", 1);
  const exp = await scrape(source);
  assert.equal(find(exp, "dprl_redis_up").length, 0);
  assert.equal(find(exp, "dprl_fleet_upstream_connections").length, 0);
  assert.equal(exp.types.get("dprl_redis_call_duration_seconds"), undefined);
  assert.equal(value(exp, "dprl_host_limit", { host: "a.example" }), 0, "unlimited is 0");
});

Deno.test("metrics escape backslash, quote and line feed in label values", async () => {
  const source = new TableAdminSource();
  const weird = 'we"ird\\host\nname';
  source.stats.onAdmitted(weird);
  source.stats.onUpstreamError(weird, 'to"ken');
  const res = await createAdminHandler(source)(new Request("http://admin.test/metrics"));
  const text = await res.text();
  assert.ok(text.includes('host="we\\"ird\\\\host\\nname"'), text);
  const exp = parseExposition(text);
  assert.equal(value(exp, "dprl_connections_admitted_total", { host: weird }), 1);
  assert.equal(value(exp, "dprl_upstream_errors_total", { host: weird, error: 'to"ken' }), 1);
  assert.equal(escapeLabel("plain"), "plain");
});

Deno.test("histogram buckets are cumulative and end with +Inf equal to the count", async () => {
  const source = new TableAdminSource();
  for (const ms of [0.5, 0.5, 4, 30, 200, 20_000]) source.stats.onConnectDuration(ms);
  const exp = await scrape(source);
  const buckets = find(exp, "dprl_connect_duration_seconds_bucket");
  const les = buckets.map((b) => b.labels.le);
  assert.equal(les.at(-1), "+Inf");
  assert.deepEqual(
    les.slice(0, -1).map(Number),
    [...les.slice(0, -1).map(Number)].sort((a, b) => a - b),
  );
  for (let i = 1; i < buckets.length; i++) {
    assert.ok(buckets[i].value >= buckets[i - 1].value, `cumulative at ${les[i]}`);
  }
  assert.equal(value(exp, "dprl_connect_duration_seconds_bucket", { le: "0.001" }), 2);
  assert.equal(value(exp, "dprl_connect_duration_seconds_bucket", { le: "0.005" }), 3);
  assert.equal(value(exp, "dprl_connect_duration_seconds_bucket", { le: "10" }), 5);
  assert.equal(value(exp, "dprl_connect_duration_seconds_bucket", { le: "+Inf" }), 6);
  assert.equal(value(exp, "dprl_connect_duration_seconds_count"), 6);
});

Deno.test("a value on a bucket bound counts in that bucket; NaN and negatives are ignored", () => {
  const h = new Histogram([1, 2]);
  h.observe(1);
  h.observe(2);
  h.observe(2.5);
  h.observe(NaN);
  h.observe(-1);
  h.observe(Infinity);
  assert.deepEqual(h.snapshot(), { cumulative: [1, 2, 3], sum: 5.5, count: 3 });
});

Deno.test("per-host series are capped at the busiest hosts and the rest fold into _other", async () => {
  const source = new TableAdminSource({ defaultLimit: 10 });
  for (let i = 0; i < 510; i++) {
    const host = `h${i}.example`;
    source.setPool(host, i % 7, i % 2);
    for (let n = 0; n < i; n++) source.stats.onAdmitted(host);
    if (i < 10) source.stats.onRefused(host, "limit");
  }
  const exp = await scrape(source);
  const hosts = find(exp, "dprl_upstream_connections").map((s) => s.labels.host);
  assert.equal(hosts.length, 501);
  assert.ok(hosts.includes("_other"));
  // The ten least busy (h0..h9) are folded.
  for (let i = 0; i < 10; i++) assert.ok(!hosts.includes(`h${i}.example`), `h${i} folded`);
  assert.ok(hosts.includes("h509.example"));
  let open = 0, idle = 0, admitted = 0;
  for (let i = 0; i < 10; i++) {
    open += i % 7;
    idle += i % 2;
    admitted += i;
  }
  const other = { host: "_other" };
  assert.equal(value(exp, "dprl_upstream_connections", other), open);
  assert.equal(value(exp, "dprl_upstream_connections_idle", other), idle);
  assert.equal(value(exp, "dprl_connections_admitted_total", other), admitted);
  assert.equal(value(exp, "dprl_connections_refused_total", { ...other, reason: "limit" }), 10);
  assert.equal(find(exp, "dprl_host_limit", other).length, 0, "no limit for _other");

  const capped = await scrape(source, 2);
  assert.deepEqual(
    find(capped, "dprl_upstream_connections").map((s) => s.labels.host),
    ["h509.example", "h508.example", "_other"],
  );
});

Deno.test("records of hosts not in use fold into _other beyond the idle maximum, least active first, totals whole", () => {
  const stats = new ProxyStats({ idleHosts: 2 });
  for (let i = 0; i < 6; i++) {
    for (let n = 0; n <= i; n++) stats.onAdmitted(`h${i}`);
    stats.onUpstreamError(`h${i}`, "connection_refused");
  }
  stats.onRefused("h0", "limit");
  stats.forgetIdle((key) => key === "h1");
  // h1 is in use; of the idle ones the two most active (h5, h4) stay.
  assert.deepEqual([...stats.hosts().keys()].sort(), ["_other", "h1", "h4", "h5"]);
  const other = stats.host("_other");
  assert.equal(other.admitted, 1 + 3 + 4);
  assert.equal(other.refused.limit, 1);
  assert.equal(other.upstreamErrors.get("connection_refused"), 3);
  let admitted = 0;
  for (const record of stats.hosts().values()) admitted += record.admitted;
  assert.equal(admitted, 1 + 2 + 3 + 4 + 5 + 6);
  stats.forgetIdle(() => false);
  assert.deepEqual([...stats.hosts().keys()].sort(), ["_other", "h4", "h5"]);
});

Deno.test("statistics beyond the tracked maximum share the _other record", () => {
  const stats = new ProxyStats({ maxTrackedHosts: 2 });
  stats.onAdmitted("a");
  stats.onAdmitted("b");
  stats.onAdmitted("c");
  stats.onAdmitted("d");
  assert.deepEqual([...stats.hosts().keys()], ["a", "b", "_other"]);
  assert.equal(stats.host("c"), stats.host("_other"));
  assert.equal(stats.host("_other").admitted, 2);
});
