/**
 * The dashboard: one self-contained page (inline style and script, no
 * external resource) that polls the JSON API every second.
 *
 * @module
 */

import { createHash } from "node:crypto";

const STYLE = `
:root { color-scheme: light dark; --bg: #f6f7f9; --card: #fff; --fg: #1b1f24; --muted: #5b6470;
  --line: #dde1e6; --ok: #1f883d; --warn: #bf8700; --bad: #cf222e; --bar: #3b82f6; }
@media (prefers-color-scheme: dark) { :root { --bg: #0f1217; --card: #171b22; --fg: #e6e9ee;
  --muted: #9aa4b2; --line: #2a313c; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; background: var(--bg); color: var(--fg); }
header { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: baseline; padding: 14px 24px;
  border-bottom: 1px solid var(--line); background: var(--card); }
header h1 { font-size: 18px; margin: 0 12px 0 0; }
main { padding: 16px 24px; display: grid; gap: 16px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px;
  overflow-x: auto; }
h2 { font-size: 15px; margin: 0 0 8px; }
.kv { color: var(--muted); } .kv b { color: var(--fg); font-weight: 600; }
.pill { display: inline-block; padding: 0 8px; border-radius: 10px; color: #fff; font-weight: 600; }
.up { background: var(--ok); } .down { background: var(--bad); } .na { background: var(--muted); }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; }
td.host { font-family: ui-monospace, monospace; max-width: 28em; overflow: hidden; text-overflow: ellipsis; }
td.num { text-align: right; }
.use { display: flex; align-items: center; gap: 10px; }
.bar { position: relative; width: 200px; height: 14px; background: var(--line); border-radius: 4px; overflow: hidden; }
.bar > i { position: absolute; inset: 0 auto 0 0; background: var(--bar); }
.bar.full > i { background: var(--bad); } .bar.high > i { background: var(--warn); }
.usage { font-weight: 600; min-width: 5em; }
.paused { background: var(--warn); font-size: 12px; }
.reason { color: var(--muted); max-width: 18em; overflow: hidden; text-overflow: ellipsis; }
table.no-rate .rate { display: none; }
[hidden] { display: none !important; }
form { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; }
input { font: inherit; padding: 4px 8px; border: 1px solid var(--line); border-radius: 4px;
  background: var(--bg); color: var(--fg); }
button { font: inherit; padding: 4px 12px; border-radius: 4px; border: 1px solid var(--line);
  background: var(--bar); color: #fff; cursor: pointer; }
button.plain { background: transparent; color: var(--fg); }
#message { color: var(--muted); } #message.error { color: var(--bad); }
.empty { color: var(--muted); padding: 8px; }
`;

const SCRIPT = `
"use strict";
const $ = (id) => document.getElementById(id);
let token = new URLSearchParams(location.hash.slice(1)).get("token") || sessionStorage.getItem("dprl-token") || "";
if (token) sessionStorage.setItem("dprl-token", token);
if (location.hash) history.replaceState(null, "", location.pathname + location.search);
let asked = false;
let mode = null;
let previous = new Map();
let previousAt = 0;
let skew = 0;

// The server's clock minus this browser's, when the Date header (to the second) shows they differ.
function noteServerClock(res) {
  const date = Date.parse(res.headers.get("date") || "");
  if (Number.isNaN(date)) return;
  const estimate = date + 500 - Date.now();
  skew = Math.abs(estimate) > 1500 ? estimate : 0;
}

async function api(path, init = {}) {
  const headers = new Headers(init.headers);
  if (token) headers.set("authorization", "Bearer " + token);
  const res = await fetch(path, { ...init, headers, cache: "no-store" });
  noteServerClock(res);
  if (res.status === 401) {
    const given = asked ? null : prompt("Admin token");
    asked = !given;
    if (given) { token = given.trim(); sessionStorage.setItem("dprl-token", token); }
    throw new Error("unauthorized: open the page as /#token=<token>");
  }
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) throw new Error(body?.detail || res.status + " " + res.statusText);
  return body;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value; else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24,
    m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  return d ? d + "d " + h + "h" : h ? h + "h " + m + "m" : m ? m + "m " + s + "s" : s + "s";
}

const count = (n) => n.toLocaleString("en-US");
// A field given as a finite number or a non-empty string (fields the server does not send are absent or null).
const present = (value, type) =>
  type === "number" ? Number.isFinite(value) : typeof value === "string" && value !== "";

// A pause's end (ms since epoch on the server's clock) from a number or a date string, else null.
function pauseEnd(value) {
  const at = present(value, "number") ? value : present(value, "string") ? Date.parse(value) : NaN;
  return Number.isFinite(at) ? at : null;
}

// Shows a pause badge's seconds left (rounded up, at least 1), or hides it once the pause is over.
function showPause(badge) {
  const until = Number(badge.dataset.until);
  const left = (until - skew - Date.now()) / 1000;
  badge.hidden = !(left > 0);
  if (badge.hidden) return;
  badge.textContent = "paused " + Math.max(1, Math.ceil(left)) + " s";
  badge.title = "The host asked for a pause (429 or 503 with Retry-After) until " +
    new Date(until - skew).toLocaleString();
}

function pauseBadge(h) {
  const badge = el("span", { class: "pill paused" });
  const until = pauseEnd(h.pausedUntil);
  badge.dataset.until = until === null ? "0" : String(until);
  showPause(badge);
  return badge;
}

// Open connections against the limit that applies: the effective one when it differs (adaptive).
function usageCell(h) {
  const used = h.fleetOpen ?? h.open;
  const configured = Math.max(0, h.limit);
  const adaptive = present(h.effectiveLimit, "number") && Math.max(0, h.effectiveLimit) !== configured;
  const limit = adaptive ? Math.max(0, h.effectiveLimit) : configured;
  const ratio = limit > 0 ? Math.min(1, used / limit) : 0;
  const usage = el("span", { class: "usage",
    text: used + " / " + (limit > 0 ? limit : "\\u221e") + (adaptive ? " (adaptive)" : "") });
  const notes = [];
  if (adaptive) notes.push("configured limit " + (configured > 0 ? configured : "unlimited"));
  if (present(h.limitReason, "string")) notes.push("last change: " + h.limitReason);
  if (notes.length) usage.title = notes.join("; ");
  const cell = el("div", { class: "use" },
    el("div", { class: "bar" + (limit > 0 && used >= limit ? " full" : ratio >= 0.8 ? " high" : "") },
      el("i", { style: "width:" + (ratio * 100).toFixed(1) + "%" })),
    usage);
  if (present(h.limitReason, "string")) {
    cell.append(el("small", { class: "reason", title: h.limitReason, text: h.limitReason }));
  }
  cell.append(pauseBadge(h));
  return cell;
}

function renderStatus(s) {
  mode = s.mode;
  $("version").textContent = s.version;
  $("mode").textContent = s.mode === "redis" ? "distributed (Redis)" : "in memory";
  const redis = $("redis");
  redis.textContent = s.redis === null ? "not used" : s.redis;
  redis.className = "pill " + (s.redis === null ? "na" : s.redis === "up" ? "up" : "down");
  const ready = $("ready");
  ready.textContent = s.ready.ok ? "ready" : "not ready: " + (s.ready.reason || "");
  ready.className = "pill " + (s.ready.ok ? "up" : "down");
  $("uptime").textContent = duration(s.uptimeSeconds);
  $("worker").textContent = s.workerId || "-";
  $("proxy").textContent = s.proxyUrl || "-";
  $("clients").textContent = String(s.clientConnections);
  $("default").textContent = s.defaultLimit > 0 ? String(s.defaultLimit) : "unlimited";
  $("workers-section").hidden = s.mode !== "redis";
}

function hostRow(h, rate) {
  const edit = el("button", { class: "plain", type: "button", text: "edit" });
  edit.addEventListener("click", () => { $("f-host").value = h.host; $("f-limit").value = h.limit; $("f-limit").focus(); });
  return el("tr", { "data-host": h.host },
    el("td", { class: "host", title: h.host, text: h.host }), el("td", {}, usageCell(h)),
    el("td", { class: "rate", text: present(h.rate, "string") ? h.rate : "-" }),
    el("td", { class: "num", text: String(h.open) }), el("td", { class: "num", text: String(h.idle) }),
    el("td", { class: "num", text: String(h.queued ?? 0) }),
    el("td", { class: "num", text: h.fleetOpen === null ? "-" : String(h.fleetOpen) }),
    el("td", { class: "num", text: count(h.admitted) }),
    el("td", { class: "num refusals", text: rate.toFixed(1) }),
    el("td", { class: "num", text: count(h.refused) }), el("td", {}, edit));
}

function renderHosts(data) {
  const now = performance.now();
  const seconds = previousAt ? (now - previousAt) / 1000 : 0;
  const next = new Map();
  const rows = [];
  for (const h of data.hosts) {
    next.set(h.host, h.refused);
    const before = previous.get(h.host);
    rows.push(hostRow(h, seconds > 0 && before !== undefined ? Math.max(0, h.refused - before) / seconds : 0));
  }
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { class: "empty", colspan: "11", text: "No upstream connections yet" })));
  $("hosts").replaceChildren(...rows);
  $("hosts-table").classList.toggle("no-rate", !data.hosts.some((h) => present(h.rate, "string")));
  $("host-count").textContent = data.total > data.hosts.length ? "(busiest " + data.hosts.length + " of " + data.total + ")" : "";
  previous = next;
  previousAt = now;
}

function renderWorkers(data) {
  const rows = data.workers.map((w) => {
    const admin = el("td", {});
    try {
      const url = new URL(w.adminUrl);
      if (url.protocol === "http:" || url.protocol === "https:") admin.append(el("a", { href: url.href, text: url.host }));
    } catch { admin.textContent = "-"; }
    return el("tr", {}, el("td", { class: "host", text: w.id }), el("td", { text: w.hostname }),
      el("td", { class: "num", text: String(w.pid) }), el("td", { text: w.version }),
      el("td", { class: "num", text: String(w.open) }),
      el("td", { text: new Date(w.startedAt).toLocaleString() }), admin);
  });
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { class: "empty", colspan: "7", text: "No live workers" })));
  $("workers").replaceChildren(...rows);
}

function say(text, error = false) {
  const m = $("message");
  m.textContent = text;
  m.className = error ? "error" : "";
}

async function tick() {
  try {
    renderStatus(await api("/api/status"));
    renderHosts(await api("/api/hosts?limit=50"));
    if (mode === "redis") renderWorkers(await api("/api/workers"));
    $("updated").textContent = new Date().toLocaleTimeString();
  } catch (err) {
    $("updated").textContent = "update failed: " + err.message;
  }
  setTimeout(tick, 1000);
}

async function change(method) {
  const host = $("f-host").value.trim();
  if (!host) return say("Name a host", true);
  const init = { method };
  if (method === "PUT") {
    const limit = Number($("f-limit").value);
    init.headers = { "content-type": "application/json" };
    init.body = JSON.stringify({ limit });
  }
  try {
    const res = await api("/api/limits/" + encodeURIComponent(host), init);
    say("Limit of " + res.host + " is now " + (res.limit > 0 ? res.limit : "unlimited"));
  } catch (err) {
    say(err.message, true);
  }
}

$("limit-form").addEventListener("submit", (event) => { event.preventDefault(); change("PUT"); });
$("remove").addEventListener("click", () => change("DELETE"));
setInterval(() => document.querySelectorAll(".paused").forEach(showPause), 500);
tick();
`;

/** The dashboard page. */
export const DASHBOARD_HTML: string = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dprl</title>
<style>${STYLE}</style>
</head>
<body>
<header>
  <h1>dprl <span class="kv" id="version"></span></h1>
  <span class="kv">mode <b id="mode">-</b></span>
  <span class="kv">Redis <span class="pill na" id="redis">-</span></span>
  <span class="pill na" id="ready">-</span>
  <span class="kv">up <b id="uptime">-</b></span>
  <span class="kv">worker <b id="worker">-</b></span>
  <span class="kv">proxy <b id="proxy">-</b></span>
  <span class="kv">clients <b id="clients">-</b></span>
  <span class="kv">default limit <b id="default">-</b></span>
  <span class="kv">updated <b id="updated">-</b></span>
</header>
<main>
<section>
  <h2>Hosts <span class="kv" id="host-count"></span></h2>
  <table id="hosts-table" class="no-rate">
    <thead><tr><th>host</th><th>open / limit</th><th class="rate">rate</th><th>open here</th><th>idle here</th><th>queued here</th><th>fleet</th>
      <th>admitted</th><th>refused/s</th><th>refused</th><th></th></tr></thead>
    <tbody id="hosts"></tbody>
  </table>
</section>
<section>
  <h2>Change a limit</h2>
  <form id="limit-form">
    <input id="f-host" name="host" placeholder="host[:port]" required size="32" autocomplete="off">
    <input id="f-limit" name="limit" type="number" min="0" step="1" placeholder="limit" required>
    <button type="submit" id="set">Set limit</button>
    <button type="button" class="plain" id="remove">Remove override</button>
    <span id="message"></span>
  </form>
</section>
<section id="workers-section" hidden>
  <h2>Workers</h2>
  <table>
    <thead><tr><th>id</th><th>host name</th><th>pid</th><th>version</th><th>open</th><th>started</th>
      <th>admin</th></tr></thead>
    <tbody id="workers"></tbody>
  </table>
</section>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;

/**
 * The Content-Security-Policy of the dashboard: its own inline script (by
 * hash) and style, requests only to its own origin.
 */
export const DASHBOARD_CSP: string = [
  "default-src 'none'",
  `script-src 'sha256-${createHash("sha256").update(SCRIPT).digest("base64")}'`,
  "style-src 'unsafe-inline'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");
