"""An independent WebTransport client, on aioquic: reads the HTTP/3 SETTINGS the gateway
sends, then opens a session the way one browser family does (its settings and its CONNECT
upgrade token), opens the control stream and says Hello.

Usage: wt_dialects.py DIALECT HOST PORT TOKEN
Prints one JSON object: the server's settings, the CONNECT status and the first frame's
kind; exits 0 when the session was established and answered with Welcome.
"""

import asyncio
import json
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived

ENABLE_WEBTRANSPORT = 0x2B603742  # draft-02 to -07: Chromium, Firefox
WT_MAX_SESSIONS = 0x14E9CD29  # draft-13 and -14: Safari
WT_ENABLED = 0x2C7CF000  # draft-15 and later
H3_DATAGRAM = 0x33
ENABLE_CONNECT_PROTOCOL = 0x08
WT_INITIAL_MAX_DATA = 0x2B61
WT_INITIAL_MAX_STREAMS_UNI = 0x2B64
WT_INITIAL_MAX_STREAMS_BIDI = 0x2B65

# What each client family sends: its settings (beyond QPACK's) and its upgrade token.
DIALECTS = {
    "chromium": {
        "protocol": "webtransport",
        "settings": {ENABLE_WEBTRANSPORT: 1, H3_DATAGRAM: 1},
    },
    # Safari: the draft-14 setting, with flow control declared on its side.
    "draft14": {
        "protocol": "webtransport-h3",
        "settings": {
            WT_MAX_SESSIONS: 1,
            H3_DATAGRAM: 1,
            WT_INITIAL_MAX_DATA: 1 << 20,
            WT_INITIAL_MAX_STREAMS_UNI: 100,
            WT_INITIAL_MAX_STREAMS_BIDI: 100,
        },
    },
    "draft15": {
        "protocol": "webtransport-h3",
        "settings": {WT_ENABLED: 1, H3_DATAGRAM: 1},
    },
}


class DialectH3(H3Connection):
    """HTTP/3 with a browser family's WebTransport settings instead of aioquic's own."""

    def __init__(self, quic, settings):
        self._dialect_settings = settings
        super().__init__(quic, enable_webtransport=True)

    def _get_local_settings(self):
        settings = super()._get_local_settings()
        settings.pop(ENABLE_WEBTRANSPORT, None)
        settings.update(self._dialect_settings)
        return settings


class Client(QuicConnectionProtocol):
    def __init__(self, *args, settings, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = DialectH3(self._quic, settings)
        self.events = asyncio.Queue()
        # The control stream this client opens: read raw, past HTTP/3.
        self.control = None

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived) and event.stream_id == self.control:
            self.events.put_nowait(event)
            return
        for h3_event in self.h3.handle_event(event):
            self.events.put_nowait(h3_event)


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def hello(token):
    """ClientFrame { hello: Hello { token } }, length-delimited (docs/protocol.md, 3)."""
    body = b"\x0a" + varint(len(token)) + token.encode()
    frame = b"\x12" + varint(len(body)) + body
    return varint(len(frame)) + frame


async def run(dialect, host, port, token):
    spec = DIALECTS[dialect]
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        max_datagram_frame_size=65536,
        verify_mode=ssl.CERT_NONE,
        server_name="localhost",
    )
    report = {"dialect": dialect}
    async with connect(
        host,
        port,
        configuration=config,
        create_protocol=lambda *a, **k: Client(*a, settings=spec["settings"], **k),
    ) as client:
        for _ in range(500):
            if client.h3.received_settings is not None:
                break
            await asyncio.sleep(0.01)
        settings = client.h3.received_settings or {}
        report["settings"] = {f"0x{k:x}": v for k, v in settings.items()}

        session = client._quic.get_next_available_stream_id()
        client.h3.send_headers(
            session,
            [
                (b":method", b"CONNECT"),
                (b":scheme", b"https"),
                (b":authority", f"localhost:{port}".encode()),
                (b":path", b"/wt"),
                (b":protocol", spec["protocol"].encode()),
                (b"origin", b"https://localhost"),
            ],
        )
        client.transmit()
        status = None
        stream = None
        received = b""
        deadline = asyncio.get_running_loop().time() + 5
        while asyncio.get_running_loop().time() < deadline:
            try:
                event = await asyncio.wait_for(client.events.get(), 0.5)
            except asyncio.TimeoutError:
                continue
            if isinstance(event, HeadersReceived) and event.stream_id == session:
                status = dict(event.headers).get(b":status", b"").decode()
                report["status"] = status
                if status != "200":
                    break
                stream = client.h3.create_webtransport_stream(session)
                client.control = stream
                client._quic.send_stream_data(stream, hello(token))
                client.transmit()
            elif isinstance(event, StreamDataReceived) and event.stream_id == stream:
                received += event.data
                # varint length, then the ServerFrame: field 1 (welcome) is tag 0x0a,
                # field 5 (disconnect) 0x2a.
                if len(received) >= 2:
                    i = 0
                    while received[i] & 0x80:
                        i += 1
                    if len(received) > i + 1:
                        report["first_frame_tag"] = received[i + 1]
                        break
        client._quic.close()
    report["welcome"] = report.get("first_frame_tag") == 0x0A
    return report


def main():
    dialect, host, port, token = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    report = asyncio.run(run(dialect, host, port, token))
    print(json.dumps(report))
    sys.exit(0 if report["welcome"] else 1)


if __name__ == "__main__":
    main()
