#!/usr/bin/env python3
"""Idle memory of HTTP fallback connections: opens N streams (GET /http/stream) on a
running gateway, says Hello on each (POST /http/send), waits, and reports the gateway's
RSS growth per connection. Loopback only; at most 20,000 connections; stops by itself.

Usage: bench/http_idle.py --port PORT --pid PID --secret HS256_SECRET [--connections N]
(run the gateway with --max-connections-per-ip 0: every connection comes from 127.0.0.1)
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def hello_frame(token: str) -> bytes:
    """ClientFrame { hello: Hello { token } }, length-prefixed (docs/protocol.md)."""
    frame = field(2, field(1, token.encode()))
    return varint(len(frame)) + frame


def jwt(secret: str, user: int) -> str:
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": str(user), "account_id": 1 + user // 100, "role": "agent", "exp": int(time.time()) + 3600}
    body = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(secret.encode(), header + b"." + body, hashlib.sha256).digest())
    return (header + b"." + body + b"." + sig).decode()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_stream(port: int, token: str, opened: list, failed: list, lock: asyncio.Semaphore):
    try:
        await open_one(port, token, opened, lock)
    except (OSError, RuntimeError, asyncio.TimeoutError, asyncio.IncompleteReadError, IndexError) as e:
        failed.append(repr(e))


async def open_one(port: int, token: str, opened: list, lock: asyncio.Semaphore):
    async with lock:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /http/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        session = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"rtgate-session:")
        )
        send_r, send_w = await asyncio.open_connection("127.0.0.1", port)
        body = hello_frame(token)
        send_w.write(
            b"POST /http/send HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + f"rtgate-session: {session}\r\nrtgate-seq: 0\r\n".encode()
            + f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status = (await asyncio.wait_for(send_r.readline(), 15)).split()[1]
        send_w.close()
        if status != b"204":
            raise RuntimeError(f"Hello answered {status}")
        # The Welcome (and the automatic rooms' frames) arrive on the stream.
        await asyncio.wait_for(reader.read(1), 15)
        opened.append((reader, writer))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--settle", type=float, default=5.0)
    a = ap.parse_args()
    if not 0 < a.connections <= 20_000:
        sys.exit("connections: 1 to 20,000")
    before = rss_kib(a.pid)
    opened, failed = [], []
    lock = asyncio.Semaphore(100)
    t0 = time.time()
    await asyncio.gather(
        *(open_stream(a.port, jwt(a.secret, n + 1), opened, failed, lock) for n in range(a.connections))
    )
    connect_s = time.time() - t0
    await asyncio.sleep(a.settle)
    after = rss_kib(a.pid)
    per = (after - before) / len(opened)
    print(
        json.dumps(
            {
                "connections": len(opened),
                "failed": len(failed),
                "first_failure": failed[0] if failed else None,
                "connect_s": round(connect_s, 1),
                "rss_before_kib": before,
                "rss_after_kib": after,
                "kib_per_connection": round(per, 2),
            }
        )
    )
    for _, writer in opened:
        writer.close()


asyncio.run(main())
