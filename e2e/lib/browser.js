// Headless Chromium from the system (Debian's `chromium`), driven by playwright-core.
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

export function launchBrowser() {
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/**
 * Opens the demo page of `gateway` with query `params`; `beforeLoad` runs in the page
 * before any of its scripts. Page errors and console errors are collected in `page.problems`.
 */
export async function openDemo(browser, gateway, params, beforeLoad) {
  const page = await browser.newPage();
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(String(e)));
  if (beforeLoad) await page.addInitScript(beforeLoad);
  const query = new URLSearchParams({ wt: gateway.wtUrl, autoconnect: "1", ...params });
  await page.goto(`${gateway.http}/demo/?${query}`);
  return page;
}

/** Waits until the demo shows `state` (and `transport`, when given). */
export async function waitForState(page, state, transport, timeout = 20_000) {
  await page.waitForFunction(
    ([s, t]) => {
      const el = document.getElementById("state");
      return el.dataset.state === s && (!t || el.dataset.transport === t);
    },
    [state, transport],
    { timeout },
  );
}

/** Waits until the conversation is joined (the composer is enabled). */
export async function waitForRoom(page, timeout = 20_000) {
  await page.waitForFunction(() => !document.getElementById("message").disabled, null, { timeout });
}

/** Waits until the page has seen `count` room events of `room`; returns them. */
export async function waitForEvents(page, room, count, timeout = 20_000) {
  await page.waitForFunction(
    ([r, n]) => window.demo.seen.events.filter((e) => e.room === r).length >= n,
    [room, count],
    { timeout },
  );
  return page.evaluate((r) => window.demo.seen.events.filter((e) => e.room === r), room);
}

/** A message.created event as the server API takes it. */
export function message(text) {
  return { name: "message.created", accountId: "1", json: JSON.stringify({ content: text }) };
}
