/**
 * The admin handler: health checks, Prometheus metrics, the JSON API and
 * the dashboard, as one `(Request) => Promise<Response>` that any
 * `Deno.serve` can mount.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import { DEFAULTS } from "../defaults.ts";
import { hostKey } from "../limit/host_key.ts";
import {
  formatRulePath,
  type HostRule,
  normalizeRules,
  parseHostPattern,
  RulesError,
} from "../limit/rules/rules.ts";
import { formatRate } from "../limit/gcra.ts";
import { type HostSummary, summarizeHosts } from "../metrics/host_summary.ts";
import { PROMETHEUS_CONTENT_TYPE, renderPrometheus } from "../metrics/prometheus.ts";
import { REFUSAL_REASONS } from "../metrics/proxy_stats.ts";
import type { AdminSource } from "./admin_source.ts";
import { DASHBOARD_CSP, DASHBOARD_HTML } from "./dashboard.ts";
import { InvalidInput, Problem } from "./problem.ts";

/** Options of {@linkcode createAdminHandler}. */
export interface AdminHandlerOptions {
  /**
   * When set, every endpoint except `/healthz`, `/readyz` and the dashboard
   * page itself (which holds no data) needs `Authorization: Bearer <token>`.
   */
  token?: string;
  /**
   * Most hosts given their own metric series; the rest are summed under
   * `host="_other"`. Default `DEFAULTS.metricsMaxHosts` (500).
   */
  metricsMaxHosts?: number;
}

/** Largest request body the API reads, in bytes. */
const MAX_BODY = 64 * 1024;
/** Hosts listed by `GET /api/hosts` unless `?limit=` says otherwise. */
const HOSTS_PAGE = 100;
/** Characters of a host key as it may appear in a limit (wildcards included). */
const HOST_PATTERN = /^[a-z0-9._*\-]+(:[0-9]{1,5})?$|^\[[0-9a-f:.]+\](:[0-9]{1,5})?$/;
const JSON_TYPE = /^application\/(.+\+)?json\s*(;|$)/i;

/** One admin request as an endpoint sees it. */
interface Call {
  req: Request;
  url: URL;
  /** The `{host}` segment of the path, still percent-encoded. */
  host?: string;
  source: AdminSource;
  maxHosts: number;
}

type Endpoint = (call: Call) => Response | Promise<Response>;

interface Route {
  pattern: URLPattern;
  methods: Record<string, Endpoint>;
  /** Served without the token. */
  open?: boolean;
}

const ROUTES: Route[] = [
  route("/healthz", { GET: healthz }, true),
  route("/readyz", { GET: readyz }, true),
  route("/", { GET: dashboard }, true),
  route("/metrics", { GET: metrics }),
  route("/api/status", { GET: status }),
  route("/api/hosts", { GET: listHosts }),
  route("/api/hosts/:host", { GET: showHost }),
  route("/api/limits", { GET: showLimits, PUT: setDefaultLimit }),
  route("/api/limits/:host", { PUT: setHostLimit, DELETE: removeHostLimit }),
  route("/api/reload", { POST: reload }),
  route("/api/workers", { GET: workers }),
];

function route(pathname: string, methods: Record<string, Endpoint>, open = false): Route {
  return { pattern: new URLPattern({ pathname }), methods, open };
}

/**
 * Creates the admin handler for a proxy.
 *
 * Endpoints: `GET /healthz`, `GET /readyz`, `GET /metrics`,
 * `GET /api/status`, `GET /api/hosts`, `GET /api/hosts/{host}`,
 * `GET /api/limits`, `PUT /api/limits` (`{"default": N}`),
 * `PUT /api/limits/{host}` (`{"limit": N}`), `DELETE /api/limits/{host}`,
 * `POST /api/reload` (reads the config file again), `GET /api/workers`
 * (distributed mode) and `GET /` (the dashboard). In distributed mode the
 * limit changes go to the fleet's table.
 * Errors are RFC 9457 `application/problem+json`; bad input changes nothing.
 *
 * @example
 * ```ts ignore
 * const handler = createAdminHandler(proxy.adminSource, { token: "s3cret" });
 * Deno.serve({ port: 9090 }, handler);
 * ```
 */
export function createAdminHandler(
  source: AdminSource,
  options: AdminHandlerOptions = {},
): (req: Request) => Promise<Response> {
  const token = options.token;
  if (token !== undefined && !isAdminToken(token)) {
    throw new RangeError("Admin token must be non-empty printable ASCII without spaces");
  }
  const tokenDigest = token === undefined ? undefined : digest(token);
  const maxHosts = options.metricsMaxHosts ?? DEFAULTS.metricsMaxHosts;
  if (!Number.isSafeInteger(maxHosts) || maxHosts < 0) {
    throw new RangeError(`Metrics max hosts must be a non-negative integer, got ${maxHosts}`);
  }
  return async (req: Request): Promise<Response> => {
    let res: Response;
    try {
      res = await dispatch(req, { source, maxHosts, tokenDigest });
    } catch (err) {
      res = err instanceof Problem
        ? err.response()
        : new Problem(500, `Admin request failed: ${message(err)}`).response();
    }
    return req.method === "HEAD"
      ? new Response(null, { status: res.status, headers: res.headers })
      : res;
  };
}

/**
 * Whether `token` may be an admin token: non-empty printable ASCII without
 * spaces, as an `Authorization: Bearer` field carries it.
 *
 * @example
 * ```ts
 * import { isAdminToken } from "./admin_handler.ts";
 * isAdminToken("two words"); // false
 * ```
 */
export function isAdminToken(token: string): boolean {
  return /^[!-~]+$/.test(token);
}

/** Finds the endpoint, checks the token and the request, and calls it. */
function dispatch(
  req: Request,
  o: { source: AdminSource; maxHosts: number; tokenDigest?: Uint8Array },
): Response | Promise<Response> {
  let url: URL;
  try {
    url = new URL(req.url);
  } catch {
    throw new InvalidInput("Request URL cannot be parsed");
  }
  const path = url.pathname;
  let found: { route: Route; host?: string } | undefined;
  for (const route of ROUTES) {
    const match = route.pattern.exec({ pathname: path });
    if (match) {
      found = { route, host: match.pathname.groups.host };
      break;
    }
  }
  if (o.tokenDigest !== undefined && !found?.route.open && !authorized(req, o.tokenDigest)) {
    throw new Problem(401, "This endpoint needs an Authorization: Bearer token", {
      "www-authenticate": 'Bearer realm="dprl admin"',
    });
  }
  if (found === undefined) throw new Problem(404, `No endpoint at ${path}`);
  const methods = found.route.methods;
  const endpoint = methods[req.method === "HEAD" ? "GET" : req.method];
  if (endpoint === undefined) {
    const allow = Object.keys(methods);
    if (allow.includes("GET")) allow.push("HEAD");
    throw new Problem(405, `Method ${req.method} is not allowed on ${path}`, {
      allow: allow.join(", "),
    });
  }
  if (req.method !== "GET" && req.method !== "HEAD") {
    checkChange(req, url, o.tokenDigest === undefined && o.source.mode === "redis");
  }
  return endpoint({ req, url, host: found.host, source: o.source, maxHosts: o.maxHosts });
}

function healthz(): Response {
  return text(200, "ok\n");
}

function readyz({ source }: Call): Response {
  const ready = source.ready();
  return ready.ok ? text(200, "ready\n") : text(503, `not ready: ${ready.reason ?? "unknown"}\n`);
}

function dashboard(): Response {
  return new Response(DASHBOARD_HTML, {
    headers: {
      "content-type": "text/html; charset=utf-8",
      "content-security-policy": DASHBOARD_CSP,
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer",
      "cache-control": "no-store",
    },
  });
}

function metrics({ source, maxHosts }: Call): Response {
  const body = renderPrometheus({
    stats: source.stats,
    hosts: source.hosts(),
    limitFor: (host) => source.limitFor(host),
    defaultLimit: source.defaultLimit,
    version: source.version,
    startedAt: source.startedAt,
    redisUp: source.redisUp(),
    distributed: source.mode === "redis",
    maxHosts,
    parents: source.parents?.(),
  });
  return new Response(body, {
    headers: { "content-type": PROMETHEUS_CONTENT_TYPE, "cache-control": "no-store" },
  });
}

function status({ source }: Call): Response {
  const stats = source.stats;
  const redis = source.redisUp();
  return json(200, {
    version: source.version,
    startedAt: new Date(source.startedAt).toISOString(),
    uptimeSeconds: Math.max(0, Math.floor((Date.now() - source.startedAt) / 1000)),
    mode: source.mode,
    redis: redis === null ? null : redis ? "up" : "down",
    workerId: source.workerId ?? null,
    proxyUrl: source.proxyUrl?.href ?? null,
    adminUrl: source.adminUrl?.href ?? null,
    ready: source.ready(),
    defaultLimit: source.defaultLimit,
    clientConnections: stats.clientConnections,
    requests: stats.requests,
    bytesRelayed: stats.bytesRelayed,
    parents: (source.parents?.() ?? []).map((p) => ({
      ...p,
      backedOffUntil: p.backedOffUntil === null ? null : new Date(p.backedOffUntil).toISOString(),
    })),
  });
}

function listHosts({ source, url }: Call): Response {
  const param = url.searchParams.get("limit");
  let limit = HOSTS_PAGE;
  if (param !== null) {
    limit = Number(param);
    if (!/^[0-9]{1,6}$/.test(param) || limit < 1) {
      throw new InvalidInput(`Query parameter limit must be an integer from 1, got "${param}"`);
    }
  }
  const rows = hostRows(source);
  return json(200, { total: rows.length, hosts: rows.slice(0, limit).map(hostJson) });
}

function showHost(call: Call): Response {
  const host = hostParam(call);
  const { source } = call;
  const row = hostRows(source).find((r) => r.host === host) ??
    { host, open: 0, idle: 0, queued: 0, limit: source.limitFor(host) };
  return json(200, hostJson(row));
}

function showLimits({ source }: Call): Response {
  return json(200, source.limitTable());
}

async function setDefaultLimit({ req, source }: Call): Promise<Response> {
  const limit = await readJson(req, "default");
  await change(() => source.setDefaultLimit(limit));
  return json(200, source.limitTable());
}

async function setHostLimit(call: Call): Promise<Response> {
  const host = hostParam(call);
  const rule = await readHostRule(call.req, host);
  await change(() => call.source.setHostLimit(host, rule));
  const { limit: _, ...settings } = typeof rule === "number" ? { limit: rule } : rule;
  return json(200, { host, ...settings, limit: call.source.limitFor(host) });
}

async function removeHostLimit(call: Call): Promise<Response> {
  const host = hostParam(call);
  await change(() => call.source.removeHostLimit(host));
  return json(200, { host, limit: call.source.limitFor(host) });
}

async function reload({ source }: Call): Promise<Response> {
  if (source.reload === undefined) {
    throw new Problem(404, "The proxy has no config file to reload");
  }
  const result = await source.reload();
  if (!result.ok) {
    throw new Problem(422, `The config file is invalid; the old rules stay: ${result.error}`);
  }
  return json(200, { reloaded: true, changes: result.changes });
}

async function workers({ source }: Call): Promise<Response> {
  if (source.workers === undefined) {
    throw new Problem(404, "Workers are listed only in distributed mode");
  }
  try {
    return json(200, { workers: await source.workers() });
  } catch (err) {
    throw new Problem(503, `Workers cannot be listed: ${message(err)}`);
  }
}

function hostRows(source: AdminSource): HostSummary[] {
  return summarizeHosts({
    stats: source.stats.hosts(),
    hosts: source.hosts(),
    limitFor: (host) => source.limitFor(host),
  });
}

function hostJson(row: HostSummary): Record<string, unknown> {
  const stats = row.stats;
  return {
    host: row.host,
    open: row.open,
    idle: row.idle,
    queued: row.queued,
    fleetOpen: row.fleetOpen ?? null,
    pausedUntil: row.pausedUntil === undefined ? null : new Date(row.pausedUntil).toISOString(),
    limit: row.limit > 0 ? row.limit : 0,
    effectiveLimit: row.adaptive?.limit ?? null,
    limitReason: row.adaptive?.reason ?? null,
    rate: row.rate === undefined ? null : formatRate(row.rate),
    admitted: stats?.admitted ?? 0,
    refused: stats?.refusedTotal ?? 0,
    refusedByReason: Object.fromEntries(
      REFUSAL_REASONS.map((reason) => [reason, stats?.refused[reason] ?? 0]),
    ),
    upstreamErrors: Object.fromEntries(stats?.upstreamErrors ?? []),
  };
}

/** The `{host}` of the path, decoded and normalised: a host key or pattern. */
function hostParam({ host: segment = "" }: Call): string {
  let decoded: string;
  try {
    decoded = decodeURIComponent(segment);
  } catch {
    throw new InvalidInput("Host in the path is not valid percent-encoding");
  }
  const key = decoded.length <= 300 ? hostKey(decoded) : "";
  const shown = JSON.stringify(decoded.slice(0, 300));
  if (!HOST_PATTERN.test(key)) throw new InvalidInput(`Not a host name: ${shown}`);
  try {
    parseHostPattern(key);
  } catch (err) {
    throw new InvalidInput(`Host ${shown} ${message(err)}`);
  }
  return key;
}

/**
 * Refuses a state-changing request that a web page of another origin may
 * have sent (403, as Go's `CrossOriginProtection` does: `Sec-Fetch-Site`
 * other than `same-origin` or `none`, or an `Origin` whose host is not the
 * request's), one whose content type is not JSON (415: HTML forms and
 * `fetch` without a preflight can only send `text/plain`, form and
 * multipart bodies), and, when `tokenNeeded`, every one (403: in
 * distributed mode a change needs the admin token, see README "Security").
 */
function checkChange(req: Request, url: URL, tokenNeeded: boolean): void {
  const site = req.headers.get("sec-fetch-site");
  if (site !== null && site !== "same-origin" && site !== "none") {
    throw new Problem(403, `A ${site} request cannot change the admin server's state`);
  }
  const origin = req.headers.get("origin");
  if (origin !== null && originHost(origin) !== url.host) {
    throw new Problem(
      403,
      `Origin ${origin.slice(0, 200)} may not change the admin server's state`,
    );
  }
  const type = req.headers.get("content-type");
  if (type !== null && !JSON_TYPE.test(type)) {
    throw new Problem(415, `Body must be application/json, got ${type.slice(0, 200)}`);
  }
  if (tokenNeeded) {
    throw new Problem(
      403,
      "In distributed mode a change through the admin API needs an admin token (--admin-token): " +
        "without one, a client of any proxy of the fleet could reach this port",
    );
  }
}

/** The host (and port) of an `Origin` header, or `null` for `null` and garbage. */
function originHost(origin: string): string | null {
  try {
    return new URL(origin).host || null;
  } catch {
    return null;
  }
}

/** Reads `{"<field>": N}` with N a non-negative integer; throws a 400 or 413 problem. */
async function readJson(req: Request, field: string): Promise<number> {
  const bytes = await readBounded(req);
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new InvalidInput(`Body is not valid JSON; expected {"${field}": N}`);
  }
  if (
    typeof body !== "object" || body === null || Array.isArray(body) ||
    Object.keys(body).length !== 1 || !(field in body)
  ) {
    throw new InvalidInput(`Body must be exactly {"${field}": N}`);
  }
  const value = (body as Record<string, unknown>)[field];
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new InvalidInput(
      `${field} must be a non-negative integer, got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

/**
 * A host rule from the body: `{"limit": N}`, or a rule with settings
 * (`limit`, `rate`, `adaptive`, `retry-after-max`, `queue-timeout`,
 * `queue-max`) checked as the config file's rules are.
 */
async function readHostRule(req: Request, host: string): Promise<number | HostRule> {
  const bytes = await readBounded(req);
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new InvalidInput(`Body is not valid JSON; expected {"limit": N} or a host rule`);
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new InvalidInput(`Body must be {"limit": N} or a host rule`);
  }
  try {
    normalizeRules({ hosts: { [host]: body } });
  } catch (err) {
    if (!(err instanceof RulesError)) throw err;
    throw new InvalidInput(`${formatRulePath(err.path.slice(2)) || "The rule"} ${err.problem}`);
  }
  const rule = body as HostRule;
  return Object.keys(rule).length === 1 && rule.limit !== undefined ? rule.limit : rule;
}

/** The body, or a 413 problem beyond {@linkcode MAX_BODY} bytes. */
async function readBounded(req: Request): Promise<Uint8Array> {
  const tooLarge = new Problem(413, `Body is larger than ${MAX_BODY} bytes`);
  if (Number(req.headers.get("content-length") ?? "0") > MAX_BODY) {
    await req.body?.cancel();
    throw tooLarge;
  }
  if (req.body === null) return new Uint8Array();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of req.body) {
    size += chunk.byteLength;
    if (size > MAX_BODY) throw tooLarge;
    chunks.push(chunk);
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.byteLength;
  }
  return out;
}

/**
 * Runs a limit change that the handler has validated: an `Error` from the
 * source means the change could not be made (503, Redis did not answer);
 * a `TypeError`, `RangeError` or `ReferenceError` is a bug and stays a 500.
 */
async function change(run: () => void | Promise<void>): Promise<void> {
  try {
    await run();
  } catch (err) {
    if (
      err instanceof Problem || !(err instanceof Error) || err instanceof TypeError ||
      err instanceof RangeError || err instanceof ReferenceError
    ) throw err;
    throw new Problem(503, `The limit was not changed: ${err.message}`);
  }
}

function digest(value: string): Uint8Array {
  return createHash("sha256").update(value).digest();
}

/** Compares the bearer token with the expected one in constant time (over their digests). */
function authorized(req: Request, expected: Uint8Array): boolean {
  const header = req.headers.get("authorization");
  const match = header === null ? null : /^Bearer\s+(\S+)\s*$/i.exec(header);
  const given = digest(match?.[1] ?? "");
  return timingSafeEqual(given, expected) && match !== null;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function text(status: number, body: string): Response {
  return new Response(body, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" },
  });
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
}
