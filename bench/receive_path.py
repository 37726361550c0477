"""CPU per received audio packet on the WebRTC leg's G.711 path, with and without taking
SRTP off the ICE connection directly (bridge/media/srtp_receive.py).

Two bridge legs (PCMU, 8 kHz) connect over DTLS-SRTP on 127.0.0.1. Then the bench makes
SRTP packets with the sender's own session and hands them, one per pass of the event loop
(as packets arrive from the socket), to the receiver's ICE protocol's
``datagram_received``: everything from there to the decoded PCM runs as in a call. It counts
the process's CPU time for --packets packets each way round, alternating, --rounds times,
and prints one JSON object and a short table: microseconds of CPU per packet (median of
the rounds) through aiortc's queue and task, and taken directly, and what a call saves at
50 packets a second.

    .venv/bin/python bench/receive_path.py --packets 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.media import srtp_receive
from bridge.media.leg import LegState
from bridge.media.webrtc import WebRtcLeg

PAYLOAD = bytes(160)


def leg(label: str) -> WebRtcLeg:
    return WebRtcLeg([], ["127.0.0.1"], ["PCMU"], 8000, label=label)


async def connected() -> tuple[WebRtcLeg, WebRtcLeg]:
    a, b = leg("sender"), leg("receiver")
    await a.accept_answer(await b.answer(await a.create_offer()))
    for _ in range(500):
        if a.state == b.state == LegState.CONNECTED:
            return a, b
        await asyncio.sleep(0.02)
    raise SystemExit("the two legs did not connect")


class Feed:
    def __init__(self, a: WebRtcLeg, b: WebRtcLeg) -> None:
        assert a._transceiver is not None and b._transceiver is not None
        self.tx = a._transceiver.sender.transport
        dtls = b._transceiver.receiver.transport
        connection = dtls.transport._connection
        pair = connection._nominated[1]
        self.protocol: Any = pair.protocol
        self.addr = pair.remote_addr
        self.connection = connection
        self.direct = connection.data_received
        assert isinstance(self.direct, srtp_receive.DirectReceive), "not on the G.711 path"
        self.queued = self.direct._queued
        self.ssrc = a._g711.ssrc if a._g711 is not None else 1
        self.b = b
        self.seq = 0

    def packets(self, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            self.seq += 1
            header = (bytes((0x80, 0)) + (self.seq & 0xFFFF).to_bytes(2, "big")
                      + (self.seq * 160 & 0xFFFFFFFF).to_bytes(4, "big")
                      + self.ssrc.to_bytes(4, "big"))
            out.append(self.tx._tx_srtp.protect(header + PAYLOAD))
        return out

    async def run(self, direct: bool, count: int) -> float:
        """CPU microseconds per packet, from the socket's callback to the decoded PCM."""
        self.connection.data_received = self.direct if direct else self.queued
        packets = self.packets(count)
        g711 = self.b._g711
        assert g711 is not None
        before = g711.received
        start = time.process_time()
        for data in packets:
            self.protocol.datagram_received(data, self.addr)
            await asyncio.sleep(0)
        while g711.received - before < count:
            await asyncio.sleep(0)
        spent = time.process_time() - start
        return spent / count * 1e6


async def main(args: argparse.Namespace) -> dict[str, Any]:
    a, b = await connected()
    try:
        feed = Feed(a, b)
        await feed.run(True, 500)  # warm up both paths
        await feed.run(False, 500)
        queued, direct = [], []
        for _ in range(args.rounds):
            queued.append(await feed.run(False, args.packets))
            direct.append(await feed.run(True, args.packets))
    finally:
        await asyncio.gather(a.close(), b.close())
    q, d = statistics.median(queued), statistics.median(direct)
    return {
        "packets": args.packets, "rounds": args.rounds,
        "us_per_packet": {"queued": round(q, 2), "direct": round(d, 2)},
        "rounds_us": {"queued": [round(x, 2) for x in queued],
                      "direct": [round(x, 2) for x in direct]},
        "saved_pct_of_core_per_call": round((q - d) * 50 / 1e4, 3),
        "ratio": round(d / q, 3),
    }


def table(r: dict[str, Any]) -> str:
    u = r["us_per_packet"]
    return "\n".join([
        "| receive path | CPU µs per packet (median) |",
        "|---|---|",
        f"| aiortc's queue and task | {u['queued']} |",
        f"| taken directly (srtp_receive) | {u['direct']} |",
        f"\nratio {r['ratio']}; at 50 packets/s, in this hot loop, a call saves "
        f"{r['saved_pct_of_core_per_call']} % of a core (a worker saves more: see "
        "bench/results/README.md)",
    ])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    result = asyncio.run(main(ap.parse_args()))
    print(table(result), file=sys.stderr)
    print(json.dumps(result))
