/**
 * dprl: an HTTP/HTTPS forward proxy that caps the number of concurrent
 * upstream connections per host, in one process or across a fleet of
 * processes that share their counters through Redis.
 *
 * Point `HTTP_PROXY`/`HTTPS_PROXY` (or any proxy-aware client) at it; every
 * upstream host gets at most N open connections, and a request over the cap is
 * refused at once with an explained error instead of overloading the host.
 *
 * Run as a program, this module starts the command-line proxy:
 *
 * ```sh
 * deno run --allow-net --allow-sys=networkInterfaces,hostname --allow-read=/etc/dprl --allow-env='DPRL_*,REDIS_*,LOG_LEVEL' --ignore-env --v8-flags=--max-semi-space-size=4 jsr:@dprl/cli --help
 * ```
 *
 * As a library in memory mode it needs only `--allow-net`, in a worker too;
 * Redis mode also needs `--ignore-env` (or `--allow-env`).
 *
 * @example Local in-memory limits
 * ```ts ignore
 * import { ProxyRateLimiter } from "@dprl/cli";
 *
 * await using proxy = new ProxyRateLimiter({ defaultMaxConnectionsPerHost: 20 });
 * proxy.setHostLimit("api.example.com", 5);
 * await proxy.start();
 *
 * const client = Deno.createHttpClient({ proxy: { url: proxy.proxyUrl!.href } });
 * const res = await fetch("https://api.example.com/data", { client });
 * ```
 *
 * @example A fleet sharing one cap through Redis
 * ```ts ignore
 * import { ProxyRateLimiter } from "@dprl/cli";
 *
 * const proxy = new ProxyRateLimiter({
 *   port: 8080,
 *   defaultMaxConnectionsPerHost: 50,
 *   redis: "redis://127.0.0.1:6379",
 * });
 * await proxy.listenAndServe(); // resolves when stopped
 * ```
 *
 * @module
 */

import { DEFAULTS } from "./lib/defaults.ts";

export {
  type AdminOptions,
  ProxyRateLimiter,
  type ProxyRateLimiterOptions,
  type ReloadOutcome,
} from "./lib/proxy_rate_limiter.ts";
export {
  type DefaultRule,
  type GroupRule,
  type HostRule,
  type LimitRules,
  type RulePath,
  RulesError,
  type RuleSettings,
  validateRules,
} from "./lib/limit/rules/rules.ts";
export type { RuleDifference } from "./lib/limit/rules/diff.ts";
export { LoadedRules, type ReloadContext } from "./lib/config/reload.ts";
export type { FleetLimitChanges } from "./lib/limit/limit_changes.ts";
export type { AdminHandlerOptions } from "./lib/admin/admin_handler.ts";
export { hostKey } from "./lib/limit/host_key.ts";
export type { FailureMode } from "./lib/limit/redis_config.ts";
export type {
  RedisClient,
  RedisClusterConfig,
  RedisConfig,
  RedisNode,
  RedisOptions,
} from "./lib/limit/redis_config.ts";
export type { Timeouts } from "./lib/defaults.ts";
export type { TlsSource } from "./lib/proxy/proxy_port.ts";
export type { TlsPem } from "./lib/proxy/tls_listener.ts";
export { LimiterUnavailableError } from "./lib/limit/limiter.ts";
export { VERSION } from "./lib/version.ts";

/** The default prefix of dprl's Redis keys. */
export const REDIS_KEY_PREFIX: string = DEFAULTS.redisPrefix;

if (import.meta.main) {
  const { main } = await import("./cli.ts");
  Deno.exit(await main(Deno.args));
}
