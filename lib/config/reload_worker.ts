/**
 * The `Worker` of `loadRulesFile`: reads and checks the config file and
 * compiles its table away from the proxy's event loop, one request per
 * worker.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { ConfigError } from "./config_file.ts";
import { RuleTable } from "../limit/rules/rule_table.ts";
import { compileRulesFile, type LoadReply, type LoadRequest } from "./reload.ts";

self.onmessage = async ({ data }: MessageEvent<LoadRequest>) => {
  let reply: LoadReply;
  try {
    reply = await compileRulesFile(data);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    reply = { ok: false, file: err.file, problem: err.problem, line: err.line, column: err.column };
  }
  // The table's typed arrays move to the proxy's thread, not copied.
  self.postMessage(reply, reply.ok ? RuleTable.buffers(reply.table) : []);
};
