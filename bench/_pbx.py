"""The PBX side's audio in the call benchmark, in its own process: one UDP port (the one the
sipp UAS puts into its SDP) for every call. It learns each call's RTP address from the first
packet the bridge sends, then plays the PBX signal of :mod:`bench._media` to it (plain RTP,
PCMU, 20 ms) and measures what the bridge sends (tone frames, burst onsets, jitter).

Driven over a multiprocessing pipe: ``{"cmd": "measure", "t0", "seconds"}``,
``{"cmd": "report"}``, ``{"cmd": "stop"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from bench._media import (
    LEAD,
    SPF,
    Meter,
    Ticker,
    ToneSource,
    rtp_packet,
    rtp_parse,
    signal_ulaw,
)


class _Stream:
    def __init__(self, addr: tuple[str, int], source: ToneSource) -> None:
        self.addr = addr
        self.source = source
        self.meter = Meter()
        self.ssrc = random.getrandbits(32)


class PbxMedia(asyncio.DatagramProtocol):
    def __init__(self, t_ref: float) -> None:
        self.t_ref = t_ref
        self.ticker = Ticker(t_ref)
        self.streams: dict[tuple[str, int], _Stream] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.window: tuple[float, float, bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = time.monotonic()
        stream = self.streams.get(addr)
        if stream is None:
            phase = (len(self.streams) * 7) % 20
            stream = _Stream(addr, ToneSource(self.t_ref, phase))
            if self.window is not None:
                stream.source.set_window(*self.window)
            self.streams[addr] = stream
            self.ticker.add(stream.source, lambda n, s=stream: self._send(s, n))
        parsed = rtp_parse(data)
        if parsed is not None and parsed[0] == 0:
            stream.meter.ulaw(now, parsed[2], parsed[4])

    def _send(self, stream: _Stream, n: int) -> None:
        if self.transport is not None:
            self.transport.sendto(rtp_packet(0, n, n * SPF, stream.ssrc, stream.source.payload(n)),
                                  stream.addr)

    def measure(self, t0: float, seconds: float) -> None:
        self.window = (t0 + LEAD, seconds, signal_ulaw(seconds))
        for s in self.streams.values():
            s.source.set_window(*self.window)

    def report(self) -> dict[str, Any]:
        return {"streams": {f"{a[0]}:{a[1]}": {**s.meter.report(), "sent_tone": s.source.sent_tone}
                            for a, s in self.streams.items()}}


class _Sink(asyncio.DatagramProtocol):
    """RTCP from the bridge (port + 1): read and dropped."""


async def _main(conn: Connection, port: int, t_ref: float) -> None:
    loop = asyncio.get_running_loop()
    pbx = PbxMedia(t_ref)
    transport, _ = await loop.create_datagram_endpoint(lambda: pbx, local_addr=("127.0.0.1", port))
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rtcp, _ = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", port + 1))
    conn.send({"ready": True})
    try:
        while True:
            msg = await asyncio.to_thread(conn.recv)
            cmd = msg.get("cmd")
            if cmd == "measure":
                pbx.measure(msg["t0"], msg["seconds"])
                conn.send({"ok": True})
            elif cmd == "report":
                conn.send(pbx.report())
            elif cmd == "stop":
                break
    except EOFError:
        pass
    finally:
        await pbx.ticker.stop()
        transport.close()
        rtcp.close()


def pbx_main(conn: Connection, port: int, t_ref: float) -> None:
    """Entry point of the PBX media process (multiprocessing, spawn)."""
    asyncio.run(_main(conn, port, t_ref))
