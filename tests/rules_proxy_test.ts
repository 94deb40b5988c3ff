// Limit rules through real proxies: precedence of the layers and of the
// patterns, group caps, reloads under load, and one table for a fleet on a
// real redis-server.
import assert from "node:assert/strict";
import { ProxyRateLimiter, type ProxyRateLimiterOptions } from "../mod.ts";
import { loadConfigFile } from "../lib/config/config_file.ts";
import { RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { orFalse, waitFor } from "./_helpers/raw.ts";
import { startEchoUpstream } from "./_helpers/upstream.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

/** Opens a CONNECT tunnel through `proxy` to `authority`; the status of the reply. */
async function tunnel(proxy: ProxyRateLimiter, authority: string): Promise<[number, Deno.Conn]> {
  const url = proxy.proxyUrl!;
  const conn = await Deno.connect({ hostname: url.hostname, port: Number(url.port) });
  const timer = setTimeout(() => closeQuietly(conn), 5_000);
  try {
    await conn.write(enc.encode(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`));
    let head = "";
    const buf = new Uint8Array(4096);
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      if (n === null) break;
      head += dec.decode(buf.subarray(0, n));
    }
    return [Number(head.split(" ")[1]), conn];
  } finally {
    clearTimeout(timer);
  }
}

/** Opens tunnels one by one until one is refused; returns the open ones. */
async function fill(proxy: ProxyRateLimiter, authority: string, max = 20): Promise<Deno.Conn[]> {
  const open: Deno.Conn[] = [];
  for (let i = 0; i < max; i++) {
    const [status, conn] = await tunnel(proxy, authority);
    if (status !== 200) {
      closeQuietly(conn);
      return open;
    }
    open.push(conn);
  }
  return open;
}

/** Whether one more tunnel to `authority` is admitted (it is closed at once). */
async function admits(proxy: ProxyRateLimiter, authority: string): Promise<boolean> {
  const [status, conn] = await tunnel(proxy, authority);
  closeQuietly(conn);
  return status === 200;
}

async function startProxy(options: ProxyRateLimiterOptions): Promise<ProxyRateLimiter> {
  const proxy = new ProxyRateLimiter({ port: 0, hostname: "127.0.0.1", ...options });
  await proxy.start();
  return proxy;
}

/** The admin API with a token: in distributed mode a change needs one. */
async function api(proxy: ProxyRateLimiter, path: string, init: RequestInit = {}) {
  const token = "rules-test-token";
  const headers = new Headers(init.headers);
  headers.set("authorization", `Bearer ${token}`);
  const res = await proxy.adminHandler({ token })(
    new Request(`http://admin${path}`, { ...init, headers }),
  );
  return { status: res.status, body: await res.text() };
}

Deno.test("the rules through a real proxy: host:port, then host, then group, then default; runtime overrides on top", async () => {
  await using a = startEchoUpstream();
  await using b = startEchoUpstream();
  await using c = startEchoUpstream();
  const proxy = await startProxy({
    rules: {
      default: 2,
      hosts: {
        "127.0.0.1": 3,
        [`127.0.0.1:${b.port}`]: 1,
        "*.example.org": 4,
        "localhost": 9,
      },
      groups: [{ name: "pair", match: [`localhost:${a.port}`, `localhost:${b.port}`], limit: 3 }],
    },
  });
  const held: Deno.Conn[] = [];
  try {
    const count = async (authority: string) => {
      const open = await fill(proxy, authority);
      held.push(...open);
      return open.length;
    };
    assert.equal(await count(`127.0.0.1:${a.port}`), 3, "the exact host");
    assert.equal(await count(`127.0.0.1:${b.port}`), 1, "the exact host:port over the host");
    // localhost: its own limit is 9, the group caps at 3.
    assert.equal(await count(`localhost:${a.port}`), 3, "a member up to the group's cap");
    assert.equal(await count(`localhost:${b.port}`), 0, "the other member: the group is full");
    assert.equal(await count(`localhost:${c.port}`), 9, "outside the group: the host's own limit");
    // A wildcard (names here resolve to nothing, so ask the proxy's admin API).
    const wild = JSON.parse((await api(proxy, "/api/hosts/a.b.example.org")).body);
    assert.equal(wild.limit, 4);
    const other = JSON.parse((await api(proxy, "/api/hosts/example.org")).body);
    assert.equal(other.limit, 2, "the default: *.example.org does not match example.org");
    // A runtime change wins over the file, rule by rule.
    proxy.setHostLimit("127.0.0.1", 4);
    assert.equal(
      await count(`127.0.0.1:${a.port}`),
      1,
      "a runtime override over the rules: one more",
    );
    assert.equal(await admits(proxy, `127.0.0.1:${b.port}`), false, "the port rule still wins");
  } finally {
    for (const conn of held) closeQuietly(conn);
    await proxy.stop({ graceMs: 500 });
  }
});

Deno.test("setRules: an invalid rule changes nothing; a group applies at once", async () => {
  await using a = startEchoUpstream();
  const proxy = await startProxy({ rules: { default: 5 } });
  const held: Deno.Conn[] = [];
  try {
    assert.throws(
      () => proxy.setRules({ hosts: { "api.example.com": -1 } }),
      /hosts\.api\.example\.com must be an integer >= 0/,
    );
    assert.deepEqual(proxy.rules, { default: 5 });
    proxy.setRules({ default: 5, groups: [{ name: "g", match: ["127.0.0.1"], limit: 2 }] });
    held.push(...await fill(proxy, `127.0.0.1:${a.port}`));
    assert.equal(held.length, 2);
  } finally {
    for (const conn of held) closeQuietly(conn);
    await proxy.stop({ graceMs: 500 });
  }
});

Deno.test("a reload under load drops no tunnel; lowering admits nothing until under, raising admits at once; counts end at 0", async () => {
  await using up = startEchoUpstream();
  const dir = await Deno.makeTempDir({ prefix: "dprl-rules-" });
  const file = `${dir}/dprl.yaml`;
  const target = `127.0.0.1:${up.port}`;
  await Deno.writeTextFile(file, `hosts:\n  "${target}": 6\n`);
  const proxy = await startProxy({
    rules: (await loadConfigFile(file, { flags: {} })).rules,
    loadRules: async () => (await loadConfigFile(file, { flags: {} })).rules,
  });
  const held = await fill(proxy, target);
  try {
    assert.equal(held.length, 6);
    await Deno.writeTextFile(file, `hosts:\n  "${target}": 3\n`);
    const lowered = await proxy.reload();
    assert.equal(lowered.ok, true);
    assert.equal(await proxy.activeConnectionsForHost(target), 6, "nothing dropped");
    // Every tunnel still relays.
    for (const conn of held) {
      await conn.write(enc.encode("ping"));
      const buf = new Uint8Array(4);
      assert.equal(await conn.read(buf), 4);
    }
    assert.equal(await admits(proxy, target), false, "6 open, limit 3: refused");
    for (const conn of held.splice(0, 3)) closeQuietly(conn);
    await waitFor(
      orFalse(async () => await proxy.activeConnectionsForHost(target) === 3),
      "3 open",
      5_000,
    );
    assert.equal(await admits(proxy, target), false, "3 open, limit 3: still refused");
    closeQuietly(held.shift()!);
    await waitFor(
      orFalse(async () => await proxy.activeConnectionsForHost(target) === 2),
      "2 open",
      5_000,
    );
    assert.equal(await admits(proxy, target), true, "under the limit again");
    await Deno.writeTextFile(file, `hosts:\n  "${target}": 8\n`);
    assert.equal((await proxy.reload()).ok, true);
    const more = await fill(proxy, target);
    assert.equal(more.length, 6, "raised: admitted at once up to 8");
    held.push(...more);
    // A broken file keeps the table and counts an error.
    await Deno.writeTextFile(file, `hosts:\n  "${target}": -1\n`);
    const broken = await proxy.reload();
    assert.equal(broken.ok, false);
    assert.match(broken.ok ? "" : broken.error, /dprl\.yaml:2:\d+: hosts\..* must be an integer/);
    assert.equal(await admits(proxy, target), false, "the old limit of 8 holds");
    const metrics = (await api(proxy, "/metrics")).body;
    assert.match(metrics, /dprl_config_reloads_total\{result="ok"\} 2/);
    assert.match(metrics, /dprl_config_reloads_total\{result="error"\} 1/);
    const viaApi = await api(proxy, "/api/reload", { method: "POST" });
    assert.equal(viaApi.status, 422, viaApi.body);
    assert.match(viaApi.body, /old rules stay/);
  } finally {
    for (const conn of held) closeQuietly(conn);
    await waitFor(
      orFalse(async () => await proxy.activeConnectionsForHost(target) === 0),
      "0 open",
      5_000,
    );
    await proxy.stop({ graceMs: 500 });
    await Deno.remove(dir, { recursive: true });
  }
});

async function startFleet(redis: string, options: ProxyRateLimiterOptions) {
  const fleet: ProxyRateLimiter[] = [];
  for (let i = 0; i < 3; i++) {
    fleet.push(await startProxy({ redis, lease: 3000, redisPrefix: "rules", ...options }));
  }
  return fleet;
}

await redisTest("a group cap is held exactly by three proxies on one Redis", "server", async () => {
  await using redis = await RedisServer.start();
  await using a = startEchoUpstream();
  await using b = startEchoUpstream();
  const members = [`127.0.0.1:${a.port}`, `localhost:${b.port}`];
  const fleet = await startFleet(redis.url, {
    rules: { default: 10, groups: [{ name: "shared", match: members, limit: 5 }] },
  });
  const held: Deno.Conn[] = [];
  try {
    // Each proxy asks 4 times for each member, all at once: 24 asks, a cap of 5.
    const asks = fleet.flatMap((p) => members.flatMap((m) => [0, 1, 2, 3].map(() => tunnel(p, m))));
    const results = await Promise.all(asks);
    for (const [status, conn] of results) {
      if (status === 200) held.push(conn);
      else closeQuietly(conn);
    }
    assert.equal(held.length, 5, `admitted ${held.length}`);
    assert.equal(a.open + b.open, 5);
    closeQuietly(held.pop()!);
    await waitFor(orFalse(() => a.open + b.open === 4), "4 open upstream", 5_000);
    let admitted = 0;
    for (const p of fleet) {
      for (const m of members) {
        const [status, conn] = await tunnel(p, m);
        if (status === 200) {
          admitted++;
          held.push(conn);
        } else closeQuietly(conn);
      }
    }
    assert.equal(admitted, 1, "one freed slot, one admission across the fleet");
  } finally {
    for (const conn of held) closeQuietly(conn);
    await Promise.all(fleet.map((p) => p.stop({ graceMs: 500 })));
  }
});

await redisTest(
  "a runtime change on one proxy is enforced by the other two within a second",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = startEchoUpstream();
    const target = `127.0.0.1:${up.port}`;
    const fleet = await startFleet(redis.url, { rules: { hosts: { [target]: 10 } } });
    const held: Deno.Conn[] = [];
    try {
      const started = performance.now();
      const put = await api(fleet[0], `/api/limits/${encodeURIComponent(target)}`, {
        method: "PUT",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ limit: 2 }),
      });
      assert.equal(put.status, 200, put.body);
      const limitOf = async (p: ProxyRateLimiter) =>
        JSON.parse((await api(p, `/api/hosts/${encodeURIComponent(target)}`)).body).limit;
      await waitFor(
        orFalse(async () => (await limitOf(fleet[1])) === 2 && (await limitOf(fleet[2])) === 2),
        "the other proxies apply the change",
        1_000,
      );
      const ms = performance.now() - started;
      console.log(`runtime change applied by the fleet in ${ms.toFixed(0)} ms`);
      held.push(...await fill(fleet[1], target));
      assert.equal(held.length, 2, "the second proxy enforces 2");
      assert.equal(await admits(fleet[2], target), false, "and so does the third");
      assert.match(await redis.cli("HGETALL", "rules:limits"), new RegExp(`${target}\\s+2`));
      // A notice lost (a change written without one): the version check finds it.
      const quiet = performance.now();
      await redis.cli("HSET", "rules:limits", target, "3");
      await redis.cli("INCR", "rules:limits:v");
      await waitFor(
        orFalse(async () => (await limitOf(fleet[1])) === 3 && (await limitOf(fleet[2])) === 3),
        "the version check applies an unannounced change",
        1_000,
      );
      console.log(`unannounced change applied in ${(performance.now() - quiet).toFixed(0)} ms`);
      // A change through the module API, removed again: the file's 10 is back.
      await fleet[2].setFleetLimits({ hosts: { [target]: null } });
      await waitFor(
        orFalse(async () => (await limitOf(fleet[0])) === 10),
        "the file's limit back",
        1_000,
      );
    } finally {
      for (const conn of held) closeQuietly(conn);
      await Promise.all(fleet.map((p) => p.stop({ graceMs: 500 })));
    }
  },
);

Deno.test("with Redis unreachable the proxy still starts, and a fleet-wide change is refused, not hung", async () => {
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (closed.addr as Deno.NetAddr).port;
  closed.close();
  const proxy = await startProxy({
    redis: `redis://127.0.0.1:${port}`,
    failureMode: "open",
    redisTimeout: 300,
    rules: { default: 4 },
  });
  try {
    const started = performance.now();
    const put = await api(proxy, "/api/limits/api.example.com", {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ limit: 2 }),
    });
    assert.equal(put.status, 503, put.body);
    assert.match(put.body, /The limit was not changed/);
    assert.ok(performance.now() - started < 5_000);
    assert.equal(JSON.parse((await api(proxy, "/api/hosts/api.example.com")).body).limit, 4);
  } finally {
    await proxy.stop({ graceMs: 100 });
  }
});

await redisTest(
  "reloads during traffic through two proxies on Redis drop no tunnel and leave no count",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = startEchoUpstream();
    const target = `127.0.0.1:${up.port}`;
    const variants = [
      { hosts: { [target]: 5 } },
      { hosts: { [target]: 8 }, groups: [{ name: "g", match: [target], limit: 6 }] },
      { hosts: { [target]: 3 } },
    ];
    let current = 0;
    const fleet: ProxyRateLimiter[] = [];
    for (let i = 0; i < 2; i++) {
      fleet.push(
        await startProxy({
          redis: redis.url,
          redisPrefix: "load",
          lease: 3000,
          rules: variants[0],
          loadRules: () => variants[current],
        }),
      );
    }
    let admitted = 0;
    let broken = 0;
    try {
      const client = async (n: number) => {
        for (let i = 0; i < 15; i++) {
          const [status, conn] = await tunnel(fleet[(n + i) % 2], target);
          try {
            if (status !== 200) continue;
            admitted++;
            // Held across reloads: it must keep relaying.
            for (let k = 0; k < 3; k++) {
              await conn.write(enc.encode("ping"));
              const buf = new Uint8Array(4);
              if (await conn.read(buf) !== 4) broken++;
              await new Promise((r) => setTimeout(r, 5));
            }
          } catch {
            broken++;
          } finally {
            closeQuietly(conn);
          }
        }
      };
      const reloads = (async () => {
        for (let i = 1; i <= 12; i++) {
          current = i % variants.length;
          for (const p of fleet) assert.equal((await p.reload()).ok, true);
          await new Promise((r) => setTimeout(r, 15));
        }
      })();
      await Promise.all([...Array.from({ length: 12 }, (_, n) => client(n)), reloads]);
      assert.ok(admitted > 0);
      assert.equal(broken, 0, "no admitted tunnel was dropped by a reload");
      for (const p of fleet) {
        await waitFor(
          orFalse(async () => await p.activeConnectionsForHost(target) === 0),
          "0 open",
          5_000,
        );
      }
      await waitFor(orFalse(() => up.open === 0), "the upstream sees no connection", 5_000);
    } finally {
      await Promise.all(fleet.map((p) => p.stop({ graceMs: 500 })));
    }
    const left = (await redis.cli("KEYS", "load:*:n")).trim();
    assert.equal(left, "", `no count left in Redis: ${left}`);
  },
);
