// (b) Without WebTransport the package falls back to WebSocket and still receives events.
import assert from "node:assert/strict";
import { test } from "node:test";

import { message, openDemo, waitForEvents, waitForRoom, waitForState } from "../lib/browser.js";
import { freeUdpPort } from "../lib/gateway.js";
import { setUp } from "../lib/setup.js";

async function fallsBack(t, params, beforeLoad) {
  const { gateway, browser } = await setUp(t);

  const page = await openDemo(browser, gateway, { user: "1", conversation: "7", ...params(gateway) }, beforeLoad);
  await waitForState(page, "connected", "websocket");
  await waitForRoom(page);
  await gateway.publish(["conversation:7"], message("a"));
  await gateway.publish(["conversation:7"], message("b"));
  const events = await waitForEvents(page, "conversation:7", 2);
  assert.deepEqual(events.map((e) => e.offset), [1, 2]);
  const transports = await page.evaluate(() => window.demo.seen.states.map((s) => s.transport));
  assert.equal(transports[0], "webtransport", "WebTransport is tried first");
}

test("falls back to WebSocket when the browser has no WebTransport", { timeout: 60_000 }, async (t) => {
  await fallsBack(t, () => ({}), () => { delete window.WebTransport; });
});

test("falls back to WebSocket when nothing answers on the WebTransport port", { timeout: 60_000 }, async (t) => {
  const silent = await freeUdpPort();
  await fallsBack(t, () => ({ wt: `https://127.0.0.1:${silent}/wt` }));
});
