import assert from "node:assert/strict";
import { ConfigError, loadConfigFile, parseConfig } from "../lib/config/config_file.ts";

const FLAGS = {
  "port": {},
  "max-connections": {},
  "host-limit": { multiple: true },
  "redis-url": {},
  "redis-password": {},
  "lease": {},
  "allow": { multiple: true },
  "watch-config": { boolean: true },
  "config": {},
  "help": { boolean: true },
  "version": { boolean: true },
};

function parse(path: string, text: string) {
  return parseConfig(text, { path, flags: FLAGS });
}

function error(path: string, text: string): ConfigError {
  try {
    parse(path, text);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    assert.ok(!err.message.includes("\n"), `one line: ${err.message}`);
    return err;
  }
  assert.fail("the file was accepted");
}

const EXAMPLE_YAML = `# dprl
default: 25
hosts:
  api.example.com: 5
  "*.example.org": 10          # each matching host gets 10
  "cdn.example.net:8443": 2
groups:
  - name: storage
    match: ["*.s3.amazonaws.com", "s3.amazonaws.com"]
    limit: 100                 # all matching hosts together get 100
port: 3128
redis-url: redis://redis.internal:6379
redis-password: 0123
lease: 15s
allow:
  - 10.0.0.0/8
  - "*.example.com"
watch-config: true
`;

const EXAMPLE_RULES = {
  default: 25,
  hosts: { "api.example.com": 5, "*.example.org": 10, "cdn.example.net:8443": 2 },
  groups: [{ name: "storage", match: ["*.s3.amazonaws.com", "s3.amazonaws.com"], limit: 100 }],
};

Deno.test("config file in YAML gives settings by flag name and the rules", () => {
  const { settings, rules } = parse("dprl.yaml", EXAMPLE_YAML);
  assert.deepEqual(rules, EXAMPLE_RULES);
  assert.deepEqual(settings, {
    "port": "3128",
    "redis-url": "redis://redis.internal:6379",
    "redis-password": "0123", // as written, not the number 123
    "lease": "15s",
    "allow": ["10.0.0.0/8", "*.example.com"],
    "watch-config": true,
  });
});

Deno.test("config file in JSON reads the same as YAML", () => {
  const json = JSON.stringify({ ...EXAMPLE_RULES, port: 3128, allow: "10.0.0.0/8" }, null, 2);
  const { settings, rules } = parse("dprl.json", json);
  assert.deepEqual(rules, EXAMPLE_RULES);
  assert.deepEqual(settings, { port: "3128", allow: ["10.0.0.0/8"] });
});

Deno.test("config file may set the default as max-connections, not both", () => {
  assert.deepEqual(parse("dprl.yml", "max-connections: 7\n").rules, { default: 7 });
  assert.equal(
    error("dprl.yaml", "default: 3\nmax-connections: 7\n").message,
    "dprl.yaml:2:1: max-connections and default both set the default limit: keep one",
  );
  assert.equal(
    error("dprl.yaml", "max-connections: -2\n").message,
    "dprl.yaml:1:18: max-connections must be an integer >= 0, got -2",
  );
});

Deno.test("empty config file or empty sections set nothing", () => {
  assert.deepEqual(parse("dprl.yaml", ""), { settings: {}, rules: {}, places: {} });
  assert.deepEqual(parse("dprl.yaml", "# only a comment\n"), {
    settings: {},
    rules: {},
    places: {},
  });
  assert.deepEqual(parse("dprl.yaml", "hosts:\n  # a.example: 1\ngroups:\n"), {
    settings: {},
    rules: {},
    places: {},
  });
});

Deno.test("invalid YAML rules name file, line, column and rule", () => {
  const cases: [string, string][] = [
    [
      "default: 25\nhosts:\n  api.example.com: 5\n  other.example.com: 2\n  cdn.example.net: -1\n",
      "dprl.yaml:5:20: hosts.cdn.example.net must be an integer >= 0, got -1",
    ],
    [
      "hosts:\n  api.example.com: five\n",
      'dprl.yaml:2:20: hosts.api.example.com must be an integer >= 0, got "five"',
    ],
    [
      "hosts:\n  ok.example: 1\n  bad host: 1\n",
      'dprl.yaml:3:3: hosts."bad host" must be a host, host:port or *.suffix ' +
      "(such as api.example.com, cdn.example.net:8443 or *.example.org)",
    ],
    [
      "groups:\n  - name: a\n    match: [x.example]\n    limit: 1\n  - name: b\n    match:\n" +
      "      - y.example\n      - X.example\n    limit: 2\n",
      "dprl.yaml:8:9: groups[1].match[1] is x.example, already matched by group a: " +
      "a host belongs to one group at most",
    ],
    [
      "groups:\n  - name: a\n    match: [x.example]\n    limt: 1\n",
      "dprl.yaml:4:5: groups[0].limt is not a group field (name, match, limit, queue-timeout, queue-max, rate, retry-after-max, adaptive, via)",
    ],
    [
      "groups:\n  - name: a\n    match: []\n    limit: 1\n",
      "dprl.yaml:3:12: groups[0].match must be a non-empty list of host patterns, got an empty list",
    ],
    [
      "hosts:\n  a.example: 1\n  A.EXAMPLE:443: 2\n",
      "dprl.yaml:3:3: hosts.A.EXAMPLE:443 is the same rule as hosts.a.example",
    ],
  ];
  for (const [text, message] of cases) assert.equal(error("dprl.yaml", text).message, message);
});

Deno.test("invalid YAML syntax names file, line and column", () => {
  const e = error("conf/dprl.yaml", "port: 1\nhosts:\n  a.example: 1\n a.example: 2\n");
  assert.equal(e.file, "conf/dprl.yaml");
  assert.equal(e.line, 4);
  assert.match(e.message, /^conf\/dprl\.yaml:4:\d+: /);
  const dup = error("dprl.yaml", "hosts:\n  a.example: 1\n  a.example: 2\n");
  assert.equal(dup.message, "dprl.yaml:3:3: Map keys must be unique");
  assert.equal(
    error("dprl.yaml", "- 1\n- 2\n").message,
    "dprl.yaml:1:1: the file must hold a mapping of settings",
  );
});

Deno.test("invalid JSON names file, line and column", () => {
  assert.equal(
    error("dprl.json", '{\n  "hosts": {\n    "api.example.com": 1.5\n  }\n}').message,
    "dprl.json:3:24: hosts.api.example.com must be an integer >= 0, got 1.5",
  );
  assert.equal(
    error("dprl.json", '{\n\t"hosts": {\n\t\t"a.example": 1,\n\t}\n}').message,
    "dprl.json:4:2: Expected double-quoted property name",
  );
  assert.equal(
    error("dprl.json", '{\n  "hosts": {"a.example": 1, "a.example": 2}\n}').message,
    "dprl.json:2:29: Map keys must be unique",
  );
  assert.equal(
    error("dprl.json", '{\n  "groups": [{"name": "g", "match": ["x"], "limit": 1, "queue": 2}]\n}')
      .message,
    "dprl.json:2:56: groups[0].queue is not a group field (name, match, limit, queue-timeout, queue-max, rate, retry-after-max, adaptive, via)",
  );
  assert.match(error("dprl.json", '{"hosts": {"a": 1').message, /^dprl\.json:1:\d+: /);
});

Deno.test("config file rejects unknown keys and suggests a close flag name", () => {
  assert.equal(
    error("dprl.yaml", "port: 1\nmax-conections: 5\n").message,
    "dprl.yaml:2:1: max-conections is not a setting (did you mean max-connections?)",
  );
  assert.equal(
    error("dprl.yaml", "redis_url: x\n").message,
    "dprl.yaml:1:1: redis_url is not a setting (did you mean redis-url?)",
  );
  assert.equal(
    error("dprl.yaml", "colour: red\n").message,
    "dprl.yaml:1:1: colour is not a setting",
  );
  assert.equal(
    error("dprl.yaml", "config: other.yaml\n").message,
    "dprl.yaml:1:1: config is not a setting",
  );
  assert.equal(
    error("dprl.yaml", "host-limit: [a=1]\n").message,
    "dprl.yaml:1:1: host-limit is written as hosts in the file, a mapping of host to limit",
  );
});

Deno.test("config file checks the type of each setting", () => {
  assert.equal(error("dprl.yaml", "port:\n").message, "dprl.yaml:1:6: port needs a value");
  assert.equal(error("dprl.yaml", "port: [1, 2]\n").message, "dprl.yaml:1:7: port needs a value");
  assert.equal(
    error("dprl.yaml", "watch-config: yes\n").message,
    "dprl.yaml:1:15: watch-config must be true or false",
  );
  assert.equal(
    error("dprl.yaml", "allow:\n  - {a: 1}\n").message,
    "dprl.yaml:2:5: allow must be a list of values",
  );
  assert.deepEqual(parse("dprl.yaml", "watch-config: false\n").settings, { "watch-config": false });
});

Deno.test("config file with another extension is refused", () => {
  assert.equal(
    error("dprl.toml", "port = 1").message,
    "dprl.toml: must end in .yaml, .yml or .json",
  );
});

Deno.test("config file that cannot be read is a ConfigError naming it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      loadConfigFile(`${dir}/missing.yaml`, { flags: FLAGS }),
      (err: Error) =>
        err instanceof ConfigError && err.message === `${dir}/missing.yaml: no such file`,
    );
    await Deno.mkdir(`${dir}/d.yaml`);
    await assert.rejects(
      loadConfigFile(`${dir}/d.yaml`, { flags: FLAGS }),
      (err: Error) => err instanceof ConfigError && err.message.startsWith(`${dir}/d.yaml: `),
    );
    await Deno.writeTextFile(`${dir}/ok.yaml`, EXAMPLE_YAML);
    assert.deepEqual(
      (await loadConfigFile(`${dir}/ok.yaml`, { flags: FLAGS })).rules,
      EXAMPLE_RULES,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
