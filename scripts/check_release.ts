/**
 * The release check: a version tag (`vX.Y.Z`), the `version` of `deno.json`
 * and what `dprl --version` prints must name the same version. The release
 * workflow runs it before anything is published:
 *
 * ```sh
 * deno run --allow-read=deno.json --allow-run=deno scripts/check_release.ts v0.1.0
 * ```
 *
 * When they agree it prints `version=X.Y.Z` and `prerelease=true|false`, lines
 * for `$GITHUB_OUTPUT`, and exits 0; when they do not, one line on stderr that
 * says which two disagree, and exit code 1.
 *
 * @module
 */

/** The version a tag releases, and whether it is a pre-release (`1.0.0-rc.1`). */
export interface ReleaseVersion {
  /** The version without the tag's `v`. */
  version: string;
  /** Whether the version has a pre-release part (after a `-`). */
  prerelease: boolean;
}

/** A tag, `deno.json` and `dprl --version` that do not agree; its message is one line. */
export class ReleaseMismatch extends Error {
  override name = "ReleaseMismatch";
}

/** Semantic Versioning 2.0.0: major.minor.patch, an optional pre-release and build. */
const SEMVER =
  /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$/;

/**
 * Checks that `tag` is `v` and `configVersion`, and that `printed` (the
 * output of `dprl --version`) is `dprl` and the same version. Throws a
 * {@linkcode ReleaseMismatch} that names what disagrees.
 */
export function checkRelease(tag: string, configVersion: string, printed: string): ReleaseVersion {
  const tagVersion = tag.startsWith("v") ? tag.slice(1) : "";
  if (!SEMVER.test(tagVersion)) {
    throw new ReleaseMismatch(`tag ${JSON.stringify(tag)} is not v and a version, as v1.2.3`);
  }
  if (!SEMVER.test(configVersion)) {
    throw new ReleaseMismatch(`deno.json's version ${JSON.stringify(configVersion)} is no version`);
  }
  if (tagVersion !== configVersion) {
    throw new ReleaseMismatch(`tag ${tag} but deno.json's version is ${configVersion}`);
  }
  const expected = `dprl ${configVersion}`;
  if (printed.trim() !== expected) {
    throw new ReleaseMismatch(
      `deno.json's version is ${configVersion} but dprl --version prints ` +
        JSON.stringify(printed.trim()),
    );
  }
  const prerelease = /^[^+]*-/.test(configVersion);
  return { version: configVersion, prerelease };
}

/** What `deno run cli.ts --version` prints, run in the checkout at `root`. */
async function printedVersion(root: URL): Promise<string> {
  const { code, stdout, stderr } = await new Deno.Command("deno", {
    args: ["run", "--quiet", "cli.ts", "--version"],
    cwd: root,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  if (code !== 0) {
    const why = text.decode(stderr).trim().split("\n")[0] || `exit code ${code}`;
    throw new ReleaseMismatch(`deno run cli.ts --version failed: ${why}`);
  }
  return text.decode(stdout);
}

if (import.meta.main) {
  const root = new URL("../", import.meta.url);
  try {
    const tag = Deno.args[0];
    if (!tag || Deno.args.length > 1) throw new ReleaseMismatch("give one tag, as v1.2.3");
    const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", root)));
    const release = checkRelease(tag, String(config.version ?? ""), await printedVersion(root));
    console.log(`version=${release.version}\nprerelease=${release.prerelease}`);
  } catch (err) {
    if (!(err instanceof ReleaseMismatch)) throw err;
    console.error(`release check failed: ${err.message}`);
    Deno.exit(1);
  }
}
