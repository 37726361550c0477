"""The call benchmark's Matrix-side callers, in one process per group of calls.

Each call is a real WebRTC endpoint (aiortc: ICE, DTLS-SRTP, the test client's Chrome-like
SDP and, in ``matrix`` mode, Element's ``m.call.*`` signalling through Synapse by
:class:`tests.harness.call_client.CallClient`). Only its audio skips aiortc's codec pipeline
(:class:`LeanPeer`): PCMU packets from :mod:`bench._media` go straight into the DTLS
transport's SRTP sender, and received packets are measured straight out of it. A full aiortc
client costs about as much CPU as the bridge's own WebRTC leg (DESIGN §4); on a 2-core machine
that would measure the clients, not the bridge.

Modes: ``matrix`` (through Synapse and the bridge to the PBX) and ``direct`` (the same
callers offering to :mod:`bench._baseline`'s aiortc peers over a TCP socket: no Matrix, no
bridge, no SIP). Driven over a multiprocessing pipe by ``bench/calls.py``:
``call`` -> ``measure`` -> ``hangup``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
    summary,
)
from bench._stack import BenchUser, bench_login
from bridge.media.g711_rtp import IdleTrack
from tests.harness.call_client import CallClient, CallState
from tests.harness.rtc_peer import RtcPeer

DRAIN = 1.0  # seconds after the PBX side's window until the meters are read


class LeanPeer(RtcPeer):
    """The test client's peer (PCMU only), its audio at the RTP level (module docstring)."""

    def __init__(self, **_ignored: Any) -> None:
        super().__init__(codecs=["PCMU"])
        self.source: ToneSource | None = None
        self.meter = Meter()
        self._transport = self.audio.receiver.transport
        self._raw_send = self.dtmf._send  # the DTLS transport's own SRTP sender
        self._transport._handle_rtp_data = self._on_rtp
        self.audio.sender.replaceTrack(IdleTrack())

    async def _on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        now = time.monotonic()
        parsed = rtp_parse(data)
        if parsed is not None and parsed[0] == 0:
            self.meter.ulaw(now, parsed[2], parsed[4])

    async def send_packet(self, n: int) -> None:
        if self.source is None or self._transport.state != "connected":
            return
        await self._raw_send(rtp_packet(0, n, n * SPF, self.audio.sender._ssrc,
                                        self.source.payload(n)))


class BenchCallClient(CallClient):
    #: how long each PUT of an m.call.* event to Synapse took (ms)
    put_ms: list[float] = []

    def _new_peer(self, video: bool) -> RtcPeer:
        return LeanPeer()

    async def _send(self, event_type: str, content: dict[str, Any]) -> str:
        t = time.monotonic()
        try:
            return await super()._send(event_type, content)
        finally:
            BenchCallClient.put_ms.append((time.monotonic() - t) * 1000)


class Call:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.index: int = spec["index"]
        self.user: BenchUser | None = None
        self.room: str | None = None
        self.client: BenchCallClient | None = None
        self.peer: LeanPeer | None = None
        self.ok = False
        self.setup_ms: float | None = None
        self.error = ""


async def _setup_matrix(call: Call, hs_url: str) -> None:
    s = call.spec
    call.user = await bench_login(hs_url, s["user"], s["password"])
    call.user.start_sync()
    call.room = await call.user.create_dm(s["ghost"])
    await call.user.wait_for(lambda e: e["room_id"] == call.room and e.get("state_key") == s["ghost"]
                             and e["content"].get("membership") == "join", timeout=120)


async def _place_matrix(call: Call, ticker: Ticker, t_ref: float) -> None:
    assert call.user is not None and call.room is not None
    call.client = BenchCallClient(call.user.transport(call.room), name=f"bench{call.index}")
    t = time.monotonic()
    await call.client.place_call()
    peer = call.client.peer
    assert isinstance(peer, LeanPeer)
    _attach(call, peer, ticker, t_ref)
    state = await call.client.wait_for_state(CallState.CONNECTED, CallState.ENDED, timeout=90)
    if state != CallState.CONNECTED:
        # a refused call (the bridge's admission control) loads the machine no further:
        # no more ticks, its peer and the user's /sync closed
        reason = call.client.hangup_reason
        if peer.source is not None:
            ticker.remove(peer.source)
        call.peer = None
        with contextlib.suppress(Exception):
            await call.client.close()
        with contextlib.suppress(Exception):
            await call.user.close()
        call.client = None
        call.user = None
        raise RuntimeError(f"call ended: {reason}")
    call.setup_ms = (time.monotonic() - t) * 1000


async def _place_direct(call: Call, ticker: Ticker, t_ref: float) -> None:
    host, port = call.spec["peer"]
    peer = LeanPeer()
    _attach(call, peer, ticker, t_ref)
    t = time.monotonic()
    offer = await peer.create_offer()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(json.dumps({"offer": offer, "index": call.index}).encode() + b"\n")
        await writer.drain()
        reply = json.loads(await asyncio.wait_for(reader.readline(), 60))
    finally:
        writer.close()
    if "answer" not in reply:
        raise RuntimeError(reply.get("error", "no answer"))
    await peer.accept_answer(reply["answer"])
    await asyncio.wait_for(peer.connected.wait(), 60)
    call.setup_ms = (time.monotonic() - t) * 1000


def _attach(call: Call, peer: LeanPeer, ticker: Ticker, t_ref: float) -> None:
    call.peer = peer
    peer.source = ToneSource(t_ref, call.spec["phase_ms"])
    ticker.add(peer.source, peer.send_packet)


async def _run(conn: Connection, spec: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING)
    mode, t_ref = spec["mode"], spec["t_ref"]
    calls = [Call(c) for c in spec["calls"]]
    ticker = Ticker(t_ref)
    loop = asyncio.get_running_loop()

    async def recv() -> dict[str, Any]:
        return await loop.run_in_executor(None, conn.recv)  # type: ignore[no-any-return]

    async def guarded(call: Call, coro: Any) -> None:
        try:
            await coro
        except Exception as e:
            call.error = f"{type(e).__name__}: {e}"[:300]

    if mode == "matrix":
        await asyncio.gather(*(guarded(c, _setup_matrix(c, spec["hs_url"])) for c in calls))
    conn.send({"ready": True, "errors": [c.error for c in calls if c.error]})
    window: tuple[float, float] | None = None
    try:
        while True:
            msg = await recv()
            cmd = msg["cmd"]
            if cmd == "call":
                async def place(call: Call, at: float) -> None:
                    await asyncio.sleep(max(0.0, at - time.monotonic()))
                    if call.error:
                        return
                    if mode == "matrix":
                        await _place_matrix(call, ticker, t_ref)
                    else:
                        await _place_direct(call, ticker, t_ref)
                    call.ok = True

                await asyncio.gather(*(guarded(c, place(c, at))
                                       for c, at in zip(calls, msg["at"], strict=True)))
                conn.send({"calls": [{"index": c.index, "ok": c.ok, "setup_ms": c.setup_ms,
                                      "error": c.error} for c in calls],
                           "put_ms": summary(BenchCallClient.put_ms)})
            elif cmd == "measure":
                t0, seconds = msg["t0"], msg["seconds"]
                window = (t0, seconds)
                signal = signal_ulaw(seconds)
                for c in calls:
                    if c.peer is not None and c.peer.source is not None:
                        c.peer.source.set_window(t0, seconds, signal)
                await asyncio.sleep(max(0.0, t0 - time.monotonic()))
                ticker.record_late = True
                await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic()))
                ticker.record_late = False
                await asyncio.sleep(max(0.0, t0 + LEAD + seconds + DRAIN - time.monotonic()))
                conn.send({
                    "meters": {str(c.index): {**c.peer.meter.report(),
                                              "sent_tone": c.peer.source.sent_tone
                                              if c.peer.source else 0}
                               for c in calls if c.peer is not None and c.ok},
                    "send_late_ms": summary((x * 1000 for x in ticker.late), 2),
                })
            elif cmd == "hangup":
                await ticker.stop()
                for c in calls:
                    if c.client is not None:
                        with contextlib.suppress(Exception):
                            await c.client.hangup()
                        with contextlib.suppress(Exception):
                            await c.client.close()
                    elif c.peer is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(c.peer.close(), 5)
                for c in calls:
                    if c.user is not None:
                        with contextlib.suppress(Exception):
                            await c.user.close()
                conn.send({"done": True, "window": window})
                return
    except EOFError:
        return


def caller_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Entry point of one callers process (multiprocessing, spawn)."""
    asyncio.run(_run(conn, spec))
