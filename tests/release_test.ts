// The CI and release workflows, as far as they can be checked without GitHub:
// both are valid YAML, every action is pinned to a commit, CI runs the checks
// of .ci/run with the Deno it pins, and the release's own steps (the version
// check, the release notes, the compile command lines, the image's tags and
// labels) run here as the workflow runs them. Also the release scripts, the
// changelog's format and the JSR score factors the package's files earn.
import assert from "node:assert/strict";
import { parse } from "yaml";
import { checkRelease, ReleaseMismatch } from "../scripts/check_release.ts";
import { binaryName, compileArgs, sha256Sums, TARGETS } from "../scripts/binaries.ts";
import { changelogSections, releaseNotes } from "../scripts/release_notes.ts";
import { ROOT, run, tempDir } from "./_helpers/spawn.ts";

interface Step {
  id?: string;
  name?: string;
  uses?: string;
  run?: string;
  with?: Record<string, unknown>;
  env?: Record<string, string>;
  if?: string;
  "working-directory"?: string;
}

interface Job {
  uses?: string;
  needs?: string[];
  permissions?: Record<string, string>;
  env?: Record<string, string>;
  outputs?: Record<string, string>;
  steps?: Step[];
}

interface Workflow {
  on: Record<string, unknown>;
  permissions?: Record<string, string>;
  defaults?: { run?: { shell?: string } };
  jobs: Record<string, Job>;
}

const WORKFLOWS = ["ci.yml", "release.yml"];
const text = (name: string): string => Deno.readTextFileSync(`${ROOT}/.github/workflows/${name}`);
const workflow = (name: string): Workflow => parse(text(name)) as Workflow;
const CONFIG = JSON.parse(Deno.readTextFileSync(`${ROOT}/deno.json`));
const VERSION: string = CONFIG.version;

/** The step of `job` in the release workflow with the id `id`. */
function releaseStep(job: string, id: string): Step {
  const step = workflow("release.yml").jobs[job].steps?.find((s) => s.id === id);
  assert.ok(step, `release.yml's job ${job} has a step ${id}`);
  return step;
}

/** `value` with each `${{ expression }}` replaced from `context`; an unknown one fails. */
function substitute(value: string, context: Record<string, string>): string {
  return value.replace(/\$\{\{\s*(.+?)\s*\}\}/g, (_, expression: string) => {
    assert.ok(expression in context, `the test knows the value of ${expression}`);
    return context[expression];
  });
}

/** The values a step wrote to `$GITHUB_OUTPUT`: `name=value` and `name<<END` blocks. */
function outputs(file: string): Record<string, string> {
  const out: Record<string, string> = {};
  const lines = file.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const block = /^([\w-]+)<<(\w+)$/.exec(lines[i]);
    if (block) {
      const end = lines.indexOf(block[2], i + 1);
      assert.ok(end > i, `the block ${block[1]} ends`);
      out[block[1]] = lines.slice(i + 1, end).join("\n");
      i = end;
    } else if (lines[i]) {
      const at = lines[i].indexOf("=");
      out[lines[i].slice(0, at)] = lines[i].slice(at + 1);
    }
  }
  return out;
}

/** Runs a step's script with bash as GitHub does, with its env and the job's; returns its outputs. */
async function runStep(
  step: Step,
  job: Job,
  context: Record<string, string>,
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string; outputs: Record<string, string> }> {
  assert.ok(step.run, `${step.id} has a script`);
  await using dir = await tempDir();
  const outputFile = `${dir.path}/output`;
  await Deno.writeTextFile(outputFile, "");
  const stepEnv = Object.fromEntries(
    Object.entries({ ...job.env, ...step.env }).map(([k, v]) => [k, substitute(v, context)]),
  );
  const cwd = step["working-directory"] ? `${ROOT}/${step["working-directory"]}` : ROOT;
  const r = await run("bash", ["--noprofile", "--norc", "-eo", "pipefail", "-c", step.run], cwd, {
    GITHUB_OUTPUT: outputFile,
    RUNNER_TEMP: dir.path,
    ...stepEnv,
    ...env,
  });
  return { ...r, outputs: outputs(await Deno.readTextFile(outputFile)) };
}

Deno.test("the workflows are valid YAML with the triggers and jobs they need", () => {
  for (const name of WORKFLOWS) {
    assert.equal(typeof workflow(name).jobs, "object", name);
    // GitHub then runs scripts as runStep does: bash --noprofile --norc -eo pipefail.
    assert.equal(workflow(name).defaults?.run?.shell, "bash", name);
  }
  const ci = workflow("ci.yml");
  assert.deepEqual(Object.keys(ci.on).sort(), ["pull_request", "push", "workflow_call"]);
  assert.deepEqual(ci.permissions, { contents: "read" });
  const release = workflow("release.yml");
  assert.deepEqual(release.on, { push: { tags: ["v*"] } });
  assert.deepEqual(release.permissions, {}, "every job asks for what it needs");
  assert.equal(release.jobs.ci.uses, "./.github/workflows/ci.yml");
  for (const job of ["jsr", "binaries", "image"]) {
    assert.deepEqual(release.jobs[job].needs, ["ci", "version"], `${job} waits for the checks`);
  }
  assert.equal(release.jobs.jsr.permissions?.["id-token"], "write");
  assert.ok(release.jobs.jsr.steps?.some((s) => s.run === "deno publish"));
});

Deno.test("every action is pinned to a full commit SHA, with its version beside it", () => {
  const pins = new Map<string, string>();
  for (const name of WORKFLOWS) {
    for (const line of text(name).split("\n").filter((l) => /^\s*(- )?uses:/.test(l))) {
      const m = /uses: (\S+?)@(\S+)(?: # (v\d+\.\d+\.\d+))?$/.exec(line);
      if (/uses: \.\/\.github\/workflows\/[\w.-]+\.yml$/.test(line)) continue;
      assert.ok(m, `${name}: ${line.trim()} names an action and a ref`);
      assert.match(m[2], /^[0-9a-f]{40}$/, `${name}: ${line.trim()} is pinned to a commit`);
      assert.ok(m[3], `${name}: ${line.trim()} says which version the commit is`);
      const pin = `${m[2]} ${m[3]}`;
      assert.equal(pins.get(m[1]) ?? pin, pin, `${m[1]} is pinned to one commit everywhere`);
      pins.set(m[1], pin);
    }
    // The same through the parser: no uses: that the line scan above missed.
    const parsed = Object.values(workflow(name).jobs).flatMap((j) => [
      j.uses,
      ...(j.steps ?? []).map((s) => s.uses),
    ]).filter((u): u is string => u !== undefined);
    for (const uses of parsed) {
      assert.match(uses, /^(\.\/|[\w.-]+\/[\w.-]+(\/[\w./-]+)?@[0-9a-f]{40}$)/, `${name}: ${uses}`);
    }
  }
  assert.ok(pins.size >= 6, [...pins.keys()].join(", "));
});

Deno.test("no script of a workflow expands an expression: values come in through env", () => {
  for (const name of WORKFLOWS) {
    for (const [id, job] of Object.entries(workflow(name).jobs)) {
      for (const step of job.steps ?? []) {
        assert.doesNotMatch(step.run ?? "", /\$\{\{/, `${name}: ${id}: ${step.name ?? step.id}`);
      }
    }
  }
});

Deno.test("every workflow sets up the Deno that .ci/run and the Dockerfile pin", () => {
  const pinned = /^DENO_VERSION=(\S+)$/m.exec(Deno.readTextFileSync(`${ROOT}/.ci/run`))?.[1];
  assert.ok(pinned);
  let setups = 0;
  for (const name of WORKFLOWS) {
    for (const job of Object.values(workflow(name).jobs)) {
      for (const step of job.steps ?? []) {
        if (!step.uses?.startsWith("denoland/setup-deno@")) continue;
        setups++;
        assert.equal(String(step.with?.["deno-version"]), pinned, `${name}: ${step.uses}`);
      }
    }
  }
  assert.ok(setups >= 4, `${setups} setups`);
});

Deno.test("ci.yml runs the checks of .ci/run and its tests, with Deno's cache", () => {
  const script = Deno.readTextFileSync(`${ROOT}/.ci/run`);
  const checks = [...script.matchAll(/^check (.+)$/gm)].map((m) => m[1]);
  assert.ok(checks.length >= 5, checks.join("\n"));
  assert.match(script, /^deno task test /m);
  const job = workflow("ci.yml").jobs.checks;
  const runs = (job.steps ?? []).map((s) => s.run?.trim()).filter(Boolean);
  for (const check of [...checks, "deno task test"]) {
    assert.ok(runs.includes(check), `ci.yml runs ${check}`);
  }
  const setup = job.steps?.find((s) => s.uses?.startsWith("denoland/setup-deno@"));
  assert.equal(setup?.with?.cache, true);
  const tools = job.steps?.find((s) => s.id === "tools")?.run ?? "";
  for (const tool of ["redis-server", "apache2-utils", "chromium", "CHROMIUM_PATH"]) {
    assert.ok(tools.includes(tool), `ci.yml provides ${tool}`);
  }
});

Deno.test("the release's version step passes for this version's tag and fails for another", async () => {
  const step = releaseStep("version", "version");
  const job = workflow("release.yml").jobs.version;
  const ok = await runStep(step, job, {}, { GITHUB_REF_NAME: `v${VERSION}` });
  assert.equal(ok.code, 0, ok.stderr);
  assert.deepEqual(ok.outputs, {
    version: VERSION,
    prerelease: String(VERSION.includes("-")),
  });
  assert.equal(job.outputs?.version, "${{ steps.version.outputs.version }}");
  for (const tag of ["v99.0.0", VERSION, `v${VERSION}.1`]) {
    const bad = await runStep(step, job, {}, { GITHUB_REF_NAME: tag });
    assert.equal(bad.code, 1, `${tag}: ${bad.stderr}`);
    assert.deepEqual(bad.outputs, {}, "nothing for the jobs after it");
    const lines = bad.stderr.trim().split("\n");
    assert.equal(lines.length, 1, bad.stderr);
    assert.match(lines[0], /^release check failed: tag \S+ (but deno.json's version is|is not v)/);
  }
});

Deno.test("the release's notes step needs this version's section in CHANGELOG.md", async () => {
  const job = workflow("release.yml").jobs.version;
  const section = releaseNotes(Deno.readTextFileSync(`${ROOT}/CHANGELOG.md`), VERSION);
  const context = { "steps.version.outputs.version": VERSION };
  const r = await runStep(releaseStep("version", "notes"), job, context);
  if (section === null) {
    // Not released yet: a tag now would stop here, before anything is published.
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr.trim(), /^release notes: CHANGELOG.md has no section "## \[[^\n]+$/);
  } else {
    assert.equal(r.code, 0, r.stderr);
  }
  const notes = await runStep(
    releaseStep("binaries", "notes"),
    workflow("release.yml").jobs.binaries,
    {
      "needs.version.outputs.version": VERSION,
      "needs.version.outputs.prerelease": "false",
    },
  );
  assert.equal(notes.code, r.code, notes.stderr);
});

Deno.test("the release builds its binaries with deno task compile's flags, for five targets", async () => {
  assert.equal(releaseStep("binaries", "binaries").run?.trim(), "deno task binaries");
  const r = await run(Deno.execPath(), ["task", "-q", "binaries", "--dry-run"], ROOT);
  assert.equal(r.code, 0, r.transcript);
  const lines = r.stdout.trim().split("\n");
  assert.deepEqual(TARGETS, [
    "x86_64-unknown-linux-gnu",
    "aarch64-unknown-linux-gnu",
    "x86_64-apple-darwin",
    "aarch64-apple-darwin",
    "x86_64-pc-windows-msvc",
  ]);
  assert.equal(lines.length, TARGETS.length, r.stdout);
  const task: string[] = CONFIG.tasks.compile.split(/\s+/);
  const taskArgs = task.slice(task.indexOf("scripts/compile.ts") + 1);
  lines.forEach((line, i) => {
    const words = line.split(" ");
    assert.deepEqual(words.slice(0, 2), ["deno", "compile"]);
    // Without its target, each line is `deno task compile`'s, output aside.
    const at = words.indexOf("--target");
    assert.equal(words[at + 1], TARGETS[i]);
    words.splice(at, 2);
    const out = words.indexOf("--output");
    assert.equal(words[out + 1], `dist/${binaryName(TARGETS[i])}`);
    words[out + 1] = taskArgs[taskArgs.indexOf("--output") + 1];
    assert.deepEqual(words.slice(2), taskArgs);
  });
  assert.ok(binaryName("x86_64-pc-windows-msvc").endsWith(".exe"));
  assert.throws(() => compileArgs("deno compile cli.ts", TARGETS[0]), /scripts\/compile\.ts/);
});

Deno.test("SHA256SUMS is what sha256sum writes and checks", async () => {
  await using dir = await tempDir();
  await Deno.writeTextFile(`${dir.path}/dprl-a`, "abc");
  await Deno.writeFile(`${dir.path}/dprl-b.exe`, new Uint8Array([0, 255, 10]));
  const sums = await sha256Sums(dir.path, ["dprl-a", "dprl-b.exe"]);
  assert.equal(
    sums.split("\n")[0],
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  dprl-a",
  );
  await Deno.writeTextFile(`${dir.path}/SHA256SUMS`, sums);
  const check = await run("sha256sum", ["--check", "--strict", "SHA256SUMS"], dir.path)
    .catch((e) => ({ code: -1, transcript: `sha256sum: ${e}` }));
  if (check.code === -1) console.warn(`!!! not checked with sha256sum: ${check.transcript}`);
  else assert.equal(check.code, 0, check.transcript);
});

Deno.test("the release's image step names the image, its tags and labels", async () => {
  const step = releaseStep("image", "image");
  const job = workflow("release.yml").jobs.image;
  const github = {
    GITHUB_REPOSITORY_OWNER: "Example-Org",
    GITHUB_REPOSITORY: "Example-Org/dprl",
    GITHUB_SERVER_URL: "https://github.com",
    GITHUB_SHA: "0123456789abcdef0123456789abcdef01234567",
  };
  const release = (version: string, prerelease: string) =>
    runStep(step, job, {
      "needs.version.outputs.version": version,
      "needs.version.outputs.prerelease": prerelease,
    }, github);
  const r = await release("1.2.3", "false");
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.outputs.name, "ghcr.io/example-org/dprl");
  assert.equal(r.outputs.tags, "ghcr.io/example-org/dprl:1.2.3,ghcr.io/example-org/dprl:latest");
  assert.deepEqual(r.outputs.labels.split("\n"), [
    "org.opencontainers.image.title=dprl",
    "org.opencontainers.image.version=1.2.3",
    "org.opencontainers.image.source=https://github.com/Example-Org/dprl",
    `org.opencontainers.image.revision=${github.GITHUB_SHA}`,
    "org.opencontainers.image.licenses=MIT",
  ]);
  const pre = await release("2.0.0-rc.1", "true");
  assert.equal(pre.outputs.tags, "ghcr.io/example-org/dprl:2.0.0-rc.1", "no latest");

  const build = job.steps?.find((s) => s.id === "build");
  assert.ok(build, "the image job has a step build");
  assert.ok(build.uses?.startsWith("docker/build-push-action@"), build.uses);
  assert.equal(build.with?.platforms, "linux/amd64,linux/arm64");
  assert.equal(build.with?.push, true);
  assert.equal(build.with?.context, ".");
  assert.equal(build.with?.tags, "${{ steps.image.outputs.tags }}");
  assert.equal(build.with?.labels, "${{ steps.image.outputs.labels }}");
  assert.equal(job.permissions?.packages, "write");
});

Deno.test("checkRelease: the tag, deno.json and --version agree, or one line says which do not", () => {
  assert.deepEqual(checkRelease("v0.1.0", "0.1.0", "dprl 0.1.0\n"), {
    version: "0.1.0",
    prerelease: false,
  });
  assert.deepEqual(checkRelease("v1.0.0-rc.1", "1.0.0-rc.1", "dprl 1.0.0-rc.1"), {
    version: "1.0.0-rc.1",
    prerelease: true,
  });
  assert.equal(
    checkRelease("v1.0.0+build.5", "1.0.0+build.5", "dprl 1.0.0+build.5").prerelease,
    false,
  );
  const cases: [string, string, string, RegExp][] = [
    ["v0.2.0", "0.1.0", "dprl 0.1.0", /^tag v0\.2\.0 but deno\.json's version is 0\.1\.0$/],
    [
      "v0.1.0",
      "0.1.0",
      "dprl 0.0.9",
      /^deno\.json's version is 0\.1\.0 but dprl --version prints "dprl 0\.0\.9"$/,
    ],
    ["0.1.0", "0.1.0", "dprl 0.1.0", /^tag "0\.1\.0" is not v and a version/],
    ["v0.1", "0.1", "dprl 0.1", /^tag "v0\.1" is not v/],
    ["vv0.1.0", "0.1.0", "dprl 0.1.0", /is not v and a version/],
    ["v01.0.0", "01.0.0", "dprl 01.0.0", /is not v and a version/],
    ["v0.1.0", "", "dprl ", /^deno\.json's version "" is no version$/],
  ];
  for (const [tag, version, printed, message] of cases) {
    assert.throws(() => checkRelease(tag, version, printed), (e: Error) => {
      assert.ok(e instanceof ReleaseMismatch);
      assert.match(e.message, message);
      assert.ok(!e.message.includes("\n"));
      return true;
    });
  }
});

const SAMPLE = `# Changelog

## [Unreleased]

### Added

- Next.

## [1.1.0] - 2025-02-01

### Fixed

- A fix.

## [1.0.0] - 2025-01-01

### Added

- First.

[Unreleased]: https://example.com/compare/v1.1.0...HEAD
[1.1.0]: https://example.com/compare/v1.0.0...v1.1.0
`;

Deno.test("release notes are a version's section of the changelog, without links", () => {
  assert.equal(releaseNotes(SAMPLE, "1.1.0"), "### Fixed\n\n- A fix.");
  assert.equal(releaseNotes(SAMPLE, "1.0.0"), "### Added\n\n- First.");
  assert.equal(releaseNotes(SAMPLE, "1.2.0"), null);
  assert.deepEqual(changelogSections(SAMPLE).map((s) => [s.version, s.date]), [
    ["Unreleased", undefined],
    ["1.1.0", "2025-02-01"],
    ["1.0.0", "2025-01-01"],
  ]);
});

Deno.test("CHANGELOG.md keeps a changelog: Unreleased first, then dated releases, newest first", () => {
  const changelog = Deno.readTextFileSync(`${ROOT}/CHANGELOG.md`);
  assert.match(changelog, /^# Changelog\n/);
  assert.match(changelog, /keepachangelog\.com\/en\/1\.1\.0/);
  const sections = changelogSections(changelog);
  assert.equal(sections[0]?.version, "Unreleased");
  const kinds = ["Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"];
  for (const section of sections) {
    for (const m of section.body.matchAll(/^### (.+)$/gm)) {
      assert.ok(kinds.includes(m[1]), `${section.version}: ### ${m[1]}`);
    }
    for (const line of section.body.split("\n")) {
      assert.match(line, /^(|### \w+|- .+| {2}.+)$/, `${section.version}: a heading or a bullet`);
    }
  }
  const released = sections.slice(1);
  for (const s of released) assert.match(s.date ?? "", /^\d{4}-\d{2}-\d{2}$/, s.version);
  // Major, minor and patch compared (pre-releases aside).
  const after = (a: string, b: string): boolean => {
    const [x, y] = [a, b].map((v) => v.split(/[.+-]/).slice(0, 3).map(Number));
    return (x[0] - y[0] || x[1] - y[1] || x[2] - y[2]) > 0;
  };
  for (let i = 1; i < released.length; i++) {
    const [newer, older] = [released[i - 1].version, released[i].version];
    assert.ok(after(newer, older), `${newer} comes before ${older}`);
  }
  // deno.json's version is released here, or is the one Unreleased leads to.
  if (released.length > 0 && !released.some((s) => s.version === VERSION)) {
    assert.ok(after(VERSION, released[0].version), `${VERSION} is past ${released[0].version}`);
  }
});

Deno.test("the package's files earn the JSR score's factors that files can give", async () => {
  // A readme with an example, module docs on every entry point, license and
  // changelog published; symbols and slow types are deno doc --lint's and
  // deno publish --dry-run's, in CI.
  const readme = Deno.readTextFileSync(`${ROOT}/README.md`);
  assert.match(readme, /```ts\nimport \{ \w+ \} from "@dprl\/cli";/);
  assert.match(CONFIG.name, /^@dprl\/cli$/);
  assert.equal(CONFIG.license, "MIT");
  for (const entry of Object.values<string>(CONFIG.exports)) {
    const source = Deno.readTextFileSync(`${ROOT}/${entry}`);
    const doc = /^\/\*\*\n([\s\S]*?)\*\//.exec(source)?.[1] ?? "";
    assert.match(doc, /@module/, `${entry} opens with its module doc`);
    assert.ok(doc.split("\n").length > 5, `${entry}'s module doc says something`);
  }
  const include: string[] = CONFIG.publish.include;
  for (const file of ["README.md", "LICENSE", "CHANGELOG.md", "deno.json"]) {
    assert.ok(include.includes(file), `${file} is published`);
  }
  for (const path of include) {
    assert.ok(!/^(tests|scripts|bench|\.github|\.ci)\b/.test(path), `${path} stays unpublished`);
    await Deno.stat(`${ROOT}/${path}`);
  }
});
