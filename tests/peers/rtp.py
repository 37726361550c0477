"""A bare RTP endpoint on 127.0.0.1 (PCMU and RFC 4733 events), for media checks that
need no SIP stack: e.g. stream a tone into an RTP echo or a bridge's media port and
analyse what comes back."""

from __future__ import annotations

import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from bridge.media import tone
from tests.peers.ports import LOOPBACK, free_rtp_port

PCMU = 0
TELEPHONE_EVENT = 101
_DTMF = "0123456789*#ABCD"


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes
    source: tuple[str, int]


class RtpPeer:
    """Sends and receives RTP on ``127.0.0.1:port`` (an even port, picked free)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_rtp_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, self.port))
        self.sock.settimeout(0.2)
        self.ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._lock = threading.Lock()
        self._packets: list[RtpPacket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._recv_loop, daemon=True, name="rtp-peer")
        self._thread.start()

    def _recv_loop(self) -> None:
        while not self._closed.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                break
            if len(data) < 12 or data[0] >> 6 != 2:
                continue
            cc = data[0] & 0x0F
            seq, ts, ssrc = struct.unpack("!HII", data[2:12])
            start = 12 + 4 * cc
            if data[0] & 0x10 and len(data) >= start + 4:  # header extension
                start += 4 + 4 * struct.unpack("!H", data[start + 2 : start + 4])[0]
            payload = data[start:]
            if data[0] & 0x20 and payload:  # padding
                payload = payload[: -payload[-1]]
            pkt = RtpPacket(
                data[1] & 0x7F, seq, ts, ssrc, bool(data[1] & 0x80), payload, (addr[0], addr[1])
            )
            with self._lock:
                self._packets.append(pkt)

    def _send(
        self, dest: tuple[str, int], pt: int, payload: bytes, marker: bool, ts: int | None = None
    ) -> None:
        header = struct.pack(
            "!BBHII",
            0x80,
            (0x80 if marker else 0) | pt,
            self._seq & 0xFFFF,
            (self._ts if ts is None else ts) & 0xFFFFFFFF,
            self.ssrc,
        )
        self._seq += 1
        self.sock.sendto(header + payload, dest)

    def send_tone(
        self,
        dest_port: int,
        freq_hz: float = 1000.0,
        seconds: float = 1.0,
        level_dbfs: float = -12.0,
        dest_host: str = LOOPBACK,
    ) -> None:
        """Stream a PCMU sine to ``dest_host:dest_port`` in real time (20 ms packets)."""
        if not dest_host.startswith("127."):
            raise ValueError("loopback only")
        frames = round(seconds * 50)
        start = time.monotonic()
        for i, frame in enumerate(tone.sine_frames(freq_hz, 8000, 20, level_dbfs, frames)):
            self._send((dest_host, dest_port), PCMU, tone.pcm_to_ulaw(frame), i == 0)
            self._ts += 160
            delay = start + (i + 1) * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def send_dtmf(
        self,
        dest_port: int,
        digits: str,
        duration_ms: int = 160,
        dest_host: str = LOOPBACK,
        pt: int = TELEPHONE_EVENT,
    ) -> None:
        """Send RFC 4733 events for ``digits`` (one event per digit, 3 end packets each)."""
        if not dest_host.startswith("127."):
            raise ValueError("loopback only")
        dest = (dest_host, dest_port)
        for d in digits:
            code = _DTMF.index(d.upper())
            ts = self._ts
            steps = max(1, duration_ms // 20)
            for i in range(1, steps + 1):
                payload = struct.pack("!BBH", code, 10, i * 160)
                self._send(dest, pt, payload, i == 1, ts)
                time.sleep(0.02)
            end = struct.pack("!BBH", code, 0x80 | 10, steps * 160)
            for _ in range(3):
                self._send(dest, pt, end, False, ts)
            self._ts += steps * 160 + 800
            time.sleep(0.1)

    def packets(self, payload_type: int | None = None) -> list[RtpPacket]:
        with self._lock:
            return [p for p in self._packets if payload_type in (None, p.payload_type)]

    def received_pcm(self) -> bytes:
        """The PCMU payloads received so far, decoded to int16 PCM at 8000 Hz."""
        return tone.ulaw_to_pcm(b"".join(p.payload for p in self.packets(PCMU)))

    def received_dtmf(self, payload_type: int = TELEPHONE_EVENT) -> str:
        """Digits of the RFC 4733 events received (one per event, by timestamp)."""
        seen: dict[tuple[int, int], str] = {}
        for p in self.packets(payload_type):
            if len(p.payload) >= 4 and p.payload[0] < len(_DTMF):
                seen.setdefault((p.ssrc, p.timestamp), _DTMF[p.payload[0]])
        return "".join(seen.values())

    def close(self) -> None:
        self._closed.set()
        self._thread.join(1.0)
        self.sock.close()

    def __enter__(self) -> RtpPeer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
