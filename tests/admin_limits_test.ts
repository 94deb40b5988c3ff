// GET /api/limits shows every limit in effect with its source, the same in
// memory and distributed mode; changes through the admin API write the
// runtime table in both; and the fleet's runtime table outlives a Redis that
// restarts empty. Real proxies, a real redis-server.
import assert from "node:assert/strict";
import { captureLogs, messageText } from "./_helpers/logs.ts";
import type { ProxyRateLimiterOptions } from "../mod.ts";
import { RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { startProxy, type TestProxy } from "./_helpers/proxy.ts";
import { waitFor } from "./_helpers/raw.ts";

const TOKEN = "limits-test-token";

const records = await captureLogs();

/** Calls the admin API of `tp` with the token; the answer as JSON. */
async function api(
  tp: TestProxy,
  path: string,
  method = "GET",
  body?: unknown,
  // deno-lint-ignore no-explicit-any
): Promise<any> {
  const res = await fetch(new URL(path, tp.proxy.adminUrl!), {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  assert.equal(res.status, 200, JSON.stringify(json));
  return json;
}

const LAYERED: ProxyRateLimiterOptions = {
  flagRules: { default: 4, hosts: { "a.test": 1, "b.test": 1 } },
  rules: {
    hosts: { "b.test": 2, "c.test": 3 },
    groups: [{ name: "g", match: ["*.g.test"], limit: 5 }],
  },
  admin: { port: 0, token: TOKEN },
};

/** Changes and reads the table through `writer`; `reader` shows the same. */
async function checkTable(writer: TestProxy, reader: TestProxy): Promise<void> {
  await api(writer, "/api/limits/a.test", "PUT", { limit: 6 });
  await api(writer, "/api/limits/d.test", "PUT", { limit: 7 });
  const expected = {
    default: 4,
    hosts: { "a.test": 6, "b.test": 2, "c.test": 3, "d.test": 7 },
    groups: { g: 5 },
    sources: {
      default: "flag",
      hosts: { "a.test": "runtime", "b.test": "file", "c.test": "file", "d.test": "runtime" },
      groups: { g: "file" },
    },
    layers: {
      flag: { default: 4, hosts: { "a.test": 1, "b.test": 1 } },
      file: {
        hosts: { "b.test": 2, "c.test": 3 },
        groups: [{ name: "g", match: ["*.g.test"], limit: 5 }],
      },
      runtime: { hosts: { "a.test": 6, "d.test": 7 } },
      override: {},
    },
  };
  let seen: unknown;
  await waitFor(async () => {
    seen = await api(reader, "/api/limits");
    try {
      assert.deepEqual(seen, expected);
      return true;
    } catch {
      return false;
    }
  }, () => `the table ${JSON.stringify(expected)}, have ${JSON.stringify(seen)}`);

  // Removing the runtime limit shows the flag's again; a runtime default wins over the flag.
  assert.deepEqual(await api(writer, "/api/limits/a.test", "DELETE"), { host: "a.test", limit: 1 });
  const after = await api(writer, "/api/limits", "PUT", { default: 8 });
  assert.deepEqual([after.default, after.sources.default], [8, "runtime"]);
  assert.deepEqual([after.hosts["a.test"], after.sources.hosts["a.test"]], [1, "flag"]);
  assert.deepEqual(after.layers.runtime, { default: 8, hosts: { "d.test": 7 } });
}

Deno.test("in memory mode GET /api/limits shows every limit in effect with its source", async () => {
  await using tp = await startProxy(LAYERED);
  await checkTable(tp, tp);
  // The module API's overrides are a layer of their own, above the runtime table.
  tp.proxy.setHostLimit("c.test", 9);
  const table = await api(tp, "/api/limits");
  assert.deepEqual([table.hosts["c.test"], table.sources.hosts["c.test"]], [9, "override"]);
  // A change through the admin API applies here: the override of the same rule gives way.
  const put = await api(tp, "/api/limits/c.test", "PUT", { limit: 2 });
  assert.deepEqual(put, { host: "c.test", limit: 2 });
  const after = await api(tp, "/api/limits");
  assert.deepEqual([after.sources.hosts["c.test"], after.layers.override], ["runtime", {}]);
  // So does the module API's default: a default set through the admin API replaces it.
  tp.proxy.setDefaultMaxConnectionsPerHost(9);
  const overridden = await api(tp, "/api/limits");
  assert.deepEqual([overridden.default, overridden.sources.default], [9, "override"]);
  const changed = await api(tp, "/api/limits", "PUT", { default: 5 });
  assert.deepEqual([changed.default, changed.sources.default], [5, "runtime"]);
  assert.deepEqual(changed.layers.override, {});
});

await redisTest(
  "in distributed mode GET /api/limits shows the same table, with the fleet's runtime layer, on every worker",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    const options = { ...LAYERED, redis: redis.url, redisTimeout: 500 };
    await using a = await startProxy(options);
    await using b = await startProxy(options);
    await checkTable(a, b);
  },
);

await redisTest(
  "the fleet's runtime table is written back by its workers, with a WARN line, when Redis restarts empty",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    const options = {
      redis: redis.url,
      lease: 1500,
      redisTimeout: 300,
      rules: { default: 10 },
      admin: { port: 0, token: TOKEN },
    };
    await using a = await startProxy(options);
    await using b = await startProxy(options);
    await api(a, "/api/limits", "PUT", { default: 3 });
    await api(a, "/api/limits/x.test", "PUT", { limit: 7 });
    const applied = async (tp: TestProxy) => {
      const t = await api(tp, "/api/limits");
      return t.default === 3 && t.hosts["x.test"] === 7;
    };
    await waitFor(() => applied(b), "B applies the fleet's table");

    const before = records.length;
    await redis.restart();
    let stored = "";
    await waitFor(async () => {
      stored = await redis.cli("HGETALL", "dprl:limits").catch(() => "");
      return /^\*\n3$/m.test(stored) && /^x\.test\n7$/m.test(stored);
    }, () => `the table back in Redis, have ${JSON.stringify(stored)}`);
    await waitFor(
      async () => (await applied(a)) && (await applied(b)),
      "both proxies keep the table",
    );
    const since = records.slice(before);
    const warned = since.filter((r) =>
      r.level === "warning" && messageText(r).includes("Redis lost the fleet's runtime limit table")
    );
    assert.ok(warned.length >= 1, since.map(messageText).join("\n"));
    assert.match(messageText(warned[0]), /\* ?=3|x\.test=7/);
    const dropped = since.filter((r) => /Limit rule .* (removed|changed)/.test(messageText(r)));
    assert.deepEqual(dropped.map(messageText), [], "no proxy fell back to its file in between");
    // The version moved on past the one the proxies held (2), so no other proxy
    // takes the written-back table for another loss: a later removal sticks.
    assert.ok(Number(await redis.cli("GET", "dprl:limits:v")) >= 3);
    await api(b, "/api/limits/x.test", "DELETE");
    await waitFor(async () => {
      const tables = [await api(a, "/api/limits"), await api(b, "/api/limits")];
      return tables.every((t) => t.hosts["x.test"] === undefined && t.default === 3);
    }, "both proxies drop x.test");
    assert.doesNotMatch(await redis.cli("HGETALL", "dprl:limits"), /x\.test/);
  },
);

await redisTest(
  "in distributed mode PUT /api/limits/{host} with a rate holds every worker of the fleet to it",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () => new Response("ok\n"),
    );
    await using _up = { [Symbol.asyncDispose]: () => server.shutdown() };
    const host = `127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
    const options = {
      redis: redis.url,
      rejectStatus: 429,
      queueTimeout: 0,
      admin: { port: 0, token: TOKEN },
    };
    await using a = await startProxy(options);
    await using b = await startProxy(options);
    const set = await api(a, `/api/limits/${host}`, "PUT", { rate: "1/m" });
    assert.equal(set.rate, "1/m");
    // The fleet's table in Redis holds the rule as JSON; B applies it.
    assert.equal((await redis.cli("HGET", "dprl:limits", host)).trim(), `{"rate":"1/m"}`);
    await waitFor(async () => {
      const t = await api(b, "/api/limits");
      return JSON.stringify(t.layers?.runtime?.hosts?.[host]) === '{"rate":"1/m"}';
    }, "B applies the rule");
    const get = async (tp: TestProxy) => {
      const client = Deno.createHttpClient({ proxy: { url: tp.url } });
      try {
        const res = await fetch(`http://${host}/`, { client });
        await res.body?.cancel();
        return res.status;
      } finally {
        client.close();
      }
    };
    assert.equal(await get(a), 200);
    assert.equal(await get(b), 429, "the fleet's rate: one a minute");
  },
);
