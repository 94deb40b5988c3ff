/**
 * The version of dprl, read from the `version` field of `deno.json` so that
 * it is written in one place only.
 *
 * @module
 */

import config from "../deno.json" with { type: "json" };

/** The version of dprl, as published (`deno.json`'s `version`). */
export const VERSION: string = config.version;
