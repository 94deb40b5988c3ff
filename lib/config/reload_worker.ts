/**
 * The `Worker` of `loadRulesFile`: reads and checks the config file and
 * compiles its table away from the proxy's event loop, one request per
 * worker.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { ConfigError } from "./config_file.ts";
import { compileRulesFile, type LoadReply, type LoadRequest } from "./reload.ts";

self.onmessage = async ({ data }: MessageEvent<LoadRequest>) => {
  let reply: LoadReply;
  try {
    reply = await compileRulesFile(data);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    reply = { ok: false, file: err.file, problem: err.problem, line: err.line, column: err.column };
  }
  self.postMessage(reply);
};
