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
import { type HostSummary, summarizeHosts } from "../metrics/host_summary.ts";
import { PROMETHEUS_CONTENT_TYPE, renderPrometheus } from "../metrics/prometheus.ts";
import { REFUSAL_REASONS } from "../metrics/proxy_stats.ts";
import type { AdminSource } from "./admin_source.ts";
import { DASHBOARD_CSP, DASHBOARD_HTML } from "./dashboard.ts";

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

type Handler = (req: Request, url: URL, rest: string) => Promise<Response> | Response;
interface Route {
  /** Exact path, or a prefix ending in `/` that takes one more segment. */
  path: string;
  methods: Record<string, Handler>;
  open?: boolean;
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
  if (token !== undefined) checkToken(token);
  const tokenDigest = token === undefined ? undefined : digest(token);
  const maxHosts = options.metricsMaxHosts ?? DEFAULTS.metricsMaxHosts;
  if (!Number.isSafeInteger(maxHosts) || maxHosts < 0) {
    throw new RangeError(`Metrics max hosts must be a non-negative integer, got ${maxHosts}`);
  }

  const hostRows = (): HostSummary[] =>
    summarizeHosts({
      stats: source.stats.hosts(),
      hosts: source.hosts(),
      limitFor: (host) => source.limitFor(host),
    });

  const routes: Route[] = [
    {
      path: "/healthz",
      open: true,
      methods: { GET: () => text(200, "ok\n") },
    },
    {
      path: "/readyz",
      open: true,
      methods: {
        GET: () => {
          const ready = source.ready();
          return ready.ok
            ? text(200, "ready\n")
            : text(503, `not ready: ${ready.reason ?? "unknown"}\n`);
        },
      },
    },
    {
      path: "/",
      open: true,
      methods: {
        GET: () =>
          new Response(DASHBOARD_HTML, {
            headers: {
              "content-type": "text/html; charset=utf-8",
              "content-security-policy": DASHBOARD_CSP,
              "x-content-type-options": "nosniff",
              "referrer-policy": "no-referrer",
              "cache-control": "no-store",
            },
          }),
      },
    },
    {
      path: "/metrics",
      methods: {
        GET: () => {
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
          });
          return new Response(body, {
            headers: { "content-type": PROMETHEUS_CONTENT_TYPE, "cache-control": "no-store" },
          });
        },
      },
    },
    {
      path: "/api/status",
      methods: {
        GET: () => {
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
          });
        },
      },
    },
    {
      path: "/api/hosts",
      methods: {
        GET: (_req, url) => {
          const param = url.searchParams.get("limit");
          let limit = HOSTS_PAGE;
          if (param !== null) {
            limit = Number(param);
            if (!/^[0-9]{1,6}$/.test(param) || limit < 1) {
              return problem(
                400,
                `Query parameter limit must be an integer from 1, got "${param}"`,
              );
            }
          }
          const rows = hostRows();
          return json(200, { total: rows.length, hosts: rows.slice(0, limit).map(hostJson) });
        },
      },
    },
    {
      path: "/api/hosts/",
      methods: {
        GET: (_req, _url, rest) => {
          const host = parseHost(rest);
          if (host instanceof Response) return host;
          const row = hostRows().find((r) => r.host === host) ??
            { host, open: 0, idle: 0, queued: 0, limit: source.limitFor(host) };
          return json(200, hostJson(row));
        },
      },
    },
    {
      path: "/api/limits",
      methods: {
        GET: () => json(200, source.limitTable()),
        PUT: async (req) => {
          const body = await readJson(req, "default");
          if (body instanceof Response) return body;
          const bad = await tryChange(() => source.setDefaultLimit(body));
          return bad ?? json(200, source.limitTable());
        },
      },
    },
    {
      path: "/api/limits/",
      methods: {
        PUT: async (req, _url, rest) => {
          const host = parseHost(rest);
          if (host instanceof Response) return host;
          const body = await readJson(req, "limit");
          if (body instanceof Response) return body;
          const bad = await tryChange(() => source.setHostLimit(host, body));
          return bad ?? json(200, { host, limit: source.limitFor(host) });
        },
        DELETE: async (_req, _url, rest) => {
          const host = parseHost(rest);
          if (host instanceof Response) return host;
          const bad = await tryChange(() => source.removeHostLimit(host));
          return bad ?? json(200, { host, limit: source.limitFor(host) });
        },
      },
    },
    {
      path: "/api/reload",
      methods: {
        POST: async () => {
          if (source.reload === undefined) {
            return problem(404, "The proxy has no config file to reload");
          }
          const result = await source.reload();
          return result.ok
            ? json(200, { reloaded: true, changes: result.changes })
            : problem(422, `The config file is invalid; the old rules stay: ${result.error}`);
        },
      },
    },
    {
      path: "/api/workers",
      methods: {
        GET: async () => {
          if (source.workers === undefined) {
            return problem(404, "Workers are listed only in distributed mode");
          }
          try {
            const workers = await source.workers();
            return json(200, { workers });
          } catch (err) {
            return problem(503, `Workers cannot be listed: ${message(err)}`);
          }
        },
      },
    },
  ];

  return async (req: Request): Promise<Response> => {
    let url: URL;
    try {
      url = new URL(req.url);
    } catch {
      return problem(400, "Request URL cannot be parsed");
    }
    const path = url.pathname;
    let route: Route | undefined;
    let rest = "";
    for (const r of routes) {
      if (r.path === path) {
        route = r;
        break;
      }
      if (r.path.endsWith("/") && r.path !== "/" && path.startsWith(r.path)) {
        rest = path.slice(r.path.length);
        if (rest !== "" && !rest.includes("/")) {
          route = r;
          break;
        }
      }
    }
    if (tokenDigest !== undefined && !route?.open && !authorized(req, tokenDigest)) {
      const res = problem(401, "This endpoint needs an Authorization: Bearer token");
      res.headers.set("www-authenticate", 'Bearer realm="dprl admin"');
      return res;
    }
    if (route === undefined) return problem(404, `No endpoint at ${path}`);
    const head = req.method === "HEAD";
    const handler = route.methods[head ? "GET" : req.method];
    if (handler === undefined) {
      const allow = Object.keys(route.methods);
      if (allow.includes("GET")) allow.push("HEAD");
      const res = problem(405, `Method ${req.method} is not allowed on ${path}`);
      res.headers.set("allow", allow.join(", "));
      return res;
    }
    if (!head && req.method !== "GET") {
      const refused = refuseChange(req, url, tokenDigest === undefined && source.mode === "redis");
      if (refused) return refused;
    }
    let res: Response;
    try {
      res = await handler(req, url, rest);
    } catch (err) {
      res = problem(500, `Admin request failed: ${message(err)}`);
    }
    return head ? new Response(null, { status: res.status, headers: res.headers }) : res;
  };
}

function hostJson(row: HostSummary): Record<string, unknown> {
  const stats = row.stats;
  return {
    host: row.host,
    open: row.open,
    idle: row.idle,
    queued: row.queued,
    fleetOpen: row.fleetOpen ?? null,
    limit: row.limit > 0 ? row.limit : 0,
    admitted: stats?.admitted ?? 0,
    refused: stats?.refusedTotal ?? 0,
    refusedByReason: Object.fromEntries(
      REFUSAL_REASONS.map((reason) => [reason, stats?.refused[reason] ?? 0]),
    ),
    upstreamErrors: Object.fromEntries(stats?.upstreamErrors ?? []),
  };
}

/** Decodes and normalises the host segment of a path, or answers 400. */
function parseHost(segment: string): string | Response {
  let decoded: string;
  try {
    decoded = decodeURIComponent(segment);
  } catch {
    return problem(400, "Host in the path is not valid percent-encoding");
  }
  const key = decoded.length <= 300 ? hostKey(decoded) : "";
  if (!HOST_PATTERN.test(key)) {
    return problem(400, `Not a host name: ${JSON.stringify(decoded.slice(0, 300))}`);
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
function refuseChange(req: Request, url: URL, tokenNeeded: boolean): Response | undefined {
  const site = req.headers.get("sec-fetch-site");
  if (site !== null && site !== "same-origin" && site !== "none") {
    return problem(403, `A ${site} request cannot change the admin server's state`);
  }
  const origin = req.headers.get("origin");
  if (origin !== null && originHost(origin) !== url.host) {
    return problem(403, `Origin ${origin.slice(0, 200)} may not change the admin server's state`);
  }
  const type = req.headers.get("content-type");
  if (type !== null && !/^application\/(.+\+)?json\s*(;|$)/i.test(type)) {
    return problem(415, `Body must be application/json, got ${type.slice(0, 200)}`);
  }
  if (tokenNeeded) {
    return problem(
      403,
      "In distributed mode a change through the admin API needs an admin token (--admin-token): " +
        "without one, a client of any proxy of the fleet could reach this port",
    );
  }
  return undefined;
}

/** The host (and port) of an `Origin` header, or `null` for `null` and garbage. */
function originHost(origin: string): string | null {
  try {
    return new URL(origin).host || null;
  } catch {
    return null;
  }
}

/** Reads `{"<field>": N}` with N a non-negative integer, or answers 400/413. */
async function readJson(req: Request, field: string): Promise<number | Response> {
  const bytes = await readBounded(req);
  if (bytes === null) return problem(413, `Body is larger than ${MAX_BODY} bytes`);
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    return problem(400, `Body is not valid JSON; expected {"${field}": N}`);
  }
  if (
    typeof body !== "object" || body === null || Array.isArray(body) ||
    Object.keys(body).length !== 1 || !(field in body)
  ) {
    return problem(400, `Body must be exactly {"${field}": N}`);
  }
  const value = (body as Record<string, unknown>)[field];
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    return problem(
      400,
      `${field} must be a non-negative integer, got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

async function readBounded(req: Request): Promise<Uint8Array | null> {
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > MAX_BODY) {
    await req.body?.cancel();
    return null;
  }
  if (req.body === null) return new Uint8Array();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of req.body) {
    size += chunk.byteLength;
    if (size > MAX_BODY) return null;
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

/** Runs a change; a RangeError or TypeError from the source becomes a 400. */
async function tryChange(change: () => void | Promise<void>): Promise<Response | undefined> {
  try {
    await change();
  } catch (err) {
    if (err instanceof RangeError || err instanceof TypeError) return problem(400, err.message);
    return problem(503, `The limit was not changed: ${message(err)}`);
  }
  return undefined;
}

function checkToken(token: string): void {
  if (!/^[!-~]+$/.test(token)) {
    throw new RangeError("Admin token must be non-empty printable ASCII without spaces");
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

const TITLES: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  413: "Content Too Large",
  415: "Unsupported Media Type",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

/** An RFC 9457 problem response. */
function problem(status: number, detail: string): Response {
  return new Response(
    JSON.stringify({ type: "about:blank", title: TITLES[status] ?? "Error", status, detail }),
    {
      status,
      headers: { "content-type": "application/problem+json", "cache-control": "no-store" },
    },
  );
}
