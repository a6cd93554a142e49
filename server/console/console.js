// The rtgate admin console. Everything goes through the server API with the API key the
// operator types in (kept for this tab only); the live figures arrive over rtgate's own
// browser client, in the console room each node publishes its /metrics figures to.
import init, { RtgateClient } from "./pkg/rtgate_client.js";

const $ = (id) => document.getElementById(id);
const HISTORY = 120;

// What the page shows, for anyone inspecting it (the browser tests do).
const seen = { figures: 0, nodes: {}, totals: {} };
window.rtgateConsole = seen;

let apiKey = sessionStorage.getItem("rtgate-api-key") ?? "";
let client = null;

async function api(method, path, body) {
  const response = await fetch(`/api/v1${path}`, {
    method,
    headers: {
      authorization: `Bearer ${apiKey}`,
      "content-type": "application/json",
      accept: "application/json",
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json;
  try { json = text ? JSON.parse(text) : {}; } catch { json = { message: text }; }
  if (!response.ok) throw new Error(json.message ?? `${response.status}`);
  return json;
}

// --- Figures: Prometheus samples per node, rates from each node's previous sample. ---

function parse(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

const nodes = new Map();

const sum = (samples, name, match = () => true) =>
  samples.filter((s) => s.name === name && match(s.labels)).reduce((a, s) => a + s.value, 0);

function rate(name, match) {
  let total = 0;
  for (const n of nodes.values()) {
    if (!n.prev) continue;
    const dt = (n.at - n.prev.at) / 1000;
    if (dt > 0) total += Math.max(0, sum(n.samples, name, match) - sum(n.prev.samples, name, match)) / dt;
  }
  return total;
}

// The 99th percentile of the deliveries since each node's previous sample, from the
// histogram's cumulative buckets; null when nothing was delivered.
function p99() {
  const deltas = new Map();
  for (const n of nodes.values()) {
    if (!n.prev) continue;
    for (const s of n.samples) {
      if (s.name !== "rtgate_delivery_seconds_bucket") continue;
      const before = n.prev.samples.find((p) => p.name === s.name && p.labels.le === s.labels.le);
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      deltas.set(le, (deltas.get(le) ?? 0) + Math.max(0, s.value - (before?.value ?? 0)));
    }
  }
  const bounds = [...deltas.keys()].sort((a, b) => a - b);
  const total = deltas.get(Infinity) ?? 0;
  if (!total) return null;
  for (const le of bounds) if (deltas.get(le) >= 0.99 * total) return le;
  return Infinity;
}

const series = {};
function push(name, value) {
  const points = (series[name] ??= []);
  points.push(value);
  if (points.length > HISTORY) points.shift();
}

const COLORS = ["#1a73e8", "#e37400", "#137333", "#a142f4"];
function draw(chart, names) {
  const svg = $(chart).querySelector("svg");
  const all = names.flatMap((n) => series[n] ?? []).filter(Number.isFinite);
  const max = Math.max(1, ...all);
  svg.replaceChildren(...names.map((name, i) => {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    const points = series[name] ?? [];
    line.setAttribute("points", points
      .map((v, x) => `${(x * 240) / (HISTORY - 1)},${60 - ((Number.isFinite(v) ? v : 0) * 56) / max - 2}`)
      .join(" "));
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    return line;
  }));
}

const TRANSPORTS = ["webtransport", "websocket", "http", "actioncable"];
const fixed = (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1));

function showFigures({ node, at, metrics }) {
  const previous = nodes.get(node);
  if (previous && at <= previous.at) return;
  nodes.set(node, { at, samples: parse(metrics), prev: previous && { at: previous.at, samples: previous.samples } });
  seen.figures += 1;

  const all = [...nodes.values()].flatMap((n) => n.samples);
  const totals = {};
  for (const t of TRANSPORTS) {
    totals[t] = sum(all, "rtgate_connections", (l) => l.transport === t);
    push(`conn-${t}`, totals[t]);
    $(`v-conn-${t}`).textContent = String(totals[t]);
  }
  totals.eventsIn = rate("rtgate_events_published_total");
  totals.deliveries = rate("rtgate_events_delivered_total");
  const p = p99();
  totals.p99Ms = p === null ? null : p * 1000;
  totals.slow = sum(all, "rtgate_disconnects_total", (l) => l.reason === "slow_consumer");
  push("events-in", totals.eventsIn);
  push("deliveries", totals.deliveries);
  push("p99", totals.p99Ms ?? NaN);
  push("slow", totals.slow);
  $("v-events-in").textContent = fixed(totals.eventsIn);
  $("v-deliveries").textContent = fixed(totals.deliveries);
  $("v-p99").textContent = p === null ? "—" : p === Infinity ? "> largest bucket" : `≤ ${fixed(totals.p99Ms)}`;
  $("v-slow").textContent = String(totals.slow);
  draw("chart-connections", TRANSPORTS.map((t) => `conn-${t}`));
  draw("chart-events-in", ["events-in"]);
  draw("chart-deliveries", ["deliveries"]);
  draw("chart-p99", ["p99"]);
  draw("chart-slow", ["slow"]);

  const ready = [...nodes.entries()].map(([id, n]) => [id, sum(n.samples, "rtgate_engine_ready") === 1]);
  const allReady = ready.every(([, r]) => r);
  $("engine").textContent = allReady ? "ready" : `unavailable on ${ready.filter(([, r]) => !r).map(([id]) => id).join(", ")}`;
  $("engine").dataset.ready = allReady ? "yes" : "no";
  $("nodes").textContent = [...nodes.keys()].sort().join(", ");
  seen.totals = totals;
  seen.nodes = Object.fromEntries(ready);
}

// --- The live connection. ---

async function openFeed() {
  await init();
  const first = await api("GET", "/console/token");
  const ws = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  client?.close();
  client = new RtgateClient({
    webSocketUrl: ws,
    clientName: "rtgate-console",
    token: async () => (await api("GET", "/console/token")).token,
    onStateChange: (s) => {
      $("feed-state").textContent = `${s.state}${s.transport ? ` via ${s.transport}` : ""}`;
      $("feed-state").dataset.state = s.state;
    },
    onEvent: ({ room, event }) => {
      if (room === first.room && event.name === "console.figures") showFigures(JSON.parse(event.json));
    },
  });
}

// --- Rooms, history, presence, publish, disconnect. ---

function rows(tbody, items) {
  $(tbody).querySelector("tbody").replaceChildren(...items.map((cells) => {
    const tr = document.createElement("tr");
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  }));
}

async function showRooms() {
  const { rooms } = await api("GET", "/console/rooms");
  rows("rooms", rooms.map((r) => [[r.room], [String(r.members.length)], [[...new Set(r.members)].join(", ")]]));
}

async function showHistory(room) {
  const h = await api("GET", `/console/history/${encodeURIComponent(room)}`);
  $("history-summary").textContent =
    `${h.room}: ${h.subscribers} subscriber(s), epoch ${h.epoch || "—"}, offset ${h.offset}` +
    (h.lost ? " (older events are no longer in history)" : "");
  rows("history", h.events.map((e) => [[String(e.offset)], [e.name], [e.json ?? "", "payload"]]));
}

async function showPresence(account) {
  const p = await api("GET", `/presence/${account}`);
  const entries = [
    ...(p.users ?? []).map((e) => ["user", e]),
    ...(p.contacts ?? []).map((e) => ["contact", e]),
  ];
  rows("presence", entries.map(([kind, e]) => [
    [`${kind} ${e.id}`],
    [e.online ? "online" : "offline"],
    [(e.availability ?? "AVAILABILITY_OFFLINE").replace("AVAILABILITY_", "").toLowerCase()],
    [e.lastSeenAtMs ? new Date(Number(e.lastSeenAtMs)).toISOString() : "—"],
  ]));
}

function guard(form, action, out) {
  $(form).addEventListener("submit", (e) => {
    e.preventDefault();
    action().catch((err) => {
      if (out) {
        $(out).textContent = `failed: ${err.message}`;
        $(out).className = "error";
      } else {
        alert(err.message);
      }
    });
  });
}

guard("login", async () => {
  apiKey = $("api-key").value.trim();
  $("login-error").textContent = "";
  await api("GET", "/console/rooms");
  sessionStorage.setItem("rtgate-api-key", apiKey);
  $("main").hidden = false;
  await openFeed();
  await showRooms();
}, "login-error");
$("rooms-refresh").addEventListener("click", () => showRooms().catch((e) => alert(e.message)));
guard("history-form", () => showHistory($("history-room").value.trim()), "history-summary");
guard("presence-form", () => showPresence($("presence-account").value));
guard("publish-form", async () => {
  const rooms = $("publish-rooms").value.split(",").map((r) => r.trim()).filter(Boolean);
  const result = await api("POST", "/publish", {
    rooms,
    event: { name: $("publish-name").value, accountId: $("publish-account").value, json: $("publish-json").value },
  });
  $("publish-result").className = "";
  $("publish-result").textContent = `published: ${result.positions
    .map((p) => `${p.room} @ ${p.position.offset}`).join(", ")}`;
}, "publish-result");
guard("disconnect-form", async () => {
  const result = await api("POST", "/disconnect", {
    userId: $("disconnect-user").value.trim(),
    reason: $("disconnect-reason").value,
    revokeTokens: $("disconnect-revoke").checked,
  });
  $("disconnect-result").className = "";
  $("disconnect-result").textContent = `connections closed on this node: ${result.connections ?? 0}`;
}, "disconnect-result");

if (apiKey) {
  $("api-key").value = apiKey;
  $("login").requestSubmit();
}
