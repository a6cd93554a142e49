// The real @rails/actioncable in headless Chromium, used as Chatwoot's dashboard uses it:
// one consumer, one RoomChannel subscription, update_presence; against rtgate's /cable,
// fed by an unchanged Rails and by domain events, across a gateway restart.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { test } from "node:test";

import { launchBrowser } from "../lib/browser.js";
import { mirrorAgent, mirrorInbox, railsBroadcast, secureToken } from "../lib/cable.js";
import { startGateway, tempDir } from "../lib/gateway.js";

const require = createRequire(import.meta.url);
const redis = process.env.RTGATE_TEST_REDIS ?? "redis://127.0.0.1:6379";
const unique = () => randomBytes(6).toString("hex");

/** What the page received, by event name. */
const seen = (page, name) =>
  page.evaluate((n) => window.received.filter((m) => m.event === n).map((m) => m.data), name);

async function waitForCount(page, name, count, timeout = 30_000) {
  await page.waitForFunction(
    ([n, c]) => window.received.filter((m) => m.event === n).length >= c,
    [name, count],
    { timeout },
  );
}

test("the dashboard's ActionCable client in Chromium works against /cable unchanged", { timeout: 120_000 }, async (t) => {
  const certs = tempDir("rtgate-e2e-certs-");
  t.after(certs.cleanup);
  const prefix = `e2e_${unique()}_action_cable`;
  const engine = {
    redis,
    redisPrefix: `e2e-${unique()}`,
    args: ["--cable-redis", redis, "--cable-channel-prefix", prefix],
  };
  let gateway = await startGateway({ certDir: certs.dir, ...engine });
  t.after(() => gateway.stop());
  const token = secureToken();
  await mirrorAgent(gateway, { token, userId: 7, accountId: 1 });
  await mirrorInbox(gateway, { inboxId: 3, accountId: 1, memberIds: [7] });

  const browser = await launchBrowser();
  t.after(() => browser.close());
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  // A page of the gateway's own origin (a local one: Chromium lets it reach loopback).
  await page.goto(`${gateway.http}/healthz`);
  await page.addScriptTag({ path: require.resolve("@rails/actioncable") });
  await page.evaluate(
    ([url, params]) => {
      window.received = [];
      window.state = "connecting";
      const consumer = window.ActionCable.createConsumer(url);
      window.subscription = consumer.subscriptions.create(
        { channel: "RoomChannel", ...params },
        {
          connected: () => { window.state = "connected"; },
          disconnected: () => { window.state = "disconnected"; },
          rejected: () => { window.state = "rejected"; },
          received: (m) => window.received.push(m),
        },
      );
    },
    [`ws://127.0.0.1:${gateway.httpPort}/cable`, { pubsub_token: token, account_id: 1, user_id: 7 }],
  );
  await page.waitForFunction(() => window.state === "connected", null, { timeout: 20_000 });

  // Rails' own broadcast, a domain event, and presence.
  const deadline = Date.now() + 15_000;
  while ((await gateway.metric("rtgate_cable_relay_active")) !== 1 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  await railsBroadcast(redis, `${prefix}:${token}`, {
    event: "conversation.created",
    data: { id: 42, account_id: 1, inbox_id: 3 },
  });
  await gateway.api("POST", "/events", {
    events: [{
      id: unique(), name: "message.created", accountId: "1",
      conversation: { displayId: "42", inboxId: "3" },
      message: { id: "900", messageType: "MESSAGE_TYPE_INCOMING" },
      payload: JSON.stringify({ id: 900, content: "from the bus" }),
    }],
  });
  await page.evaluate(() => window.subscription.perform("update_presence"));
  await waitForCount(page, "conversation.created", 1);
  await waitForCount(page, "message.created", 1);
  await waitForCount(page, "presence.update", 1);
  assert.deepEqual(await seen(page, "conversation.created"), [{ id: 42, account_id: 1, inbox_id: 3 }]);
  assert.deepEqual(await seen(page, "message.created"), [{ account_id: 1, id: 900, content: "from the bus" }]);
  assert.equal((await seen(page, "presence.update"))[0].account_id, 1);

  // The gateway restarts; what is published meanwhile (through another node) is not lost.
  const { httpPort, wtPort } = gateway;
  await gateway.stop();
  await page.waitForFunction(() => window.state === "disconnected", null, { timeout: 20_000 });
  const other = await startGateway({ certDir: certs.dir, ...engine });
  try {
    await other.publish(["inbox:3"], {
      name: "message.created", accountId: "1", json: JSON.stringify({ id: 901, content: "while away" }),
    });
  } finally {
    await other.stop();
  }
  gateway = await startGateway({ certDir: certs.dir, httpPort, wtPort, ...engine });
  await page.waitForFunction(() => window.state === "connected", null, { timeout: 60_000 });
  await waitForCount(page, "message.created", 2);
  assert.deepEqual((await seen(page, "message.created")).map((m) => m.content), ["from the bus", "while away"]);
  assert.deepEqual(problems, []);
});
