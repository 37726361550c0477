"""The baseline of the call benchmark: pure aiortc, no Matrix, no pjsua2, no SIP.

Each process holds up to 4 WebRTC legs (like a bridge worker), each the bridge's own aiortc
wrapper (:class:`bridge.media.webrtc.WebRtcLeg`, PCMU, 8 kHz frames) with its audio through
aiortc's own RTP sender and receiver (``direct_g711=False``; the bridge moves G.711 itself,
bridge/media/g711_rtp.py, so the baseline shows what that saves), answering one bench
caller's offer, which comes over a TCP socket (one JSON line each way). One 20 ms clock per
process (like pjmedia's) writes the PBX-side signal of :mod:`bench._media` into every leg, and
a task per leg reads what the caller sends and measures it: the same work as a bridge
worker's WebRTC side and pump, with the SIP leg replaced by the signal generator and meter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from multiprocessing.connection import Connection
from typing import Any

from bench._media import LEAD, Meter, Ticker, ToneSource, signal_pcm
from bridge.media.webrtc import WebRtcLeg


class _Leg:
    def __init__(self, leg: WebRtcLeg, source: ToneSource) -> None:
        self.leg = leg
        self.source = source
        self.meter = Meter()
        self.task: asyncio.Task[None] | None = None

    async def read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await self.leg.read_frame()
                self.meter.pcm(time.monotonic(), frame)


async def _main(conn: Connection, spec: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING)
    loop = asyncio.get_running_loop()
    t_ref, phase = spec["t_ref"], spec["phase_ms"]
    ticker = Ticker(t_ref)
    legs: list[_Leg] = []
    window: list[Any] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            msg = json.loads(await reader.readline())
            leg = WebRtcLeg(host_addresses=("127.0.0.1",), codec_preference=("PCMU",),
                            clock_rate=8000, label=f"baseline{msg.get('index')}",
                            direct_g711=False)
            answer = await leg.answer(msg["offer"])
            entry = _Leg(leg, ToneSource(t_ref, phase, pcm=True))
            if window:
                entry.source.set_window(*window)
            legs.append(entry)
            entry.task = loop.create_task(entry.read())
            ticker.add(entry.source, lambda n, e=entry: e.leg.write_frame(e.source.payload(n)))
            writer.write(json.dumps({"answer": answer}).encode() + b"\n")
        except Exception as e:
            writer.write(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode() + b"\n")
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", spec["port"])
    conn.send({"ready": True})
    try:
        while True:
            msg = await loop.run_in_executor(None, conn.recv)
            if msg["cmd"] == "measure":
                window[:] = [msg["t0"] + LEAD, msg["seconds"], signal_pcm(msg["seconds"]).tobytes()]
                for e in legs:
                    e.source.set_window(*window)
                conn.send({"ok": True})
            elif msg["cmd"] == "report":
                conn.send({"legs": [{**e.meter.report(), "sent_tone": e.source.sent_tone}
                                    for e in legs]})
            elif msg["cmd"] == "stop":
                break
    except EOFError:
        pass
    finally:
        server.close()
        await ticker.stop()
        for e in legs:
            if e.task is not None:
                e.task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(e.leg.close(), 5)


def baseline_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Entry point of one baseline peer process (multiprocessing, spawn)."""
    asyncio.run(_main(conn, spec))
