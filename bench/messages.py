"""Text message throughput through the bridge, each direction on its own, counted on both
sides: how many messages per second it carries for a minute with none lost.

- **SIP → Matrix:** a small raw-UDP SIP peer plays trunkco's PBX (extension 201) and sends
  ``MESSAGE sip:receiver=bridge.test@<bridge>`` at a fixed rate (retransmitted per RFC 3261
  until a final response, like a real UAC); the Matrix user @receiver counts the texts that
  reach its DM with @sip_trunkco_201 (by /sync).
- **Matrix → SIP:** the Matrix user @sender texts @sip_trunkco_201 at a fixed rate (one
  concurrent PUT /send per message, as many clients would); the PBX peer answers each
  MESSAGE 200 and counts the distinct ones.

Every body carries a sequence number and its send time (the machine's monotonic clock, shared
by all processes here), so the receiver counts distinct messages and their latency. The bridge
runs with ``bridge.limits.messages_per_minute`` lifted (the default 30 per user would be the
limit otherwise).

A run probes each of ``--rates`` for ``--probe-seconds``, then holds the highest rate that
kept up (nothing lost within --drain seconds, delivered at 97 % of the offered rate or more,
p95 latency under 0.5 s) for ``--seconds``; when the hold falls behind, it holds the next
lower rate instead. Prints one JSON object per direction, and a short table.

    .venv/bin/python bench/messages.py --rates 10,20,30,40,50,70,100 --seconds 60
    .venv/bin/python bench/messages.py --rate 20 --seconds 60 --direction to_matrix
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._media import summary  # noqa: E402
from bench._stack import (  # noqa: E402
    HS,
    BenchUser,
    bench_login,
    bench_tmpdir,
    make_stack,
    scrape,
    start_stack,
)

GHOST = f"@sip_trunkco_201:{HS}"
T1, T2, TIMER_F = 0.5, 4.0, 32.0
BODY = re.compile(r"^bench (\d+) ([0-9.]+)$")


class SipPeer(asyncio.DatagramProtocol):
    """trunkco's PBX: sends MESSAGEs to the bridge, answers the bridge's MESSAGEs with 200."""

    def __init__(self, bridge: tuple[str, int]) -> None:
        self.bridge = bridge
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        #: MESSAGEs received from the bridge: body -> arrival time (first copy)
        self.received: dict[str, float] = {}
        self.duplicates = 0
        self._seen: set[tuple[str, str]] = set()
        #: our MESSAGEs: call-id -> (request bytes, future final status)
        self._pending: dict[str, asyncio.Future[int]] = {}
        self.statuses: dict[int, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = time.monotonic()
        text = data.decode(errors="replace")
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers.setdefault(name.strip().lower(), []).append(value.strip())
        first = lines[0]
        if first.startswith("SIP/2.0 "):
            status = int(first.split()[1])
            call_id = (headers.get("call-id") or headers.get("i") or [""])[0]
            fut = self._pending.get(call_id)
            if status >= 200 and fut is not None and not fut.done():
                fut.set_result(status)
            return
        method = first.split(" ", 1)[0]
        if method == "ACK":
            return
        call_id = (headers.get("call-id") or headers.get("i") or [""])[0]
        cseq = (headers.get("cseq") or [""])[0]
        if method == "MESSAGE":
            key = (call_id, cseq)
            if key in self._seen:
                self.duplicates += 1
            else:
                self._seen.add(key)
                self.received.setdefault(body, now)
        code, reason = (200, "OK") if method in ("MESSAGE", "OPTIONS") else (501, "Not Implemented")
        to = (headers.get("to") or headers.get("t") or [""])[0]
        if ";tag=" not in to:
            to += f";tag={secrets.token_hex(4)}"
        reply = [f"SIP/2.0 {code} {reason}"]
        reply += [f"Via: {v}" for v in headers.get("via", []) + headers.get("v", [])]
        reply += [f"From: {(headers.get('from') or headers.get('f') or [''])[0]}",
                  f"To: {to}", f"Call-ID: {call_id}", f"CSeq: {cseq}", "Content-Length: 0",
                  "", ""]
        assert self.transport is not None
        self.transport.sendto("\r\n".join(reply).encode(), addr)

    async def send_message(self, to_user: str, body: str) -> int:
        """One MESSAGE, retransmitted (T1 doubling to T2) until a final response or Timer F;
        its final status (408 on timeout)."""
        assert self.transport is not None
        call_id = secrets.token_hex(8)
        host, port = self.bridge
        payload = body.encode()
        request = "\r\n".join([
            f"MESSAGE sip:{to_user}@{host}:{port} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(8)};rport",
            "Max-Forwards: 70",
            f"From: <sip:201@127.0.0.1>;tag={secrets.token_hex(4)}",
            f"To: <sip:{to_user}@{host}>",
            f"Call-ID: {call_id}", "CSeq: 1 MESSAGE",
            "Content-Type: text/plain; charset=UTF-8",
            f"Content-Length: {len(payload)}", "", ""]).encode() + payload
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        interval, waited = T1, 0.0
        try:
            while waited < TIMER_F:
                self.transport.sendto(request, self.bridge)
                done, _ = await asyncio.wait({fut}, timeout=interval)
                if done:
                    return fut.result()
                waited += interval
                interval = min(2 * interval, T2)
            return 408
        finally:
            del self._pending[call_id]
            status = fut.result() if fut.done() else 408
            self.statuses[status] = self.statuses.get(status, 0) + 1


def kept_up(r: dict[str, Any]) -> bool:
    """Nothing lost, delivered at 97 % of the offered rate or more, p95 latency under 0.5 s
    (a backlog that grows shows in all three)."""
    return (r["lost"] == 0 and r["msgs_per_s"] >= 0.97 * r["rate_offered"]
            and (r["latency_ms"]["p95"] or 0) < 500)


def _parse(body: str) -> tuple[int, float] | None:
    m = BODY.match(body.strip())
    return (int(m.group(1)), float(m.group(2))) if m else None


def _result(direction: str, rate: float, seconds: float, sent: int, accepted: int,
            arrivals: dict[int, float], sent_at: dict[int, float], extra: dict[str, Any],
            ) -> dict[str, Any]:
    received = len(arrivals)
    lat = [(arrivals[k] - sent_at[k]) * 1000 for k in arrivals if k in sent_at]
    # delivery rate between the first and the last arrival (a constant delay cancels out)
    span = max(arrivals.values()) - min(arrivals.values()) if received > 1 else 0.0
    return {
        "direction": direction, "rate_offered": rate, "seconds": seconds,
        "sent": sent, "accepted": accepted, "received": received, "lost": sent - received,
        "msgs_per_s": round((received - 1) / span, 1) if span > 0 else 0.0,
        "latency_ms": summary(lat), **extra,
    }


async def to_matrix(peer: SipPeer, receiver: BenchUser, room: str, rate: float,
                    seconds: float, drain: float) -> dict[str, Any]:
    n = round(rate * seconds)
    start = len(receiver.events)
    sent_at: dict[int, float] = {}
    t0 = time.monotonic() + 0.2
    tasks = []
    peer.statuses.clear()
    receiver.gaps = 0
    for i in range(n):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        now = time.monotonic()
        sent_at[i] = now
        tasks.append(asyncio.ensure_future(peer.send_message(f"receiver={HS}", f"bench {i} {now:.6f}")))
    deadline = time.monotonic() + drain
    arrivals: dict[int, float] = {}
    cursor = start
    while True:
        # the sync loop appends events; stamp them as they come
        for ev in receiver.events[cursor:]:
            if ev.get("room_id") == room and ev.get("sender") == GHOST \
                    and ev.get("type") == "m.room.message":
                p = _parse(ev.get("content", {}).get("body", ""))
                if p is not None and p[0] not in arrivals:
                    arrivals[p[0]] = ev.get("_arrived", time.monotonic())
        cursor = len(receiver.events)
        if len(arrivals) >= n or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    statuses = await asyncio.gather(*tasks)
    accepted = sum(1 for s in statuses if 200 <= s < 300)
    return _result("sip_to_matrix", rate, seconds, n, accepted, arrivals, sent_at,
                   {"sip_statuses": dict(peer.statuses), "sync_gaps": receiver.gaps})


async def to_sip(peer: SipPeer, sender: BenchUser, room: str, rate: float, seconds: float,
                 drain: float) -> dict[str, Any]:
    n = round(rate * seconds)
    peer.received.clear()
    sent_at: dict[int, float] = {}
    t0 = time.monotonic() + 0.2
    tasks = []

    async def send(i: int) -> bool:
        try:
            await sender.send_text(room, f"bench {i} {sent_at[i]:.6f}")
            return True
        except Exception:
            return False

    for i in range(n):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        sent_at[i] = time.monotonic()
        tasks.append(asyncio.ensure_future(send(i)))
    accepted = sum(await asyncio.gather(*tasks))
    deadline = time.monotonic() + drain
    while time.monotonic() < deadline:
        if sum(1 for b in peer.received if _parse(b)) >= n:
            break
        await asyncio.sleep(0.05)
    arrivals = {p[0]: t for b, t in peer.received.items() if (p := _parse(b)) is not None}
    return _result("matrix_to_sip", rate, seconds, n, accepted, arrivals, sent_at,
                   {"sip_duplicates": peer.duplicates})


class StampedUser(BenchUser):
    """Notes when each event arrived by /sync (``_arrived``)."""

    async def request(self, method: str, path: str, body: Any = None,
                      query: dict[str, str] | None = None) -> Any:
        res = await super().request(method, path, body, query)
        if path.endswith("/sync") and isinstance(res, dict):
            now = time.monotonic()
            for room in res.get("rooms", {}).get("join", {}).values():
                for ev in room.get("timeline", {}).get("events", []):
                    ev["_arrived"] = now
        return res


async def run(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    stack = make_stack(root, workers=1)
    results: list[dict[str, Any]] = []
    transport = None
    users: list[BenchUser] = []
    try:
        start_stack(stack)
        loop = asyncio.get_running_loop()
        transport, peer = await loop.create_datagram_endpoint(
            lambda: SipPeer(("127.0.0.1", stack.sip_port)), local_addr=("127.0.0.1", stack.trunk_port))
        for name in ("receiver", "sender"):
            stack.synapse.register_user(name, "benchpw")
        base = await bench_login(stack.synapse.url, f"@receiver:{HS}", "benchpw")
        receiver = StampedUser(base.base_url, base.user_id, base.token)
        await base.session.close()
        sender = await bench_login(stack.synapse.url, f"@sender:{HS}", "benchpw")
        users = [receiver, sender]
        for u in users:
            u.start_sync()
        # SIP → Matrix: the first text opens the DM; @receiver joins it
        for _ in range(5):  # the bridge may still be settling right after start
            status = await peer.send_message(f"receiver={HS}", "hello")
            if status < 300:
                break
            await asyncio.sleep(2.0)
        if status >= 300:
            raise RuntimeError(f"the bridge answered {status} to the first MESSAGE:\n"
                               + stack.bridge.log_text()[-3000:])
        in_room = await receiver.wait_invite(timeout=30)
        await receiver.join(in_room)
        await receiver.wait_for(lambda e: e["room_id"] == in_room and e.get("sender") == GHOST
                                and e["type"] == "m.room.message", timeout=30)
        # Matrix → SIP: @sender's DM with the extension
        out_room = await sender.create_dm(GHOST)
        await sender.wait_for(lambda e: e["room_id"] == out_room and e.get("state_key") == GHOST
                              and e["content"].get("membership") == "join", timeout=30)
        await sender.send_text(out_room, "hello")
        deadline = time.monotonic() + 30
        while not peer.received and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

        for direction in args.directions:
            async def once(rate: float, seconds: float, direction: str = direction) -> dict[str, Any]:
                if direction == "sip_to_matrix":
                    return await to_matrix(peer, receiver, in_room, rate, seconds, args.drain)
                return await to_sip(peer, sender, out_room, rate, seconds, args.drain)

            probes = []
            passing = [args.rates[0]]
            for rate in args.rates if args.probe_seconds > 0 else []:
                r = await once(rate, args.probe_seconds)
                probes.append({k: r[k] for k in ("rate_offered", "sent", "received", "lost",
                                                 "msgs_per_s", "latency_ms")})
                print(json.dumps({"probe": direction, **probes[-1]}), flush=True)
                if not kept_up(r):
                    break
                passing.append(rate)
                await asyncio.sleep(2.0)
            held = []
            for rate in sorted(set(passing), reverse=True)[:2]:
                await asyncio.sleep(2.0)
                r = await once(rate, args.seconds)
                held.append({k: r[k] for k in ("rate_offered", "sent", "received", "lost",
                                               "msgs_per_s", "latency_ms")})
                if kept_up(r):
                    break
                print(json.dumps({"held_but_fell_behind": direction, **held[-1]}), flush=True)
            r["sustained"] = kept_up(r)
            r["probes"] = probes
            r["holds"] = held
            results.append(r)
            print(json.dumps(r), flush=True)
            await asyncio.sleep(2.0)
        with contextlib.suppress(Exception):
            samples = scrape(stack.metrics_port)
            counts = {f"{dict(ls).get('direction')}/{dict(ls).get('outcome')}": int(v)
                      for (name, ls), v in samples.items() if name == "bridge_messages_total"}
            for r in results:
                r["bridge_messages_total"] = counts
    finally:
        for u in users:
            with contextlib.suppress(Exception):
                await u.close()
        if transport is not None:
            transport.close()
        stack.stop()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="10,20,30,40,50,70,100",
                    help="probe these rates (messages/s) in order; hold the best")
    ap.add_argument("--rate", type=float, default=0.0, help="just this rate, no probing")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--probe-seconds", type=float, default=10.0)
    ap.add_argument("--drain", type=float, default=10.0,
                    help="seconds after the last send until the count is final")
    ap.add_argument("--direction", choices=("both", "sip_to_matrix", "matrix_to_sip"),
                    default="both")
    ap.add_argument("--out", default="", help="also write the JSON here")
    args = ap.parse_args()
    args.rates = [args.rate] if args.rate else [float(x) for x in args.rates.split(",") if x]
    if args.rate:
        args.probe_seconds = 0
    args.directions = (["sip_to_matrix", "matrix_to_sip"] if args.direction == "both"
                       else [args.direction])
    with bench_tmpdir("bench-messages-") as d:
        results = asyncio.run(run(args, Path(d)))
    print(f"\n{'direction':15} {'rate':>6} {'sent':>6} {'recv':>6} {'lost':>5} {'msg/s':>7} "
          f"{'lat med':>8} {'lat p95':>8}  sustained")
    for r in results:
        for h in [*r["holds"][:-1], r]:
            print(f"{r['direction']:15} {h['rate_offered']:6.0f} {h['sent']:6} {h['received']:6} "
                  f"{h['lost']:5} {h['msgs_per_s']:7.1f} {h['latency_ms']['median']!s:>8} "
                  f"{h['latency_ms']['p95']!s:>8}  {'yes' if kept_up(h) else 'no'}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
