/**
 * The notes of a release: the section of `CHANGELOG.md` headed
 * `## [X.Y.Z] - YYYY-MM-DD`, without its heading. The release workflow checks
 * that the section exists before it publishes anything, and gives it to the
 * GitHub release:
 *
 * ```sh
 * deno run --allow-read=CHANGELOG.md scripts/release_notes.ts 0.1.0 > notes.md
 * ```
 *
 * A version without a section (still under "Unreleased") gets one line on
 * stderr and exit code 1.
 *
 * @module
 */

/** A heading of a version's section: `## [1.2.3] - 2025-01-31` (or `## [Unreleased]`). */
const HEADING = /^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?\s*$/;

/** One section of a Keep a Changelog file. */
export interface ChangelogSection {
  /** The version, or `Unreleased`. */
  version: string;
  /** The release date, `YYYY-MM-DD`; absent for Unreleased. */
  date?: string;
  /** The section's text without its heading, trimmed. */
  body: string;
}

/** The `## [...]` sections of a Keep a Changelog file, in their order. */
export function changelogSections(changelog: string): ChangelogSection[] {
  const sections: ChangelogSection[] = [];
  let current: { version: string; date?: string; lines: string[] } | null = null;
  const close = (): void => {
    if (current) {
      const { version, date, lines } = current;
      sections.push({ version, ...(date ? { date } : {}), body: lines.join("\n").trim() });
    }
  };
  for (const line of changelog.split("\n")) {
    const heading = HEADING.exec(line);
    // The link definitions at the end of the file belong to no section.
    if (heading || /^## /.test(line) || /^\[[^\]]+\]: \S+$/.test(line)) {
      close();
      current = heading ? { version: heading[1], date: heading[2], lines: [] } : null;
      continue;
    }
    current?.lines.push(line);
  }
  close();
  return sections;
}

/** The notes of `version`: its section's text, or `null` when the changelog has none. */
export function releaseNotes(changelog: string, version: string): string | null {
  return changelogSections(changelog).find((s) => s.version === version)?.body ?? null;
}

if (import.meta.main) {
  const version = Deno.args[0];
  if (!version || Deno.args.length > 1) {
    console.error("release notes: give one version, as 1.2.3");
    Deno.exit(2);
  }
  const changelog = await Deno.readTextFile(new URL("../CHANGELOG.md", import.meta.url));
  const notes = releaseNotes(changelog, version);
  if (notes === null) {
    console.error(
      `release notes: CHANGELOG.md has no section "## [${version}] - YYYY-MM-DD"; ` +
        `move what is under Unreleased there`,
    );
    Deno.exit(1);
  }
  console.log(notes);
}
