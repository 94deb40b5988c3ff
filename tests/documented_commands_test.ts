// Every command the README, the module docs, deno.json and the Dockerfile show
// grants what dprl needs, and works as written: files under /etc/dprl are
// readable, a file elsewhere gets one line naming the grant to add, the
// worker's host name is known, and plain use downloads only the program's
// packages.
import assert from "node:assert/strict";
import bcrypt from "bcryptjs";
import { RedisServer, redisTest } from "./_helpers/redis_server.ts";
import { startUpstream } from "./_helpers/upstream.ts";
import { BufferedConn, readResponse, request } from "./_helpers/raw.ts";
import { Proc, ROOT, run, shellWords, tempDir } from "./_helpers/spawn.ts";

const README = Deno.readTextFileSync(`${ROOT}/README.md`);
const TASKS: Record<string, string> = JSON.parse(Deno.readTextFileSync(`${ROOT}/deno.json`)).tasks;
const DOCUMENTED_FOLDER = "/etc/dprl";

/** Every documented command that runs dprl: name and words. */
function documentedCommands(): [string, string[]][] {
  const out: [string, string[]][] = [["deno task start", shellWords(TASKS.start)]];
  out.push(["deno task compile", shellWords(TASKS.compile)]);
  // A command continued over lines (`\` at their ends) is one command.
  const readme = [...README.matchAll(/```sh\n([\s\S]*?)```/g)]
    .flatMap((m) => m[1].replace(/\\\n\s*/g, "").split("\n"))
    .map((l) => l.trim())
    .filter((l) => /^deno (run|install)\b/.test(l) && /(cli\.ts|jsr:@dprl\/cli)\b/.test(l));
  for (const line of readme) out.push([`README: ${line}`, shellWords(line)]);
  for (const file of ["mod.ts", "cli.ts"]) {
    const doc = Deno.readTextFileSync(`${ROOT}/${file}`);
    for (const m of doc.matchAll(/^ \* (deno run .*)$/gm)) {
      out.push([`${file}: ${m[1]}`, shellWords(m[1])]);
    }
  }
  const entry = /^ENTRYPOINT (\[.*\])$/m.exec(Deno.readTextFileSync(`${ROOT}/Dockerfile`))![1];
  out.push(["Dockerfile ENTRYPOINT", JSON.parse(entry)]);
  return out;
}

/** The values of `--allow-<name>=a,b` in `words`. */
function allowed(words: string[], name: string): string[] {
  return words.filter((w) => w.startsWith(`--allow-${name}=`)).flatMap((w) =>
    w.slice(name.length + 9).split(",")
  );
}

Deno.test("every documented command may read /etc/dprl and the host name, and sees the interfaces", () => {
  const commands = documentedCommands();
  assert.ok(commands.length >= 8, commands.map(([n]) => n).join("\n"));
  for (const [name, words] of commands) {
    assert.ok(words.includes("--allow-net"), name);
    assert.ok(
      allowed(words, "read").includes(DOCUMENTED_FOLDER),
      `${name} grants ${DOCUMENTED_FOLDER}`,
    );
    const sys = allowed(words, "sys");
    assert.ok(sys.includes("networkInterfaces") && sys.includes("hostname"), name);
  }
});

Deno.test("every documented command caps V8's young generation as the benchmark measured it", () => {
  // Holding thousands of idle tunnels, V8 otherwise grows its young
  // generation to about 44 MiB and keeps it (bench/README.md).
  for (const [name, words] of documentedCommands()) {
    assert.ok(words.includes("--v8-flags=--max-semi-space-size=4"), name);
    // A runtime flag: before the program, not among dprl's own.
    const program = words.findIndex((w) => /(cli\.ts|jsr:@dprl\/cli(\/cli)?)$/.test(w));
    assert.ok(words.indexOf("--v8-flags=--max-semi-space-size=4") < program, name);
  }
});

/** `deno task start`'s `deno run` flags, with `/etc/dprl` read from `folder` instead. */
function startFlags(folder: string): string[] {
  const words = shellWords(TASKS.start);
  return words.slice(words.indexOf("run") + 1, words.indexOf("cli.ts")).map((w) =>
    w.startsWith("--allow-read=") ? w.replace(DOCUMENTED_FOLDER, folder) : w
  );
}

function startCli(folder: string, args: string[], env: Record<string, string> = {}): Proc {
  const argv = ["run", ...startFlags(folder), "cli.ts", "--port", "0", "--hostname", "127.0.0.1"];
  return new Proc(Deno.execPath(), [...argv, ...args], ROOT, env);
}

Deno.test("deno task start reads --config, --watch-config and --auth-file from the documented folder", async () => {
  await using etc = await tempDir();
  await Deno.writeTextFile(`${etc.path}/dprl.yaml`, "default: 1\n");
  await Deno.writeTextFile(`${etc.path}/users.htpasswd`, `bob:${bcrypt.hashSync("pw", 4)}\n`);
  await using up = await startUpstream();
  await using proxy = startCli(etc.path, [
    "--config",
    `${etc.path}/dprl.yaml`,
    "--watch-config",
    "--auth-file",
    `${etc.path}/users.htpasswd`,
  ]);
  const conn = await BufferedConn.connect(await proxy.listening());
  try {
    const auth = `Basic ${btoa("bob:pw")}`;
    await conn.write(
      request("GET", up.url("/fixed"), { Host: up.authority, "Proxy-Authorization": auth }),
    );
    assert.equal((await readResponse(conn)).status, 200, proxy.transcript);
  } finally {
    conn.close();
  }
  proxy.child.kill("SIGTERM");
  assert.equal(await proxy.exit(), 0, proxy.transcript);
});

Deno.test("a file outside the grant gets one line naming the --allow-read to add, exit 2", async () => {
  await using etc = await tempDir();
  await using elsewhere = await tempDir();
  const file = `${elsewhere.path}/dprl.yaml`;
  await Deno.writeTextFile(file, "default: 1\n");
  const refusals: [string[], Record<string, string>, RegExp][] = [
    [["--config", file], {}, new RegExp(`^dprl: --config ${file} .*--allow-read=${file}\\b`)],
    [[], { DPRL_CONFIG: file }, new RegExp(`^dprl: DPRL_CONFIG ${file} .*--allow-read=${file}\\b`)],
    [["--auth-file", file], {}, new RegExp(`^dprl: --auth-file ${file} .*--allow-read=${file}$`)],
    [
      ["--redis-url", "rediss://127.0.0.1:1", "--redis-tls-ca", file],
      {},
      new RegExp(`^dprl: --redis-tls-ca ${file} .*--allow-read=${file}$`),
    ],
  ];
  for (const [args, env, expected] of refusals) {
    await using cli = startCli(etc.path, args, env);
    assert.equal(await cli.exit(), 2, cli.transcript);
    assert.equal(cli.stderr.trim().split("\n").length, 1, cli.transcript);
    assert.match(cli.stderr.trim(), expected);
  }
  // The README quotes the line word for word.
  const quoted = /`(dprl: --config (\S+) cannot be read[^`]*)`/.exec(README);
  assert.ok(quoted, "the README quotes the refusal");
  await using readmeCase = startCli(etc.path, ["--config", quoted[2]]);
  assert.equal(await readmeCase.exit(), 2, readmeCase.transcript);
  assert.equal(readmeCase.stderr.trim(), quoted[1]);
  // The file alone granted: --watch-config still needs its folder, and says so.
  const argv = ["run", ...startFlags(file), "cli.ts", "--config", file, "--watch-config"];
  const watching = await run(Deno.execPath(), argv, ROOT);
  assert.equal(watching.code, 2, watching.transcript);
  assert.match(watching.stderr.trim(), new RegExp(`--allow-read=${elsewhere.path}$`));
});

await redisTest(
  "with the documented permissions each worker shows its host name",
  "server",
  async () => {
    await using redis = await RedisServer.start();
    await using etc = await tempDir();
    await using proxy = startCli(etc.path, ["--redis-url", redis.url, "--admin-port", "0"]);
    const admin = (await proxy.waitStderr(/Admin server listening on (http:\/\/\S+)/))[1];
    const res = await fetch(new URL("/api/workers", admin));
    const { workers } = await res.json();
    assert.equal(workers.length, 1, JSON.stringify(workers));
    assert.equal(workers[0].hostname, Deno.hostname());
    proxy.child.kill("SIGTERM");
    assert.equal(await proxy.exit(), 0, proxy.transcript);
  },
);

/** The npm packages a fresh DENO_DIR holds, `name@version`. */
async function cachedPackages(denoDir: string): Promise<string[]> {
  const root = `${denoDir}/npm/registry.npmjs.org`;
  const out: string[] = [];
  const list = async (dir: string, prefix: string) => {
    for await (const e of Deno.readDir(dir)) {
      if (!e.isDirectory) continue;
      if (e.name.startsWith("@") && !prefix) await list(`${dir}/${e.name}`, `${e.name}/`);
      else if (prefix || !e.name.startsWith("@")) {
        for await (const v of Deno.readDir(`${dir}/${e.name}`)) {
          if (v.isDirectory) out.push(`${prefix}${e.name}@${v.name}`);
        }
      }
    }
  };
  await list(root, "");
  return out.sort();
}

Deno.test("deno task start and the image's cache step download the program's packages only", async () => {
  const lock = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.lock`));
  const program = Object.keys(lock.npm).sort();
  for (const name of ["fast-check", "playwright-core"]) {
    assert.ok(!program.some((p) => p.startsWith(`${name}@`)), `deno.lock holds no ${name}`);
  }
  await using startDir = await tempDir();
  const start = await run(Deno.execPath(), ["task", "start", "--version"], ROOT, {
    DENO_DIR: startDir.path,
  });
  assert.equal(start.code, 0, start.transcript);
  assert.deepEqual(await cachedPackages(startDir.path), program);

  const dockerfile = await Deno.readTextFile(`${ROOT}/Dockerfile`);
  const cache = shellWords(/^RUN (deno cache .*)$/m.exec(dockerfile)![1]);
  await using imageDir = await tempDir();
  const cached = await run(Deno.execPath(), cache.slice(1), ROOT, { DENO_DIR: imageDir.path });
  assert.equal(cached.code, 0, cached.transcript);
  assert.deepEqual(await cachedPackages(imageDir.path), program);
  // The entry point runs from that cache alone.
  const entry: string[] = JSON.parse(/^ENTRYPOINT (\[.*\])$/m.exec(dockerfile)![1]);
  const version = await run(Deno.execPath(), [...entry.slice(1), "--version"], ROOT, {
    DENO_DIR: imageDir.path,
  });
  assert.equal(version.code, 0, version.transcript);
});
