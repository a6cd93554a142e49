// (d) Two pages in one conversation see each other's typing.
import assert from "node:assert/strict";
import { test } from "node:test";

import { openDemo, waitForRoom, waitForState } from "../lib/browser.js";
import { setUp } from "../lib/setup.js";

async function seesTyping(page, who) {
  await page.waitForFunction((w) => document.getElementById("typing").textContent.includes(w), who, {
    timeout: 15_000,
  });
}

for (const transport of ["webtransport", "websocket", "http"]) {
  test(`two pages see each other's typing (${transport})`, { timeout: 60_000 }, async (t) => {
    const { gateway, browser } = await setUp(t);

    const agent = await openDemo(browser, gateway, { user: "1", conversation: "42", transport });
    const contact = await openDemo(browser, gateway, { user: "9", role: "contact", conversation: "42", transport });
    for (const page of [agent, contact]) {
      await waitForState(page, "connected", transport);
      await waitForRoom(page);
    }

    await agent.type("#message", "hello");
    await seesTyping(contact, "user 1 is typing");
    await contact.type("#message", "hi there");
    await seesTyping(agent, "contact 9 is typing");
    // Typing stops by itself after a quiet spell.
    await contact.waitForFunction(() => document.getElementById("typing").textContent === "", null, {
      timeout: 15_000,
    });
    assert.equal(await agent.textContent("#typing"), "contact 9 is typing…");
  });
}
