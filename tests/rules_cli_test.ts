// The config file on the command line, run as a real subprocess: precedence
// of flags, variables and file, a broken file at start, and reloads by
// SIGHUP, POST /api/reload and --watch-config.
import assert from "node:assert/strict";
import { RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { orFalse, rawExchange, request, waitFor } from "./_helpers/raw.ts";
import { startUpstream } from "./_helpers/upstream.ts";
import { type Proc, startCli } from "./_helpers/spawn.ts";

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function tempFile(name: string, text: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "dprl-cli-rules-" });
  await Deno.writeTextFile(`${dir}/${name}`, text);
  return `${dir}/${name}`;
}

async function listeningPort(cli: Proc): Promise<number> {
  const m = await cli.waitOutput(/Proxy listening on http:\/\/[^:]+:(\d+)/);
  return Number(m[1]);
}

Deno.test("CLI settings: the flag over the variable over the file over the default", async () => {
  const [fromFile, fromEnv, fromFlag] = [freePort(), freePort(), freePort()];
  const file = await tempFile("dprl.yaml", `port: ${fromFile}\nhostname: 127.0.0.1\n`);
  const cases: [string[], Record<string, string>, number][] = [
    [["--config", file], {}, fromFile],
    [["--config", file], { DPRL_PORT: String(fromEnv) }, fromEnv],
    [["--config", file, "--port", String(fromFlag)], { DPRL_PORT: String(fromEnv) }, fromFlag],
    [[], { DPRL_CONFIG: file }, fromFile],
  ];
  for (const [args, env, port] of cases) {
    await using cli = startCli(args, env);
    assert.equal(await listeningPort(cli), port, `${args.join(" ")} ${JSON.stringify(env)}`);
  }
});

Deno.test("CLI limits: the file's rules over --max-connections and --host-limit", async () => {
  const file = await tempFile(
    "dprl.json",
    JSON.stringify({ default: 1, hosts: { "a.example": 2 }, port: 0, hostname: "127.0.0.1" }),
  );
  await using cli = startCli([
    "--config",
    file,
    "--max-connections",
    "7",
    "--host-limit",
    "a.example=9",
    "--host-limit",
    "b.example=4",
    "--admin-port",
    "0",
  ]);
  const admin = (await cli.waitOutput(/Admin server listening on (http:\/\/\S+?\/)/))[1];
  const limit = async (host: string) =>
    (await (await fetch(new URL(`/api/hosts/${host}`, admin))).json()).limit;
  assert.equal(await limit("a.example"), 2, "the file over --host-limit");
  assert.equal(await limit("b.example"), 4, "a flag rule the file does not replace stays");
  assert.equal(await limit("c.example"), 1, "the file's default over --max-connections");
});

Deno.test("CLI a broken config file at start is one line naming file:line:col, exit 2", async () => {
  const file = await tempFile("dprl.yaml", "default: 25\nhosts:\n  api.example.com: -1\n");
  await using cli = startCli(["--config", file]);
  assert.equal(await cli.exit(), 2);
  const lines = cli.output.trim().split("\n");
  assert.equal(lines.length, 1, cli.output);
  assert.match(
    lines[0],
    /^dprl: .*dprl\.yaml:3:20: hosts\.api\.example\.com must be an integer >= 0/,
  );
  await using typo = startCli(["--config", await tempFile("d.yaml", "max-conections: 3\n")]);
  assert.equal(await typo.exit(), 2);
  assert.match(
    typo.output,
    /d\.yaml:1:1: max-conections is not a setting \(did you mean max-connections\?\)/,
  );
});

Deno.test("CLI SIGHUP and POST /api/reload reload the rules; a broken file keeps them", async () => {
  const file = await tempFile("dprl.yaml", "port: 0\nhostname: 127.0.0.1\ndefault: 3\n");
  await using cli = startCli(["--config", file, "--admin-port", "0"]);
  const admin = (await cli.waitOutput(/Admin server listening on (http:\/\/\S+?\/)/))[1];
  const limit = async () =>
    (await (await fetch(new URL("/api/hosts/x.example", admin))).json()).limit;
  assert.equal(await limit(), 3);

  await Deno.writeTextFile(file, "port: 0\nhostname: 127.0.0.1\ndefault: 5\n");
  cli.child.kill("SIGHUP");
  await waitFor(orFalse(async () => await limit() === 5), "SIGHUP reloads", 10_000);
  await cli.waitOutput(/Limit rule default changed from 3 to 5 \(reload\)/);

  await Deno.writeTextFile(file, "port: 0\nhostname: 127.0.0.1\ndefault: 6\n");
  const res = await fetch(new URL("/api/reload", admin), { method: "POST" });
  assert.equal(res.status, 200, await res.text());
  assert.equal(await limit(), 6, "POST /api/reload reloads before it answers");

  await Deno.writeTextFile(file, "port: 0\nhostname: 127.0.0.1\ndefault: [\n");
  cli.child.kill("SIGHUP");
  await cli.waitOutput(/Config not reloaded, the current limits stay: .*dprl\.yaml:\d+:\d+/);
  const bad = await fetch(new URL("/api/reload", admin), { method: "POST" });
  assert.equal(bad.status, 422);
  assert.match(await bad.text(), /dprl\.yaml:\d+:\d+/);
  assert.equal(await limit(), 6, "the old rules stay");
  const metrics = await (await fetch(new URL("/metrics", admin))).text();
  assert.match(metrics, /dprl_config_reloads_total\{result="ok"\} 2\n/);
  assert.match(metrics, /dprl_config_reloads_total\{result="error"\} 2\n/);
});

Deno.test("CLI GET /api/limits names the flag or the file behind each limit, before and after a reload", async () => {
  const file = await tempFile(
    "dprl.yaml",
    "port: 0\nhostname: 127.0.0.1\ndefault: 3\nhosts:\n  b.test: 2\n",
  );
  await using cli = startCli([
    "--config",
    file,
    "--admin-port",
    "0",
    "--max-connections",
    "7",
    "--host-limit",
    "a.test=1",
    "--host-limit",
    "b.test=1",
  ]);
  const admin = (await cli.waitOutput(/Admin server listening on (http:\/\/\S+?\/)/))[1];
  const table = async () => {
    const t = await (await fetch(new URL("/api/limits", admin))).json();
    return { default: t.default, hosts: t.hosts, sources: t.sources };
  };
  assert.deepEqual(await table(), {
    default: 3,
    hosts: { "a.test": 1, "b.test": 2 },
    sources: { default: "file", hosts: { "a.test": "flag", "b.test": "file" }, groups: {} },
  });
  await Deno.writeTextFile(file, "port: 0\nhostname: 127.0.0.1\n");
  const res = await fetch(new URL("/api/reload", admin), { method: "POST" });
  assert.equal(res.status, 200, await res.text());
  assert.deepEqual(await table(), {
    default: 7,
    hosts: { "a.test": 1, "b.test": 1 },
    sources: { default: "flag", hosts: { "a.test": "flag", "b.test": "flag" }, groups: {} },
  });
});

Deno.test("CLI a rule's queue-timeout from the file: SIGHUP makes a request over the limit wait", async () => {
  await using up = await startUpstream();
  const rules = (rule: string) =>
    `port: 0\nhostname: 127.0.0.1\nreject-status: 503\nhosts:\n  "${up.authority}": ${rule}\n`;
  const file = await tempFile("dprl.yaml", rules("1"));
  await using cli = startCli(["--config", file, "--admin-port", "0"]);
  const proxy = { hostname: "127.0.0.1", port: await listeningPort(cli) };
  const admin = (await cli.waitOutput(/Admin server listening on (http:\/\/\S+?\/)/))[1];
  const queued = async () =>
    (await (await fetch(new URL(`/api/hosts/${up.authority}`, admin))).json()).queued;
  const get = (path: string) =>
    rawExchange(proxy, request("GET", up.url(path), { Host: up.authority }), { ms: 30_000 });

  const holder = get("/slow");
  await up.waitHeld(1);
  assert.equal((await get("/fixed")).status, 503, "--queue-timeout is 0: refused at once");

  await Deno.writeTextFile(file, rules("{ limit: 1, queue-timeout: 30s }"));
  cli.child.kill("SIGHUP");
  await cli.waitOutput(
    /Limit rule hosts\.127\.0\.0\.1:\d+ changed from 1 to 1 \(queue-timeout 30s\) \(reload\)/,
  );
  const waiter = get("/fixed");
  await waitFor(orFalse(async () => await queued() === 1), "the request waits in line", 10_000);
  up.release();
  assert.equal((await holder).status, 200);
  assert.equal((await waiter).status, 200, "it got the slot");
});

Deno.test("CLI --watch-config reloads the rules when the file changes", async () => {
  const file = await tempFile("dprl.yaml", "port: 0\nhostname: 127.0.0.1\ndefault: 3\n");
  await using cli = startCli(["--config", file, "--admin-port", "0"], {
    DPRL_WATCH_CONFIG: "true",
  });
  const admin = (await cli.waitOutput(/Admin server listening on (http:\/\/\S+?\/)/))[1];
  const limit = async () =>
    (await (await fetch(new URL("/api/hosts/x.example", admin))).json()).limit;
  assert.equal(await limit(), 3);
  // Replaced by a rename, as editors and ConfigMaps do.
  await Deno.writeTextFile(`${file}.new`, "port: 0\nhostname: 127.0.0.1\ndefault: 4\n");
  await Deno.rename(`${file}.new`, file);
  await waitFor(orFalse(async () => await limit() === 4), "--watch-config reloads", 10_000);
});

await redisTest(
  "CLI proxies of one fleet whose files differ log a warning naming the rules",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    const a = await tempFile(
      "a.yaml",
      "port: 0\nhostname: 127.0.0.1\nhosts:\n  api.example.com: 5\n",
    );
    const b = await tempFile(
      "b.yaml",
      "port: 0\nhostname: 127.0.0.1\nhosts:\n  api.example.com: 3\n",
    );
    await using first = startCli(["--config", a, "--redis-url", redis.url]);
    await first.waitOutput(/Proxy listening/);
    await using second = startCli(["--config", b, "--redis-url", redis.url]);
    await second.waitOutput(
      /Limit rules differ from worker \S+: hosts\.api\.example\.com: 3 here, 5 there/,
    );
  },
);

Deno.test("CLI the README's config file examples start the proxy", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const section = readme.slice(
    readme.indexOf("## Limit rules"),
    readme.indexOf("## Distributed mode"),
  );
  const blocks = [...section.matchAll(/```(yaml|json)\n([\s\S]*?)```/g)];
  assert.ok(blocks.length >= 3, "the section has its examples");
  for (const [, format, text] of blocks) {
    // Without Redis and on free ports: the rest of each example as written.
    const local = format === "json"
      ? JSON.stringify({
        ...JSON.parse(text),
        "redis-url": undefined,
        port: 0,
        hostname: "127.0.0.1",
      })
      : text.replace(/^redis-url:.*$/m, "").replace(/^admin-port:.*$/m, "admin-port: 0") +
        "\nport: 0\nhostname: 127.0.0.1\n";
    await using cli = startCli(["--config", await tempFile(`dprl.${format}`, local)]);
    await cli.waitOutput(/Proxy listening on/);
  }
});

Deno.test("CLI lists and switches from the file: the variable over the file", async () => {
  const up = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (up.addr as Deno.NetAddr).port;
  const accepted = (async () => {
    for await (const conn of up) conn.close();
  })().catch(() => {});
  const file = await tempFile(
    "dprl.yaml",
    `port: 0\nhostname: 127.0.0.1\ndeny: ["127.0.0.1:${port}"]\naccess-log: true\n`,
  );
  const status = async (cli: Proc) => {
    const proxyPort = await listeningPort(cli);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxyPort });
    const target = `127.0.0.1:${port}`;
    await conn.write(
      new TextEncoder().encode(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`),
    );
    const buf = new Uint8Array(1024);
    const n = await conn.read(buf);
    conn.close();
    return Number(new TextDecoder().decode(buf.subarray(0, n ?? 0)).split(" ")[1]);
  };
  try {
    await using fromFile = startCli(["--config", file]);
    assert.equal(await status(fromFile), 403, "the file's deny list applies");
    await fromFile.waitOutput(/CONNECT 127\.0\.0\.1:\d+ 403/);
    await using fromEnv = startCli(["--config", file], {
      DPRL_DENY: "10.9.9.9",
      DPRL_ACCESS_LOG: "false",
    });
    assert.equal(await status(fromEnv), 200, "the variable's list replaces the file's");
  } finally {
    up.close();
    await accepted;
  }
});

/** A config file of `n` host rules, each with `limit`. */
function manyRules(n: number, limit: number): string {
  const lines = ["port: 0", "hostname: 127.0.0.1", "hosts:"];
  for (let i = 0; i < n; i++) lines.push(`  h${i}.example.com: ${limit}`);
  return lines.join("\n") + "\n";
}

Deno.test("CLI a reload of 50,000 rules lets proxied requests through while it runs", async () => {
  await using up = await startUpstream();
  const file = await tempFile("dprl.yaml", manyRules(3, 1));
  await using cli = startCli(["--config", file, "--admin-port", "0"]);
  const admin = (await cli.waitOutput(/Admin server listening on (http:\/\/\S+?\/)/))[1];
  const port = await listeningPort(cli);
  // The file becomes a pipe: opening it for writing returns once the reload
  // has opened it for reading, which tells that the reload has begun.
  await Deno.remove(file);
  await new Deno.Command("mkfifo", { args: [file] }).output();
  let answered = false;
  const reload = fetch(new URL("/api/reload", admin), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: "{}",
  }).then(async (res) => {
    answered = true;
    return [res.status, await res.text()] as const;
  });
  const pipe = await Promise.race([
    Deno.open(file, { write: true }),
    reload.then(([status, body]) => assert.fail(`answered unread: ${status} ${body}`)),
  ]);
  await pipe.write(new TextEncoder().encode(manyRules(50_000, 2)));
  pipe.close();
  // The file is read: the rules are being checked and compiled.
  const client = Deno.createHttpClient({ proxy: { url: `http://127.0.0.1:${port}` } });
  try {
    const res = await fetch(up.url("/fixed"), { client });
    assert.equal(res.status, 200);
    await res.body?.cancel();
    assert.equal(answered, false, "the proxied request was served during the reload");
  } finally {
    client.close();
  }
  const [status, body] = await reload;
  assert.equal(status, 200, body);
  const host = await (await fetch(new URL("/api/hosts/h49999.example.com", admin))).json();
  assert.equal(host.limit, 2, "the reloaded rules are in use");
});
