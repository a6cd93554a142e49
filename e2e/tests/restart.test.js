// (c) The gateway restarts mid-session: the page reconnects by itself and receives what
// was published while it was away, exactly once. History survives in Redis; the missed
// events are published through a second gateway on the same Redis while the first is down.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";

import { launchBrowser, message, openDemo, waitForEvents, waitForRoom, waitForState } from "../lib/browser.js";
import { startGateway, tempDir } from "../lib/gateway.js";

const redis = process.env.RTGATE_TEST_REDIS ?? "redis://127.0.0.1:6379";

test("reconnects after a gateway restart and gets the missed events once", { timeout: 120_000 }, async (t) => {
  const certs = tempDir("rtgate-e2e-certs-");
  t.after(certs.cleanup);
  const engine = { redis, redisPrefix: `e2e-${randomBytes(6).toString("hex")}` };
  let gateway = await startGateway({ certDir: certs.dir, ...engine });
  t.after(() => gateway.stop());
  const browser = await launchBrowser();
  t.after(() => browser.close());

  const room = "conversation:42";
  const page = await openDemo(browser, gateway, { user: "1", conversation: "42" });
  await waitForState(page, "connected", "webtransport");
  await waitForRoom(page);
  await gateway.publish([room], message("before 1"));
  await gateway.publish([room], message("before 2"));
  await waitForEvents(page, room, 2);

  const { httpPort, wtPort } = gateway;
  await gateway.stop();
  await page.waitForFunction(() => document.getElementById("state").dataset.state !== "connected");

  const other = await startGateway({ certDir: certs.dir, ...engine });
  try {
    await other.publish([room], message("while away 1"));
    await other.publish([room], message("while away 2"));
  } finally {
    await other.stop();
  }

  gateway = await startGateway({ certDir: certs.dir, httpPort, wtPort, ...engine });
  await waitForState(page, "connected", undefined, 60_000);
  const replayed = await waitForEvents(page, room, 4, 30_000);
  await gateway.publish([room], message("after"));
  const events = await waitForEvents(page, room, 5, 15_000);
  assert.deepEqual(replayed.slice(0, 4).map((e) => e.offset), [1, 2, 3, 4]);
  assert.deepEqual(events.map((e) => e.offset), [1, 2, 3, 4, 5], "in order, nothing twice");
  assert.deepEqual(
    events.map((e) => JSON.parse(e.json).content),
    ["before 1", "before 2", "while away 1", "while away 2", "after"],
  );
  assert.deepEqual(await page.evaluate(() => window.demo.seen.resets), [], "nothing was lost");
  // Give a late duplicate the chance to show up.
  await page.waitForTimeout(500);
  const all = await page.evaluate((r) => window.demo.seen.events.filter((e) => e.room === r), room);
  assert.equal(all.length, 5, JSON.stringify(all));
});
