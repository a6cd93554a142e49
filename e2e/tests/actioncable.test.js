// Clients written for Rails (the real @rails/actioncable, as Chatwoot's dashboard and
// widget use it) on rtgate's /cable: fed by an unchanged Rails (a Redis PUBLISH of the exact
// JSON, as its ActionCable adapter does) and by domain events; presence; rejected tokens;
// a rotated token; reconnecting after a gateway restart and after a node change without
// losing what rtgate's history holds.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";

import { mirrorAgent, mirrorContact, mirrorInbox, railsBroadcast, roomChannel, secureToken } from "../lib/cable.js";
import { startGateway, tempDir } from "../lib/gateway.js";

const redis = process.env.RTGATE_TEST_REDIS ?? "redis://127.0.0.1:6379";
const unique = () => randomBytes(6).toString("hex");
const cableUrl = (gateway) => `ws://127.0.0.1:${gateway.httpPort}/cable`;

/** Waits until this gateway relays Rails' broadcasts (it holds the relay's lease). */
async function relaying(gateway, timeout = 15_000) {
  const deadline = Date.now() + timeout;
  while ((await gateway.metric("rtgate_cable_relay_active")) !== 1) {
    if (Date.now() > deadline) throw new Error("the relay never started");
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** An account with an inbox (3), two agents (7 in the inbox, 8 not) and a contact inbox (501). */
async function account(gateway) {
  const tokens = { agent: secureToken(), other: secureToken(), contact: secureToken() };
  await mirrorAgent(gateway, { token: tokens.agent, userId: 7, accountId: 1 });
  await mirrorAgent(gateway, { token: tokens.other, userId: 8, accountId: 1 });
  await mirrorInbox(gateway, { inboxId: 3, accountId: 1, memberIds: [7] });
  await mirrorContact(gateway, { token: tokens.contact, contactInboxId: 501, accountId: 1 });
  return tokens;
}

/** The account's three subscribers on /cable, confirmed (disconnected when `t` ends). */
async function subscribers(t, url, tokens) {
  const agent = await roomChannel(url, { pubsub_token: tokens.agent, account_id: 1, user_id: 7 });
  const other = await roomChannel(url, { pubsub_token: tokens.other, account_id: 1, user_id: 8 });
  const contact = await roomChannel(url, { pubsub_token: tokens.contact });
  t.after(() => [agent, other, contact].forEach((c) => c.consumer.disconnect()));
  await Promise.all([agent.confirmed, other.confirmed, contact.confirmed]);
  return { agent, other, contact };
}

const events = (received, name) => received.filter((m) => m.event === name);
const contents = (received) => received.filter((m) => m.event === "message.created").map((m) => m.data.content);

test("agents and contacts get what an unchanged Rails broadcasts to them, and nothing more", { timeout: 60_000 }, async (t) => {
  const certs = tempDir("rtgate-e2e-certs-");
  t.after(certs.cleanup);
  const prefix = `e2e_${unique()}_action_cable`;
  const gateway = await startGateway({
    certDir: certs.dir,
    args: ["--cable-redis", redis, "--cable-channel-prefix", prefix],
  });
  t.after(() => gateway.stop());
  const tokens = await account(gateway);
  const url = cableUrl(gateway);

  const { agent, other, contact } = await subscribers(t, url, tokens);

  // Unknown tokens, someone else's token, and an account the user is not in: rejected.
  for (const params of [
    { pubsub_token: "unknown-token", account_id: 1, user_id: 7 },
    { pubsub_token: tokens.agent, account_id: 1, user_id: 8 },
    { pubsub_token: tokens.agent, account_id: 2, user_id: 7 },
    { pubsub_token: tokens.contact, account_id: 1, user_id: 7 },
  ]) {
    const refused = await roomChannel(url, params);
    await refused.rejected;
    refused.consumer.disconnect();
  }

  await relaying(gateway);
  const channel = (broadcasting) => `${prefix}:${broadcasting}`;
  await railsBroadcast(redis, channel(tokens.agent), {
    event: "message.created",
    data: { id: 1, account_id: 1, content: "to agent 7" },
  });
  await railsBroadcast(redis, channel(tokens.contact), {
    event: "message.created",
    data: { id: 2, account_id: 1, content: "to the contact" },
  });
  await railsBroadcast(redis, channel("account_1"), {
    event: "contact.updated",
    data: { id: 44, account_id: 1, name: "Ada" },
  });
  await agent.waitFor((r) => events(r, "contact.updated").length === 1, "the account broadcast");
  await other.waitFor((r) => events(r, "contact.updated").length === 1, "the account broadcast");
  await contact.waitFor((r) => contents(r).length === 1, "the contact's message");
  assert.deepEqual(contents(agent.received), ["to agent 7"]);
  assert.deepEqual(events(agent.received, "contact.updated")[0].data, { id: 44, account_id: 1, name: "Ada" });
  assert.deepEqual(contents(other.received), []);
  assert.deepEqual(contents(contact.received), ["to the contact"]);
  assert.deepEqual(events(contact.received, "contact.updated"), [], "contacts do not stream the account");

  // Presence, as RoomChannel's update_presence answers it: to the subscriber only.
  agent.subscription.perform("update_presence");
  const [update] = events(await agent.waitFor((r) => events(r, "presence.update").length > 0, "presence"), "presence.update");
  assert.equal(update.data.account_id, 1);
  assert.ok("7" in update.data.users && "8" in update.data.users, JSON.stringify(update));
  assert.equal(update.data.contacts["501"], "online");
  contact.subscription.perform("update_presence");
  const [seen] = events(await contact.waitFor((r) => events(r, "presence.update").length > 0, "presence"), "presence.update");
  assert.ok("7" in seen.data.users && !("contacts" in seen.data), JSON.stringify(seen));
  assert.equal(events(other.received, "presence.update").length, 0);
});

test("domain events reach /cable subscribers in Chatwoot's shape, on the same rooms as native clients", { timeout: 60_000 }, async (t) => {
  const certs = tempDir("rtgate-e2e-certs-");
  t.after(certs.cleanup);
  const gateway = await startGateway({ certDir: certs.dir });
  t.after(() => gateway.stop());
  const tokens = await account(gateway);
  const url = cableUrl(gateway);
  const { agent, other, contact } = await subscribers(t, url, tokens);

  const conversation = { displayId: "42", inboxId: "3", contactInboxIds: ["501"] };
  const result = await gateway.api("POST", "/events", {
    events: [
      {
        id: unique(), name: "message.created", accountId: "1", conversation,
        message: { id: "900", messageType: "MESSAGE_TYPE_OUTGOING" },
        payload: JSON.stringify({ id: 900, content: "hello from the bus" }),
      },
      {
        id: unique(), name: "conversation.typing_on", accountId: "1", conversation,
        typing: { typer: { kind: "KIND_USER", id: "7" } },
        payload: JSON.stringify({ conversation: { id: 42 }, is_private: false }),
      },
      {
        id: unique(), name: "message.created", accountId: "1", conversation,
        message: { id: "901", messageType: "MESSAGE_TYPE_OUTGOING", private: true },
        payload: JSON.stringify({ id: 901, content: "a private note", private: true }),
      },
    ],
  });
  assert.deepEqual(result.outcomes.map((o) => o.status), Array(3).fill("STATUS_ACCEPTED"));
  await agent.waitFor((r) => contents(r).length === 2, "both messages");
  await contact.waitFor((r) => contents(r).length === 1 && events(r, "conversation.typing_on").length === 1, "message and typing");
  const [message] = events(agent.received, "message.created");
  assert.deepEqual(message.data, { account_id: 1, id: 900, content: "hello from the bus" });
  assert.deepEqual(contents(agent.received), ["hello from the bus", "a private note"]);
  assert.deepEqual(contents(contact.received), ["hello from the bus"], "private notes never reach contacts");
  assert.equal(events(contact.received, "conversation.typing_on")[0].data.conversation.id, 42);
  // The typer does not see its own typing; an agent outside the inbox sees nothing of it.
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(events(agent.received, "conversation.typing_on").length, 0);
  assert.deepEqual(other.received.filter((m) => m.event !== "presence.update"), []);
});

test("a rotated token stops working on live connections", { timeout: 60_000 }, async (t) => {
  const certs = tempDir("rtgate-e2e-certs-");
  t.after(certs.cleanup);
  const gateway = await startGateway({ certDir: certs.dir });
  t.after(() => gateway.stop());
  const tokens = await account(gateway);
  const agent = await roomChannel(cableUrl(gateway), { pubsub_token: tokens.agent, account_id: 1, user_id: 7 });
  await agent.confirmed;
  let disconnected = false;
  agent.subscription.disconnected = () => { disconnected = true; };
  // The user changed their password: Rails rotates the token; the backend mirrors that.
  const fresh = secureToken();
  await gateway.api("PUT", "/mirror/pubsub-tokens", { token: fresh, userId: 7 });
  const closed = await gateway.api("DELETE", "/mirror/pubsub-tokens", { token: tokens.agent });
  assert.equal(closed.connections, 1);
  const deadline = Date.now() + 10_000;
  while (!disconnected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.ok(disconnected, "the old token's connection was closed");
  // Told not to come back (unauthorized): the consumer stays closed.
  await new Promise((r) => setTimeout(r, 4_000));
  assert.equal(agent.consumer.connection.isOpen(), false);
  agent.consumer.disconnect();
  const again = await roomChannel(cableUrl(gateway), { pubsub_token: tokens.agent, account_id: 1, user_id: 7 });
  await again.rejected;
  again.consumer.disconnect();
  const renewed = await roomChannel(cableUrl(gateway), { pubsub_token: fresh, account_id: 1, user_id: 7 });
  await renewed.confirmed;
  renewed.consumer.disconnect();
});

test("after a gateway restart and after a node change the client gets what it missed, once", { timeout: 120_000 }, async (t) => {
  const certs = tempDir("rtgate-e2e-certs-");
  t.after(certs.cleanup);
  const prefix = `e2e_${unique()}_action_cable`;
  const engine = {
    redis,
    redisPrefix: `e2e-${unique()}`,
    args: ["--cable-redis", redis, "--cable-channel-prefix", prefix],
  };
  let a = await startGateway({ certDir: certs.dir, ...engine });
  t.after(() => a.stop());
  const b = await startGateway({ certDir: certs.dir, ...engine });
  t.after(() => b.stop());
  const tokens = await account(a);
  // The client reconnects wherever this points, as behind a load balancer.
  let target = a;
  const agent = await roomChannel(() => cableUrl(target), { pubsub_token: tokens.agent, account_id: 1, user_id: 7 });
  t.after(() => agent.consumer.disconnect());
  await agent.confirmed;
  const message = (content) => ({ name: "message.created", accountId: "1", json: JSON.stringify({ content }) });
  await b.publish(["user:7"], message("before"));
  await agent.waitFor((r) => contents(r).length === 1, "the first message");

  // A restart: the gateway is stopped, events arrive elsewhere meanwhile, it comes back.
  const { httpPort, wtPort } = a;
  await a.stop();
  await b.publish(["user:7"], message("while restarting 1"));
  await b.publish(["inbox:3"], message("while restarting 2"));
  await relaying(b);
  await railsBroadcast(redis, `${prefix}:${tokens.agent}`, {
    event: "message.created",
    data: { account_id: 1, content: "while restarting 3" },
  });
  a = await startGateway({ certDir: certs.dir, httpPort, wtPort, ...engine });
  await agent.waitFor((r) => contents(r).length === 4, "what was missed during the restart", 60_000);
  await b.publish(["user:7"], message("after the restart"));
  await agent.waitFor((r) => contents(r).length === 5, "the next message");

  // A node change: its node goes away and the client lands on another one.
  target = b;
  await a.stop();
  // This one as a domain event, routed by the bus to the inbox's room.
  await b.api("POST", "/events", {
    events: [{
      id: unique(), name: "message.created", accountId: "1",
      conversation: { displayId: "42", inboxId: "3" },
      message: { id: "902", messageType: "MESSAGE_TYPE_INCOMING" },
      payload: JSON.stringify({ id: 902, content: "while moving" }),
    }],
  });
  await agent.waitFor((r) => contents(r).length === 6, "what was missed while moving", 60_000);
  await b.publish(["user:7"], message("on the new node"));
  await agent.waitFor((r) => contents(r).length === 7, "the next message");
  await new Promise((r) => setTimeout(r, 500));
  const got = contents(agent.received);
  // Each room in order (events of different rooms have no order between them), none twice.
  assert.deepEqual([got[0], ...got.slice(4)], ["before", "after the restart", "while moving", "on the new node"]);
  assert.deepEqual(got.slice(1, 4).sort(), ["while restarting 1", "while restarting 2", "while restarting 3"]);
  assert.ok(got.indexOf("while restarting 1") < got.indexOf("while restarting 3"), "user:7 in order");
});
