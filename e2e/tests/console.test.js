// The admin console in Chromium, driven as an operator would: the API key, the live
// figures over rtgate's own client, the room browser, presence, publishing, and
// disconnecting a user whose page then shows it.
import assert from "node:assert/strict";
import { test } from "node:test";

import { message, openDemo, waitForEvents, waitForRoom, waitForState } from "../lib/browser.js";
import { setUp } from "../lib/setup.js";

const text = (page, id) => page.textContent(`#${id}`);

/** Waits until the text of element `id` passes `check` (run in the page: a pure function). */
async function waitForText(page, id, check, what) {
  try {
    await page.waitForFunction(
      ([i, source]) => (0, eval)(source)(document.getElementById(i).textContent),
      [id, check.toString()],
      { timeout: 20_000 },
    );
  } catch (e) {
    throw new Error(`${what}: #${id} is ${JSON.stringify(await text(page, id))} (${e.message})`);
  }
}

test("an operator sees the gateway live and acts on it from the console", { timeout: 90_000 }, async (t) => {
  const { gateway, browser } = await setUp(t);
  const agent = await openDemo(browser, gateway, { user: "1", conversation: "7", transport: "websocket" });
  await waitForState(agent, "connected", "websocket");
  await waitForRoom(agent);

  const wrong = await browser.newPage();
  await wrong.goto(`${gateway.http}/admin/`);
  await wrong.fill("#api-key", "not-the-key");
  await wrong.click("#login button");
  await waitForText(wrong, "login-error", (t) => t.startsWith("failed"), "a wrong key is refused");
  assert.equal(await wrong.isHidden("#main"), true);

  const console = await browser.newPage();
  const problems = [];
  console.on("pageerror", (e) => problems.push(String(e)));
  await console.goto(`${gateway.http}/admin/`);
  await console.fill("#api-key", gateway.apiKey);
  await console.click("#login button");
  await console.waitForFunction(() => document.getElementById("feed-state").dataset.state === "connected", null, { timeout: 20_000 });

  // Live figures: the agent's page and the console itself on WebSocket, the engine ready,
  // and events in, deliveries out and their latency once the backend publishes.
  await waitForText(console, "v-conn-websocket", (t) => t === "2", "two WebSocket connections");
  await waitForText(console, "engine", (t) => t === "ready", "the engine is ready");
  const publishing = setInterval(() => gateway.publish(["conversation:7"], message("tick")).catch(() => {}), 100);
  try {
    await waitForText(console, "v-events-in", (t) => Number(t) > 0, "events in");
    await waitForText(console, "v-deliveries", (t) => Number(t) > 0, "deliveries out");
    await waitForText(console, "v-p99", (t) => t.startsWith("≤"), "a p99 latency");
  } finally {
    clearInterval(publishing);
  }
  const points = await console.$$eval("#chart-deliveries polyline", (lines) => lines[0].getAttribute("points").split(" ").length);
  assert.ok(points >= 2, `the deliveries chart has ${points} points`);

  // Rooms: who is in conversation:7, and its recent history.
  await console.click("#rooms-refresh");
  await console.waitForFunction(() => [...document.querySelectorAll("#rooms tbody tr")]
    .some((tr) => tr.cells[0].textContent === "conversation:7" && tr.cells[2].textContent.includes("user:1")), null, { timeout: 10_000 });
  await console.fill("#history-room", "conversation:7");
  await console.click("#history-form button");
  await waitForText(console, "history-summary", (t) => t.startsWith("conversation:7: 1 subscriber"), "the room's summary");
  const rows = await console.$$eval("#history tbody tr", (trs) => trs.map((tr) => tr.cells[1].textContent));
  assert.ok(rows.length > 0 && rows.every((name) => name === "message.created"), JSON.stringify(rows));

  // Presence of account 1: the agent is online.
  await console.click("#presence-form button");
  await console.waitForFunction(() => [...document.querySelectorAll("#presence tbody tr")]
    .some((tr) => tr.cells[0].textContent === "user 1" && tr.cells[1].textContent === "online"), null, { timeout: 10_000 });

  // Publish from the console: the agent's page receives it.
  const before = (await agent.evaluate(() => window.demo.seen.events.filter((e) => e.room === "conversation:7").length));
  await console.fill("#publish-rooms", "conversation:7");
  await console.fill("#publish-json", JSON.stringify({ content: "from the console" }));
  await console.click("#publish-form button");
  await waitForText(console, "publish-result", (t) => t.startsWith("published: conversation:7 @"), "the publish result");
  const events = await waitForEvents(agent, "conversation:7", before + 1);
  assert.ok(events.some((e) => e.json.includes("from the console")));

  // Disconnect the agent: its page is told and stops.
  await console.fill("#disconnect-user", "1");
  await console.click("#disconnect-form button");
  await waitForText(console, "disconnect-result", (t) => t === "connections closed on this node: 1", "the disconnect result");
  await agent.waitForFunction(() => document.getElementById("state").dataset.state !== "connected", null, { timeout: 10_000 });
  assert.match(await text(agent, "state"), /disconnected from the console/);
  await waitForText(console, "v-conn-websocket", (t) => t === "1", "the agent's connection gone from the figures");
  assert.deepEqual(problems, []);
});
