// The HTTP fallback in Chromium: on a network where neither QUIC nor WebSocket gets
// through, the page connects over plain HTTP (through a real nginx that carries no
// upgrades and buffers by default) and gets the whole service; once WebSocket gets
// through again, the connection moves back up without losing an event.
import assert from "node:assert/strict";
import { test } from "node:test";

import { message, openDemo, waitForEvents, waitForRoom, waitForState } from "../lib/browser.js";
import { freeUdpPort } from "../lib/gateway.js";
import { startGate, startHttpOnlyProxy } from "../lib/proxies.js";
import { setUp } from "../lib/setup.js";

/** Opens the demo page at `origin` (the gateway's own, or a proxy's). */
async function openAt(browser, origin, params) {
  const page = await browser.newPage();
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(String(e)));
  await page.goto(`${origin}/demo/?${new URLSearchParams({ autoconnect: "1", ...params })}`);
  return page;
}

const transportsTried = (page) =>
  page.evaluate(() => [...new Set(window.demo.seen.states.map((s) => s.transport).filter(Boolean))]);

test("behind a proxy that carries only plain HTTP the page gets the full service", { timeout: 90_000 }, async (t) => {
  const { gateway, browser } = await setUp(t);
  const proxy = await startHttpOnlyProxy(gateway.httpPort);
  t.after(() => proxy.stop());
  const silent = await freeUdpPort();

  const agent = await openAt(browser, proxy.url, {
    user: "1", conversation: "7", wt: `https://127.0.0.1:${silent}/wt`, connectTimeoutMs: "1500",
  });
  await waitForState(agent, "connected", "http", 30_000);
  await waitForRoom(agent);
  assert.deepEqual(await transportsTried(agent), ["webtransport", "websocket", "http"]);

  // Events published by the backend arrive in order.
  await gateway.publish(["conversation:7"], message("a"));
  await gateway.publish(["conversation:7"], message("b"));
  const events = await waitForEvents(agent, "conversation:7", 2);
  assert.deepEqual(events.map((e) => e.offset), [1, 2]);

  // A contact on an open network in the same conversation: typing and messages both ways.
  const contact = await openDemo(browser, gateway, { user: "9", role: "contact", conversation: "7", transport: "websocket" });
  await waitForState(contact, "connected", "websocket");
  await waitForRoom(contact);
  await agent.type("#message", "hello over http");
  await contact.waitForFunction(() => document.getElementById("typing").textContent.includes("user 1 is typing"), null, { timeout: 15_000 });
  await agent.press("#message", "Enter");
  await contact.waitForFunction(
    () => window.demo.seen.events.some((e) => e.name === "client.message" && e.json.includes("hello over http")),
    null, { timeout: 15_000 },
  );
  await contact.type("#message", "hi back");
  await agent.waitForFunction(() => document.getElementById("typing").textContent.includes("contact 9 is typing"), null, { timeout: 15_000 });
  await contact.press("#message", "Enter");
  await agent.waitForFunction(
    () => window.demo.seen.events.some((e) => e.name === "client.message" && e.json.includes("hi back")),
    null, { timeout: 15_000 },
  );

  // Presence: the agent on HTTP is online, and so shown to others.
  const presence = await gateway.api("GET", "/presence/1");
  const user = (presence.users ?? []).find((u) => String(u.id) === "1");
  assert.ok(user?.online, JSON.stringify(presence));
  assert.equal(await gateway.metric('rtgate_connections{transport="http"}'), 1);
  assert.deepEqual(agent.problems, []);
});

test("a page on the HTTP fallback of another origin moves back up to WebSocket once it gets through", { timeout: 90_000 }, async (t) => {
  const { gateway, browser } = await setUp(t);
  const gate = await startGate(gateway.httpPort);
  t.after(() => gate.stop());
  const silent = await freeUdpPort();

  const page = await openAt(browser, gateway.http, {
    user: "1", conversation: "7",
    wt: `https://127.0.0.1:${silent}/wt`,
    ws: `ws://${gate.url}/ws`,
    // Another origin than the page's: the sends are cross-origin (CORS, a cached preflight).
    http: `http://localhost:${gateway.httpPort}/http`,
    connectTimeoutMs: "1000",
    cooldownMs: "3000",
  });
  await waitForState(page, "connected", "http", 30_000);
  await waitForRoom(page);
  await gateway.publish(["conversation:7"], message("on http"));
  await waitForEvents(page, "conversation:7", 1);

  gate.open();
  await waitForState(page, "connected", "websocket", 30_000);
  await gateway.publish(["conversation:7"], message("on websocket"));
  const events = await waitForEvents(page, "conversation:7", 2);
  assert.deepEqual(events.map((e) => e.offset), [1, 2], "each event once, none lost in the move");
  // The gateway sees the aborted stream a moment later.
  for (let i = 0; i < 100 && (await gateway.metric('rtgate_connections{transport="http"}')) !== 0; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(await gateway.metric('rtgate_connections{transport="http"}'), 0, "the HTTP connection closed");
  assert.deepEqual(page.problems, []);
});
