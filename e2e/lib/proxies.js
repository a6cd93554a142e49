// Proxies that stand for networks between the browser and the gateway: a real nginx that
// passes plain HTTP only (as many corporate proxies do: WebSocket upgrades are not
// carried), and a TCP gate that refuses connections until it is opened.
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { join } from "node:path";

import { freeTcpPort, tempDir } from "./gateway.js";

async function waitForPort(port, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const open = await new Promise((resolve) => {
      const socket = connect(port, "127.0.0.1", () => { socket.destroy(); resolve(true); });
      socket.once("error", () => resolve(false));
    });
    if (open) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${port}`);
}

/**
 * Starts nginx (Debian's package) in front of `upstreamPort` as an HTTP/1.1 proxy that
 * carries no WebSocket upgrade and buffers responses as nginx does by default. Resolves
 * to { url, stop }.
 */
export async function startHttpOnlyProxy(upstreamPort) {
  const port = await freeTcpPort();
  const { dir, cleanup } = tempDir("rtgate-e2e-nginx-");
  const conf = `
daemon off;
pid ${join(dir, "nginx.pid")};
error_log stderr warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir};
  proxy_temp_path ${dir};
  fastcgi_temp_path ${dir};
  uwsgi_temp_path ${dir};
  scgi_temp_path ${dir};
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://127.0.0.1:${upstreamPort};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`;
  const path = join(dir, "nginx.conf");
  writeFileSync(path, conf);
  const child = spawn("nginx", ["-c", path], { stdio: ["ignore", "ignore", "pipe"] });
  let errors = "";
  child.stderr.on("data", (chunk) => { errors += chunk; });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  try {
    await waitForPort(port);
  } catch (e) {
    child.kill("SIGKILL");
    throw new Error(`${e.message}: nginx said ${errors}`);
  }
  return {
    url: `http://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        await exited;
      }
      cleanup();
    },
  };
}

/**
 * A TCP gate in front of `upstreamPort`: while closed it answers every connection with
 * 403 and hangs up (an upgrade that a network refuses); once opened it passes bytes
 * through. Resolves to { url, open(), stop() }.
 */
export async function startGate(upstreamPort) {
  let open = false;
  const sockets = new Set();
  const server = createServer((client) => {
    sockets.add(client);
    client.once("close", () => sockets.delete(client));
    if (!open) {
      client.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
      return;
    }
    const upstream = connect(upstreamPort, "127.0.0.1");
    sockets.add(upstream);
    upstream.once("close", () => sockets.delete(upstream));
    client.pipe(upstream).pipe(client);
    client.once("error", () => upstream.destroy());
    upstream.once("error", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `127.0.0.1:${server.address().port}`,
    open() { open = true; },
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
