// The rtgate demo page: connects with the browser package, joins one conversation, and
// shows its events, typing, presence and the connection state.
import init, { RtgateClient } from "./pkg/rtgate_client.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// What the page saw, for anyone inspecting it (the browser tests do).
const seen = { events: [], typing: {}, presence: {}, resets: [], states: [] };
window.demo = { seen, client: null };

for (const field of ["user", "role", "conversation", "transport"]) {
  if (params.has(field)) $(field).value = params.get(field);
}
// The WebTransport port is not the page's: the gateway tells it with the certificate hash
// (or pass ?wt=https://HOST:PORT/wt).
const host = location.hostname === "localhost" ? "127.0.0.1" : location.hostname;
// WebSocket and the HTTP fallback go to the page's own origin unless ?ws= and ?http= say
// otherwise; ?connectTimeoutMs= and ?cooldownMs= tune the fallback.
const webSocketUrl = params.get("ws") ?? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const httpUrl = params.get("http") ?? `${location.origin}/http`;
const millis = (name) => (params.has(name) ? Number(params.get(name)) : undefined);

let client = null;
let room = null;

function showState(s) {
  seen.states.push(s);
  const via = s.transport ? ` via ${s.transport}` : "";
  const retry = s.retryInMs !== undefined ? `, next attempt in ${(s.retryInMs / 1000).toFixed(1)} s` : "";
  const attempt = s.attempt ? ` (attempt ${s.attempt + 1})` : "";
  const why = s.reason ? ` — ${s.reason}${s.code ? ` [${s.code}]` : ""}` : "";
  $("state").textContent = `${s.state}${via}${attempt}${retry}${why}`;
  $("state").dataset.state = s.state;
  $("state").dataset.transport = s.transport ?? "";
}

function describe(event) {
  let body = event.json ?? "";
  try { body = JSON.parse(body).content ?? JSON.parse(body).text ?? body; } catch { /* not JSON */ }
  return `${event.name}${body ? `: ${body}` : ""}`;
}

// Events of the conversation, and of the automatic user: and account: rooms (presence
// changes there are shown under Presence instead).
function showEvent({ room: r, offset, event }) {
  seen.events.push({ room: r, offset, id: event.id, name: event.name, json: event.json });
  if (event.name.startsWith("presence.")) return;
  const item = document.createElement("li");
  item.textContent = `${r === room ? "" : `[${r}] `}${describe(event)}`;
  $("events").append(item);
}

function showTyping({ event }) {
  const t = event.typing;
  if (!t?.sender) return;
  const who = `${t.sender.kind === "KIND_CONTACT" ? "contact" : "user"} ${t.sender.id}`;
  if (event.name === "conversation.typing_on") seen.typing[who] = Date.now();
  else delete seen.typing[who];
  const names = Object.keys(seen.typing);
  $("typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
}

// Presence arrives whole (presence()) or as changes (presence.update events).
function showPresence(presence) {
  for (const [kind, entries] of [["user", presence.users], ["contact", presence.contacts]]) {
    for (const entry of entries ?? []) seen.presence[`${kind} ${entry.id}`] = entry;
  }
  $("presence").replaceChildren(...Object.entries(seen.presence).map(([who, p]) => {
    const availability = (p.availability ?? "AVAILABILITY_OFFLINE").replace("AVAILABILITY_", "").toLowerCase();
    const item = document.createElement("li");
    item.textContent = `${who}: ${!p.online ? "offline" : availability === "online" ? "online" : `online, ${availability}`}`;
    return item;
  }));
}

function showReset(r) {
  seen.resets.push(r);
  const item = document.createElement("li");
  item.className = "reset";
  item.textContent = `${r}: some events were missed; a real app refetches the conversation now.`;
  $("events").append(item);
}

async function connect() {
  await init();
  const conversation = $("conversation").value;
  room = `conversation:${conversation}`;
  const query = new URLSearchParams({
    user: $("user").value, account: "1", role: $("role").value, inboxes: "1",
    conversation, ttl: params.get("ttl") ?? "3600",
  });
  // Fresh tokens at every connect: after a gateway restart the old ones may not verify.
  const tokens = async () => {
    const response = await fetch(`/dev/token?${query}`);
    if (!response.ok) throw new Error(`/dev/token answered ${response.status}`);
    return response.json();
  };
  const hash = await fetch("/dev/cert-hash");
  const cert = hash.ok ? await hash.json() : {};
  const certificateHash = cert.bytes ? new Uint8Array(cert.bytes) : undefined;
  const webTransportUrl = params.get("wt") ?? `https://${host}:${cert.webtransport_port ?? 4433}/wt`;

  client = new RtgateClient({
    webTransportUrl, webSocketUrl, httpUrl, certificateHash,
    transport: $("transport").value,
    connectTimeoutMs: millis("connectTimeoutMs"),
    fallbackCooldownMs: millis("cooldownMs"),
    token: async () => (await tokens()).token,
    onStateChange: showState,
    onRoomReset: showReset,
    onEvent: showEvent,
    onPresence: ({ event }) => showPresence(event.presence ?? {}),
  });
  window.demo.client = client;
  $("room-title").textContent = room;
  $("connect-button").disabled = true;
  $("close-button").disabled = false;
  await client.subscribe(room, (e) => (e.ephemeral ? showTyping(e) : showEvent(e)), {
    token: async () => (await tokens()).subscription_token,
  });
  $("message").disabled = $("send").disabled = false;
  if ($("role").value !== "contact") {
    showPresence(await client.presence());
    $("availability").disabled = false;
  }
}

// Typing: "on" at most every 2 s while keys are pressed, "off" after 3 s of quiet.
let typingSince = 0;
let typingOff = null;
$("message").addEventListener("input", () => {
  if (Date.now() - typingSince > 2000) {
    client.typing(room, true);
    typingSince = Date.now();
  }
  clearTimeout(typingOff);
  typingOff = setTimeout(() => { client.typing(room, false); typingSince = 0; }, 3000);
});

$("compose").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("message").value;
  $("message").value = "";
  await client.publish(room, { name: "client.message", json: JSON.stringify({ text }) });
});

$("availability").addEventListener("change", () => client.setAvailability($("availability").value));

$("connect").addEventListener("submit", (e) => {
  e.preventDefault();
  connect().catch((err) => { $("state").textContent = `failed: ${err.message}`; });
});

$("close-button").addEventListener("click", () => {
  client?.close();
  $("close-button").disabled = true;
  $("connect-button").disabled = false;
  $("message").disabled = $("send").disabled = $("availability").disabled = true;
});

if (params.get("autoconnect") === "1") $("connect").requestSubmit();
