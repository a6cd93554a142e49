// Starts and stops rtgate gateways for the browser tests: the cargo-built binary
// (target/debug/rtgate), on fresh loopback ports, in development mode.
import { spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = fileURLToPath(new URL("../..", import.meta.url));
const binary = join(repoRoot, "target", "debug", "rtgate");

/** A free TCP port on 127.0.0.1. */
export function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const server = createServer().once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A free UDP port on 127.0.0.1 (nothing listens there afterwards). */
export function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const socket = createSocket("udp4").once("error", reject);
    socket.bind(0, "127.0.0.1", () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });
}

/** A temporary directory removed by `cleanup`. */
export function tempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Starts a gateway. Options: httpPort, wtPort (fresh ones when omitted), certDir,
 * redis + redisPrefix (Redis engine), args (more flags), startTimeoutMs.
 * Resolves once it prints its development API key.
 */
export async function startGateway(options = {}) {
  const httpPort = options.httpPort ?? (await freeTcpPort());
  const wtPort = options.wtPort ?? (await freeUdpPort());
  const args = [
    "--http-listen", `127.0.0.1:${httpPort}`,
    "--wt-listen", `127.0.0.1:${wtPort}`,
    "--cert-dir", options.certDir,
    "--drain-timeout", "1s",
    "--shutdown-delay", "0s",
  ];
  if (options.redis) args.push("--redis", options.redis, "--redis-prefix", options.redisPrefix);
  if (options.args) args.push(...options.args);
  const child = spawn(binary, args, {
    cwd: repoRoot,
    env: { ...process.env, RTGATE_LOG: process.env.RTGATE_LOG ?? "warn" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const apiKey = await new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`gateway did not start in time:\n${output}`)),
      options.startTimeoutMs ?? 20_000,
    );
    const onData = (chunk) => {
      output += chunk;
      const match = /API key:\s+(\S+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", (chunk) => { output += chunk; });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`gateway exited (${code}) before it started:\n${output}`));
    });
  });
  const http = `http://127.0.0.1:${httpPort}`;
  return {
    httpPort,
    wtPort,
    http,
    wtUrl: `https://127.0.0.1:${wtPort}/wt`,
    apiKey,
    output: () => output,
    /** Publishes an event through the server API; resolves to the positions. */
    async publish(rooms, event) {
      const response = await fetch(`${http}/api/v1/publish`, {
        method: "POST",
        headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
        body: JSON.stringify({ rooms, event }),
      });
      if (!response.ok) throw new Error(`publish: ${response.status} ${await response.text()}`);
      return response.json();
    },
    /** Calls the server API with a JSON body; resolves to the JSON answer. */
    async api(method, path, body) {
      const response = await fetch(`${http}/api/v1${path}`, {
        method,
        headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
      return response.json();
    },
    /** The value of a metric in /metrics (the first sample whose line starts with `prefix`). */
    async metric(prefix) {
      const text = await (await fetch(`${http}/metrics`)).text();
      const line = text.split("\n").find((l) => l.startsWith(prefix));
      return line === undefined ? undefined : Number(line.split(" ").pop());
    },
    /** Stops it: SIGTERM (clients are told to reconnect), SIGKILL if it lingers. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
