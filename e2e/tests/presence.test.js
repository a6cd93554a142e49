// (d) Two agents of one account see each other's presence and availability.
import { test } from "node:test";

import { openDemo, waitForRoom, waitForState } from "../lib/browser.js";
import { setUp } from "../lib/setup.js";

async function seesPresence(page, line) {
  await page.waitForFunction((l) => document.getElementById("presence").textContent.includes(l), line, {
    timeout: 20_000,
  });
}

test("two agents see each other's presence and availability", { timeout: 60_000 }, async (t) => {
  const { gateway, browser } = await setUp(t);

  const first = await openDemo(browser, gateway, { user: "1", conversation: "42" });
  await waitForState(first, "connected", "webtransport");
  await waitForRoom(first);
  const second = await openDemo(browser, gateway, { user: "2", conversation: "42" });
  await waitForState(second, "connected", "webtransport");
  await waitForRoom(second);

  // The second sees the first from its presence query; the first hears of the second.
  await seesPresence(second, "user 1: online");
  await seesPresence(first, "user 2: online");

  await first.selectOption("#availability", "busy");
  await seesPresence(second, "user 1: online, busy");

  // Gone for good (after the gateway's grace period).
  await first.click("#close-button");
  await seesPresence(second, "user 1: offline");
});
