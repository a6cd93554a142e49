// (a) The package connects over WebTransport and receives events published through the
// server API, in order, on the demo page.
import assert from "node:assert/strict";
import { test } from "node:test";

import { message, openDemo, waitForEvents, waitForRoom, waitForState } from "../lib/browser.js";
import { setUp } from "../lib/setup.js";

test("connects over WebTransport and receives published events", { timeout: 60_000 }, async (t) => {
  const { gateway, browser } = await setUp(t);

  const page = await openDemo(browser, gateway, { user: "1", conversation: "42" });
  await waitForState(page, "connected", "webtransport");
  await waitForRoom(page);

  for (const text of ["one", "two", "three"]) {
    await gateway.publish(["conversation:42"], message(text));
  }
  const events = await waitForEvents(page, "conversation:42", 3);
  assert.deepEqual(events.map((e) => e.offset), [1, 2, 3]);
  assert.deepEqual(events.map((e) => JSON.parse(e.json).content), ["one", "two", "three"]);
  assert.match(await page.textContent("#events"), /message\.created: three/);

  // The automatic account room delivers too (to the page's catch-all handler). It also
  // carries presence.update events (this user coming online), whenever they come.
  await gateway.publish(["account:1"], message("to the account"));
  await page.waitForFunction(
    () => window.demo.seen.events.some((e) => e.room === "account:1" && e.name === "message.created"),
    null,
    { timeout: 20_000 },
  );
  const account = (await waitForEvents(page, "account:1", 1)).filter((e) => e.name === "message.created");
  assert.equal(JSON.parse(account[0].json).content, "to the account");
  assert.deepEqual(page.problems, []);
});

test("refreshes its token before it expires, on the same connection", { timeout: 60_000 }, async (t) => {
  const { gateway, browser } = await setUp(t);

  // Tokens valid 4 s: the client must refresh about every 2 s; without refreshes the
  // gateway would close the connection 30 s (the grace) after the first expiry.
  const page = await openDemo(browser, gateway, { user: "1", conversation: "42", ttl: "4" }, () => {
    const fetch = window.fetch;
    window.tokenFetches = 0;
    window.fetch = (url, ...rest) => {
      if (String(url).startsWith("/dev/token")) window.tokenFetches += 1;
      return fetch(url, ...rest);
    };
  });
  await waitForState(page, "connected", "webtransport");
  await waitForRoom(page);
  const before = await page.evaluate(() => window.tokenFetches);
  await page.waitForFunction((n) => window.tokenFetches >= n + 3, before, { timeout: 20_000 });
  await gateway.publish(["conversation:42"], message("still here"));
  await waitForEvents(page, "conversation:42", 1);
  const states = await page.evaluate(() => window.demo.seen.states.map((s) => s.state));
  assert.equal(states.filter((s) => s === "connected").length, 1, `one connection only: ${states}`);
});
