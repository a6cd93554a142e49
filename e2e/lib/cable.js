// The real @rails/actioncable client, as Rails apps and Chatwoot's frontend use it, for
// tests against rtgate's /cable endpoint; and what a backend does to feed it: mirror
// pubsub tokens, account users and inboxes, and publish the way Rails publishes.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { WebSocket } from "ws";

const run = promisify(execFile);

let cable;

/**
 * The @rails/actioncable package (its published build), in Node: it expects a browser's
 * globals, so `self` and `addEventListener` are provided, and `ws` is its WebSocket.
 */
export async function actionCable() {
  if (!cable) {
    globalThis.self ??= globalThis;
    globalThis.addEventListener ??= () => {};
    globalThis.removeEventListener ??= () => {};
    cable = (await import("@rails/actioncable")).default;
    cable.adapters.WebSocket = WebSocket;
    cable.adapters.logger = { log: () => {} };
  }
  return cable;
}

/**
 * A consumer subscribed to RoomChannel with Chatwoot's parameters. `url` may be a
 * function (evaluated on every (re)connect, as a load balancer would pick a node).
 * Returns { consumer, received, confirmed, rejected, waitFor }.
 */
export async function roomChannel(url, params) {
  const ActionCable = await actionCable();
  const consumer = ActionCable.createConsumer(url);
  const received = [];
  const waiters = [];
  let confirm;
  let reject;
  const confirmed = new Promise((resolve) => { confirm = resolve; });
  const rejected = new Promise((resolve) => { reject = resolve; });
  const subscription = consumer.subscriptions.create(
    { channel: "RoomChannel", ...params },
    {
      connected: () => confirm(),
      rejected: () => reject(),
      received: (message) => {
        received.push(message);
        for (const w of waiters.splice(0)) w();
      },
    },
  );
  /** Waits until `predicate(received)` holds (or fails after `timeout` ms). */
  async function waitFor(predicate, what, timeout = 20_000) {
    const deadline = Date.now() + timeout;
    while (!predicate(received)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; received ${JSON.stringify(received)}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 200));
        waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
    return received;
  }
  return { consumer, subscription, received, confirmed, rejected, waitFor };
}

/** Mirrors an agent: its pubsub token, its account membership and its inboxes. */
export async function mirrorAgent(gateway, { token, userId, accountId, role = "ROLE_AGENT" }) {
  await gateway.api("PUT", "/mirror/pubsub-tokens", { token, userId });
  await gateway.api("PUT", `/mirror/account-users/${userId}`, { id: userId, accountId, userId, role });
}

/** Mirrors an inbox and its members. */
export async function mirrorInbox(gateway, { inboxId, accountId, memberIds }) {
  await gateway.api("PUT", `/mirror/inboxes/${inboxId}`, { inboxId, accountId, memberIds });
}

/** Mirrors a contact inbox's pubsub token. */
export async function mirrorContact(gateway, { token, contactInboxId, accountId }) {
  await gateway.api("PUT", "/mirror/pubsub-tokens", { token, contactInboxId, accountId });
}

/** Publishes as Rails' ActionCable Redis adapter does: one PUBLISH of the JSON. */
export async function railsBroadcast(redisUrl, channel, message) {
  const { stdout } = await run("redis-cli", ["-u", redisUrl, "PUBLISH", channel, JSON.stringify(message)]);
  return Number(stdout.trim());
}

/** A 24-character token like Rails' has_secure_token makes. */
export function secureToken() {
  const alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
  let token = "";
  for (let i = 0; i < 24; i++) token += alphabet[Math.floor(Math.random() * alphabet.length)];
  return token;
}
