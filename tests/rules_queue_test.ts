// Queue settings in the limit rules: lookups and their precedence (host rule,
// then group, then the process), validation naming the rule, the canonical
// form, layers and diffs, and through real proxies with real upstreams and
// clients: a rule's queue-timeout and queue-max, and a reload that changes them.
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";
import { best } from "./_helpers/naive_rules.ts";
import { hostKey } from "../lib/limit/host_key.ts";
import { LimitTable } from "../lib/limit/limit_table.ts";
import { diffRules } from "../lib/limit/rules/diff.ts";
import { RuleTable } from "../lib/limit/rules/rule_table.ts";
import {
  canonicalRules,
  layerRules,
  type LimitRules,
  RulesError,
  validateRules,
} from "../lib/limit/rules/rules.ts";
import { hostLimits } from "../lib/limit/rules/rule_limits.ts";
import { ConfigError, loadConfigFile, parseConfig } from "../lib/config/config_file.ts";
import type { ProxyRateLimiter } from "../mod.ts";
import { BufferedConn, header, readResponse, request, text, waitFor } from "./_helpers/raw.ts";
import { startProxy } from "./_helpers/proxy.ts";
import { RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { FIXED_BODY, startUpstream, type Upstream } from "./_helpers/upstream.ts";

// Lookups.

const RULES: LimitRules = {
  default: 25,
  hosts: {
    "slow.example.com": { limit: 2, "queue-timeout": "30s", "queue-max": 50 },
    "*.example.org": { limit: 10, "queue-timeout": "5s" },
    "exact.example.org": 3,
    "quick.example.org": { limit: 4, "queue-timeout": 0 },
    "api.example.com": 5,
    "cdn.example.net:8443": { limit: 1, "queue-max": 7 },
    "s3.amazonaws.com": { limit: 9, "queue-max": 3 },
  },
  groups: [
    {
      name: "storage",
      match: ["*.s3.amazonaws.com", "s3.amazonaws.com"],
      limit: 100,
      "queue-timeout": "1m",
      "queue-max": 20,
    },
    { name: "org", match: ["*.example.org"], limit: 50, "queue-timeout": 2.5, "queue-max": 9 },
    { name: "plain", match: ["api.example.com"], limit: 6 },
  ],
};

Deno.test("rule table queue settings: the host rule, then the group, then none", () => {
  const t = new RuleTable(RULES);
  const cases: [string, number | undefined, number | undefined, string][] = [
    ["slow.example.com", 30_000, 50, "the host rule sets both"],
    ["slow.example.com:8080", 30_000, 50, "any port of the host"],
    ["a.example.org", 5_000, 9, "a wildcard host rule over the group; the group's queue-max"],
    ["exact.example.org", 5_000, 9, "a plain limit keeps the wildcard rule's queue-timeout"],
    ["quick.example.org", 0, 9, "a host rule's 0 wins over the wildcard and the group"],
    ["bucket.s3.amazonaws.com", 60_000, 20, "the group alone"],
    ["s3.amazonaws.com", 60_000, 3, "the group's queue-timeout, the host rule's queue-max"],
    ["cdn.example.net:8443", undefined, 7, "host:port"],
    ["cdn.example.net", undefined, undefined, "the host:port rule is not for other ports"],
    ["api.example.com", undefined, undefined, "a group without queue settings"],
    ["other.example", undefined, undefined, "the default"],
  ];
  for (const [key, queueTimeout, queueMax, why] of cases) {
    const match = t.lookup(key);
    assert.equal(match.queueTimeout, queueTimeout, `${key}: ${why}`);
    assert.equal(match.queueMax, queueMax, `${key}: ${why}`);
    // None set: left out, so the process's settings apply.
    assert.equal("queueTimeout" in match, queueTimeout !== undefined, key);
    assert.equal("queueMax" in match, queueMax !== undefined, key);
  }
  assert.deepEqual(t.lookup("slow.example.com"), {
    limit: 2,
    group: undefined,
    queueTimeout: 30_000,
    queueMax: 50,
  });
  assert.deepEqual(t.lookup("b.s3.amazonaws.com").group, { name: "storage", limit: 100 });
  assert.equal(t.lookup("a.example.org").limit, 10, "limits as before");
  assert.equal(t.lookup("exact.example.org").limit, 3);
});

Deno.test("limit table: runtime overrides change the limit and keep the rules' queue settings", () => {
  const limits = new LimitTable();
  limits.rules = new RuleTable(RULES);
  limits.set("slow.example.com", 7);
  assert.deepEqual(limits.lookup("slow.example.com"), {
    limit: 7,
    group: undefined,
    queueTimeout: 30_000,
    queueMax: 50,
  });
  limits.delete("slow.example.com");
  assert.equal(limits.limitFor("slow.example.com"), 2, "the rule's limit back");
  limits.defaultLimit = 4;
  assert.equal(limits.lookup("bucket.s3.amazonaws.com").queueTimeout, 60_000);
  assert.equal(limits.lookup("bucket.s3.amazonaws.com").limit, 4);
});

// Property test: each queue setting agrees with a naive scan of every rule.

const LABELS = ["a", "b", "example", "org"];
const label = fc.constantFrom(...LABELS);
const name = fc.array(label, { minLength: 1, maxLength: 3 }).map((l) => l.join("."));
const port = fc.constantFrom("", "", "8080");
const exactPattern = fc.tuple(name, port).map(([n, p]) => p ? `${n}:${p}` : n);
const pattern = fc.oneof(exactPattern, name.map((n) => `*.${n}`));
const hostKeyArb = fc.tuple(name, port).map(([n, p]) => hostKey(p ? `${n}:${p}` : n));
const queue = fc.record(
  { "queue-timeout": fc.nat(120).map((s) => `${s}s`), "queue-max": fc.nat(100) },
  { requiredKeys: [] },
);

Deno.test("rule table queue settings agree with a naive scan: host rules, then the group", () => {
  const rulesArb = fc.record({
    hosts: fc.uniqueArray(fc.tuple(pattern, fc.nat(9), queue), {
      maxLength: 12,
      selector: ([p]) => hostKey(p),
    }),
    groups: fc.uniqueArray(fc.tuple(pattern, queue), {
      maxLength: 6,
      selector: ([p]) => hostKey(p),
    }),
  });
  fc.assert(
    fc.property(rulesArb, fc.array(hostKeyArb, { maxLength: 10 }), (drawn, keys) => {
      const rules: LimitRules = {
        hosts: Object.fromEntries(drawn.hosts.map(([p, limit, q]) => [p, { limit, ...q }])),
        groups: drawn.groups.map(([p, q], i) => ({ name: `g${i}`, match: [p], limit: 1, ...q })),
      };
      const t = new RuleTable(rules);
      const seconds = (q: { "queue-timeout"?: string }) =>
        q["queue-timeout"] === undefined ? undefined : 1000 * parseInt(q["queue-timeout"]);
      const setting = <T>(read: (q: typeof drawn.hosts[0][2]) => T | undefined, key: string) => {
        const hosts = drawn.hosts.filter(([, , q]) => read(q) !== undefined)
          .map(([p, , q]): [string, T] => [hostKey(p), read(q)!]);
        const group = best(drawn.groups.map(([p, q]) => [hostKey(p), q]), key);
        return best(hosts, key) ?? (group && read(group));
      };
      const near = [...drawn.hosts, ...drawn.groups].map(([p]) => hostKey(p).replace("*.", ""))
        .flatMap((p) => [p, `x.${p}`]);
      for (const key of [...keys, ...near]) {
        const got = t.lookup(key);
        assert.equal(got.queueTimeout, setting(seconds, key), `queueTimeout of ${key}`);
        assert.equal(got.queueMax, setting((q) => q["queue-max"], key), `queueMax of ${key}`);
      }
    }),
    { numRuns: 300 },
  );
});

// Validation.

function problem(rules: unknown): RulesError {
  try {
    validateRules(rules);
  } catch (err) {
    assert.ok(err instanceof RulesError, String(err));
    return err;
  }
  assert.fail(`accepted ${JSON.stringify(rules)}`);
}

Deno.test("rules validation names the rule and its bad queue-timeout or queue-max", () => {
  const host = (rule: unknown) => ({ hosts: { "slow.example.com": rule } });
  const group = (fields: Record<string, unknown>) => ({
    groups: [{ name: "storage", match: ["*.s3.example"], limit: 1, ...fields }],
  });
  const duration = "must be a duration such as 500ms, 10s or 2m";
  const cases: [unknown, string][] = [
    [
      host({ limit: 2, "queue-timeout": "soon" }),
      `hosts.slow.example.com.queue-timeout ${duration}, got "soon"`,
    ],
    [
      host({ limit: 2, "queue-timeout": "-5s" }),
      `hosts.slow.example.com.queue-timeout ${duration}, got "-5s"`,
    ],
    [
      host({ limit: 2, "queue-timeout": -1 }),
      `hosts.slow.example.com.queue-timeout ${duration}, got -1`,
    ],
    [
      host({ limit: 2, "queue-timeout": "10 seconds" }),
      `hosts.slow.example.com.queue-timeout ${duration}, got "10 seconds"`,
    ],
    [
      host({ limit: 2, "queue-timeout": ["10s"] }),
      `hosts.slow.example.com.queue-timeout ${duration}, got a list`,
    ],
    [
      host({ limit: 2, "queue-timeout": null }),
      `hosts.slow.example.com.queue-timeout ${duration}, got nothing`,
    ],
    [
      host({ limit: 2, "queue-max": -1 }),
      "hosts.slow.example.com.queue-max must be an integer between 0 and 1000000, got -1",
    ],
    [
      host({ limit: 2, "queue-max": 1.5 }),
      "hosts.slow.example.com.queue-max must be an integer between 0 and 1000000, got 1.5",
    ],
    [
      host({ limit: 2, "queue-max": "50" }),
      'hosts.slow.example.com.queue-max must be an integer between 0 and 1000000, got "50"',
    ],
    [
      host({ limit: 2, "queue-max": 1_000_001 }),
      "hosts.slow.example.com.queue-max must be an integer between 0 and 1000000, got 1000001",
    ],
    [
      host({ limit: 2, queue_timeout: "5s" }),
      "hosts.slow.example.com.queue_timeout is not a host rule field " +
      "(limit, queue-timeout, queue-max, rate, retry-after-max, adaptive, via)",
    ],
    [host({}), "hosts.slow.example.com.limit must be an integer >= 0, got nothing"],
    [host({ limit: -2 }), "hosts.slow.example.com.limit must be an integer >= 0, got -2"],
    [host("5"), 'hosts.slow.example.com must be an integer >= 0, got "5"'],
    [
      group({ "queue-timeout": "5 s" }),
      `groups[0].queue-timeout ${duration}, got "5 s"`,
    ],
    [
      group({ "queue-max": -3 }),
      "groups[0].queue-max must be an integer between 0 and 1000000, got -3",
    ],
    [{ default: { limit: -5 } }, "default.limit must be an integer >= 0, got -5"],
    [
      { default: { rate: "fast" } },
      `default.rate must be a rate such as 10/s, 600/m or 3600/h, got "fast"`,
    ],
    [
      host({ "retry-after-max": "1 m" }),
      `hosts.slow.example.com.retry-after-max ${duration}, got "1 m"`,
    ],
  ];
  for (const [rules, expected] of cases) {
    assert.equal(problem(rules).message, expected, JSON.stringify(rules));
  }
  const err = problem(host({ limit: 2, "queue-timeout": "soon" }));
  assert.deepEqual(err.path, ["hosts", "slow.example.com", "queue-timeout"]);
  assert.equal(err.inKey, false);
  const field = problem(host({ limit: 2, queue: 1 }));
  assert.deepEqual(field.path, ["hosts", "slow.example.com", "queue"]);
  assert.equal(field.inKey, true);
});

Deno.test("config file: queue settings take the flags' duration syntax; errors give file:line:col", () => {
  const parse = (path: string, text: string) => parseConfig(text, { path, flags: {} }).rules;
  const t = new RuleTable(parse(
    "dprl.yaml",
    [
      "hosts:",
      "  a.example: { limit: 2, queue-timeout: 30s, queue-max: 50 }",
      "  b.example: { limit: 2, queue-timeout: 500ms }",
      "  c.example: { limit: 2, queue-timeout: 30 }",
      "  d.example: { limit: 2, queue-timeout: 1.5 }",
      "  e.example:",
      "    limit: 2",
      "    queue-timeout: 2m",
      "groups:",
      "  - { name: g, match: [f.example], limit: 9, queue-timeout: 1h, queue-max: 0 }",
    ].join("\n"),
  ));
  assert.deepEqual(
    ["a", "b", "c", "d", "e", "f"].map((h) => t.lookup(`${h}.example`).queueTimeout),
    [30_000, 500, 30_000, 1_500, 120_000, 3_600_000],
    "a bare number is seconds, as for --queue-timeout",
  );
  assert.equal(t.lookup("a.example").queueMax, 50);
  assert.equal(t.lookup("f.example").queueMax, 0);

  const error = (path: string, text: string) => {
    try {
      parse(path, text);
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err.message;
    }
    assert.fail("accepted");
  };
  assert.equal(
    error(
      "dprl.yaml",
      "hosts:\n  api.example.com: 5\n  slow.example.com: { limit: 2, queue-timeout: soon }\n",
    ),
    'dprl.yaml:3:48: hosts.slow.example.com.queue-timeout must be a duration such as 500ms, 10s or 2m, got "soon"',
  );
  assert.equal(
    error(
      "dprl.yaml",
      'groups:\n  - name: storage\n    match: ["*.s3.amazonaws.com"]\n    limit: 100\n    queue-max: -1\n',
    ),
    "dprl.yaml:5:16: groups[0].queue-max must be an integer between 0 and 1000000, got -1",
  );
  assert.equal(
    error("dprl.yaml", "hosts:\n  slow.example.com:\n    limit: 2\n    queue-timout: 5s\n"),
    "dprl.yaml:4:5: hosts.slow.example.com.queue-timout is not a host rule field " +
      "(limit, queue-timeout, queue-max, rate, retry-after-max, adaptive, via)",
  );
  assert.equal(
    error(
      "dprl.json",
      '{\n  "hosts": {\n    "slow.example.com": { "limit": 2, "queue-max": "x" }\n  }\n}',
    ),
    'dprl.json:3:52: hosts.slow.example.com.queue-max must be an integer between 0 and 1000000, got "x"',
  );
});

// Canonical form, layers, diffs.

Deno.test("canonical rules write queue settings one way; a rule without them is its limit", () => {
  assert.deepEqual(
    canonicalRules({
      hosts: {
        "B.example:443": { limit: 2 },
        "a.example": { limit: 1, "queue-timeout": "30000ms", "queue-max": 5 },
        "c.example": { limit: 3, "queue-timeout": 1.5 },
        "d.example": { limit: 4, "queue-timeout": "0" },
      },
      groups: [{ name: "g", match: ["x.example"], limit: 9, "queue-timeout": 120 }],
    }),
    {
      hosts: {
        "a.example": { limit: 1, "queue-timeout": "30s", "queue-max": 5 },
        "b.example": 2,
        "c.example": { limit: 3, "queue-timeout": "1500ms" },
        "d.example": { limit: 4, "queue-timeout": "0" },
      },
      groups: [{ name: "g", match: ["x.example"], limit: 9, "queue-timeout": "2m" }],
    },
  );
  const rules = { hosts: { "a.example": { limit: 1, "queue-timeout": "30s" } } };
  assert.deepEqual(new RuleTable(rules).rules, rules, "the table gives them back");
  assert.deepEqual(hostLimits(canonicalRules(RULES))["slow.example.com"], 2);
});

Deno.test("layered rules: a higher limit keeps the lower layer's queue settings", () => {
  const file: LimitRules = {
    hosts: { "slow.example.com": { limit: 2, "queue-timeout": "30s", "queue-max": 50 } },
  };
  // The fleet's table holds limits only.
  assert.deepEqual(layerRules(file, { hosts: { "SLOW.example.com:443": 3 } }), {
    hosts: { "slow.example.com": { limit: 3, "queue-timeout": "30s", "queue-max": 50 } },
  });
  assert.deepEqual(
    layerRules(file, { hosts: { "slow.example.com": { limit: 2, "queue-max": 1 } } }),
    { hosts: { "slow.example.com": { limit: 2, "queue-timeout": "30s", "queue-max": 1 } } },
    "a higher rule replaces the settings it gives",
  );
  // --host-limit under the file: the file's rule with its settings.
  assert.deepEqual(layerRules({ hosts: { "slow.example.com": 9 } }, file), {
    hosts: { "slow.example.com": { limit: 2, "queue-timeout": "30s", "queue-max": 50 } },
  });
});

Deno.test("rule diff names changed queue settings and ignores their spelling", () => {
  const a: LimitRules = {
    hosts: { "a.example": 2, "b.example": { limit: 1, "queue-timeout": "30s" } },
    groups: [{ name: "g", match: ["x.example"], limit: 9 }],
  };
  const b: LimitRules = {
    hosts: {
      "a.example": { limit: 2, "queue-timeout": "10s", "queue-max": 5 },
      "b.example": { limit: 1, "queue-timeout": 30 },
    },
    groups: [{ name: "g", match: ["x.example"], limit: 9, "queue-timeout": "500ms" }],
  };
  assert.deepEqual(diffRules(a, b), [
    {
      rule: "groups.g",
      a: "limit 9 for x.example",
      b: "limit 9 (queue-timeout 500ms) for x.example",
    },
    { rule: "hosts.a.example", a: "2", b: "2 (queue-timeout 10s, queue-max 5)" },
  ]);
  assert.deepEqual(diffRules(b, structuredClone(b)), []);
  assert.deepEqual(
    diffRules({ hosts: { "a.example": { limit: 2 } } }, { hosts: { "a.example": 2 } }),
    [],
    "a rule with a limit alone is its limit",
  );
});

// Through real proxies.

/** Sends one request on a fresh connection; resolves its status, body and Proxy-Status. */
async function exchange(
  addr: { hostname: string; port: number },
  up: Upstream,
  path: string,
): Promise<{ status: number; body: string; proxyStatus: string }> {
  const c = await BufferedConn.connect(addr);
  try {
    await c.write(request("GET", up.url(path), { Host: up.authority, Connection: "close" }));
    const res = await readResponse(c, { ms: 30_000 });
    return {
      status: res.status,
      body: text(res.body),
      proxyStatus: header(res.head, "proxy-status") ?? "",
    };
  } finally {
    c.close();
  }
}

/** The admin API's view of one host. */
async function hostView(proxy: ProxyRateLimiter, host: string) {
  const res = await proxy.adminHandler()(
    new Request(`http://admin/api/hosts/${encodeURIComponent(host)}`),
  );
  return await res.json() as {
    queued: number;
    refusedByReason: Record<string, number>;
  };
}

/** Waits until `n` requests wait in line for `host`. */
async function waitQueued(proxy: ProxyRateLimiter, host: string, n: number): Promise<void> {
  let last = -1;
  await waitFor(
    async () => (last = (await hostView(proxy, host)).queued) === n,
    () => `${n} waiting for ${host} (have ${last})`,
  );
}

async function rulesFile(
  text: string,
): Promise<{ path: string; [Symbol.asyncDispose](): Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "dprl-queue-rules-" });
  await Deno.writeTextFile(`${dir}/dprl.yaml`, text);
  return {
    path: `${dir}/dprl.yaml`,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

Deno.test("through a real proxy with queue timeout 0: a rule's queue-timeout waits, another host is refused at once, queue-max 1 refuses the second waiter", async () => {
  await using waits = await startUpstream();
  await using refuses = await startUpstream();
  await using short = await startUpstream();
  await using file = await rulesFile([
    "hosts:",
    `  "${waits.authority}": { limit: 1, queue-timeout: 30s }`,
    `  "${refuses.authority}": 1`,
    `  "${short.authority}": { limit: 1, queue-timeout: 30s, queue-max: 1 }`,
  ].join("\n"));
  const rules = (await loadConfigFile(file.path, { flags: {} })).rules;
  await using tp = await startProxy({ rules, queueTimeout: 0, rejectStatus: 503 });

  // The rule's queue-timeout: the request over the limit waits for the slot.
  const holder = exchange(tp.addr, waits, "/slow");
  await waits.waitHeld(1);
  const waiter = exchange(tp.addr, waits, "/fixed");
  await waitQueued(tp.proxy, waits.authority, 1);

  // No override: the process's 0 refuses at once, without a line.
  const refusedHolder = exchange(tp.addr, refuses, "/slow");
  await refuses.waitHeld(1);
  const refused = await exchange(tp.addr, refuses, "/fixed");
  assert.equal(refused.status, 503, refused.body);
  assert.match(refused.proxyStatus, /error=connection_limit_reached/);
  assert.doesNotMatch(refused.proxyStatus, /waited|queue full/);
  assert.equal((await hostView(tp.proxy, refuses.authority)).refusedByReason.limit, 1);
  assert.equal((await hostView(tp.proxy, refuses.authority)).queued, 0);

  // queue-max 1: the second waiter is refused at once.
  const shortHolder = exchange(tp.addr, short, "/slow");
  await short.waitHeld(1);
  const firstInLine = exchange(tp.addr, short, "/fixed");
  await waitQueued(tp.proxy, short.authority, 1);
  const full = await exchange(tp.addr, short, "/fixed");
  assert.equal(full.status, 503, full.body);
  assert.match(full.proxyStatus, /error=connection_limit_reached; details="queue full"/);

  // The slots free: each waiter gets its turn.
  waits.release();
  assert.equal((await holder).status, 200);
  const served = await waiter;
  assert.equal(served.status, 200, served.body);
  assert.equal(served.body, FIXED_BODY);
  assert.equal(waits.peakInFlight, 1, "never over the limit");
  assert.deepEqual((await hostView(tp.proxy, waits.authority)).refusedByReason, {
    limit: 0,
    queue_full: 0,
    queue_timeout: 0,
    limiter_unavailable: 0,
    paused: 0,
    rate: 0,
  });
  short.release();
  assert.equal((await shortHolder).status, 200);
  assert.equal((await firstInLine).status, 200);
  refuses.release();
  assert.equal((await refusedHolder).status, 200);
});

Deno.test("through a real proxy: a group's queue-timeout applies to its members, a member's own rule wins", async () => {
  await using member = await startUpstream();
  await using own = await startUpstream();
  await using tp = await startProxy({
    rules: {
      hosts: { [member.authority]: 1, [own.authority]: { limit: 1, "queue-timeout": 0 } },
      groups: [{
        name: "g",
        match: [member.authority, own.authority],
        limit: 10,
        "queue-timeout": "30s",
      }],
    },
    rejectStatus: 429,
  });
  const holders = [exchange(tp.addr, member, "/slow"), exchange(tp.addr, own, "/slow")];
  await member.waitHeld(1);
  await own.waitHeld(1);
  const waiter = exchange(tp.addr, member, "/fixed");
  await waitQueued(tp.proxy, member.authority, 1);
  const refused = await exchange(tp.addr, own, "/fixed");
  assert.equal(refused.status, 429, refused.body);
  assert.equal((await hostView(tp.proxy, own.authority)).refusedByReason.limit, 1);
  member.release();
  own.release();
  assert.equal((await waiter).status, 200);
  for (const h of holders) assert.equal((await h).status, 200);
});

Deno.test("a reload (POST /api/reload) that adds, then removes, a rule's queue-timeout applies it to the next request", async () => {
  await using up = await startUpstream();
  const plain = `hosts:\n  "${up.authority}": 1\n`;
  await using file = await rulesFile(plain);
  const load = async () => (await loadConfigFile(file.path, { flags: {} })).rules;
  await using tp = await startProxy({ rules: await load(), loadRules: load, rejectStatus: 503 });
  const reload = async () => {
    const res = await tp.proxy.adminHandler()(
      new Request("http://admin/api/reload", { method: "POST" }),
    );
    assert.equal(res.status, 200);
    return (await res.json()).changes as string[];
  };

  const holder = exchange(tp.addr, up, "/slow");
  await up.waitHeld(1);
  assert.equal((await exchange(tp.addr, up, "/fixed")).status, 503, "no queue-timeout yet");

  await Deno.writeTextFile(
    file.path,
    `hosts:\n  "${up.authority}": { limit: 1, queue-timeout: 30s }\n`,
  );
  assert.deepEqual(await reload(), [`hosts.${up.authority}`]);
  assert.deepEqual(tp.proxy.rules, {
    hosts: { [up.authority]: { limit: 1, "queue-timeout": "30s" } },
  });
  const waiter = exchange(tp.addr, up, "/fixed");
  await waitQueued(tp.proxy, up.authority, 1);
  up.release();
  assert.equal((await holder).status, 200);
  assert.equal((await waiter).status, 200, "the reloaded queue-timeout let it wait");

  await Deno.writeTextFile(file.path, plain);
  assert.deepEqual(await reload(), [`hosts.${up.authority}`]);
  const second = exchange(tp.addr, up, "/slow");
  await up.waitHeld(1);
  const refused = await exchange(tp.addr, up, "/fixed");
  assert.equal(refused.status, 503, "the override is gone: refused at once again");
  assert.doesNotMatch(refused.proxyStatus, /waited/);
  assert.equal((await hostView(tp.proxy, up.authority)).refusedByReason.limit, 2);
  up.release();
  assert.equal((await second).status, 200);
});

await redisTest(
  "on Redis: the fleet's table lowers the limit, the file's queue-timeout stays and the request waits",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using up = await startUpstream();
    await using tp = await startProxy({
      redis: redis.url,
      redisPrefix: "queue-rules",
      lease: 3000,
      rules: { hosts: { [up.authority]: { limit: 2, "queue-timeout": "30s" } } },
      rejectStatus: 503,
    });
    await tp.proxy.setFleetLimits({ hosts: { [up.authority]: 1 } });
    assert.deepEqual(tp.proxy.rules, {
      hosts: { [up.authority]: { limit: 1, "queue-timeout": "30s" } },
    });
    const holder = exchange(tp.addr, up, "/slow");
    await up.waitHeld(1);
    const waiter = exchange(tp.addr, up, "/fixed");
    await waitQueued(tp.proxy, up.authority, 1);
    up.release();
    assert.equal((await holder).status, 200);
    assert.equal((await waiter).status, 200, "it waited for the fleet's slot");
    assert.equal(up.peakInFlight, 1, "the fleet's limit of 1 held");
  },
);
