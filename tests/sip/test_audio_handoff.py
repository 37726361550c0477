"""Frames from pjmedia's clock thread reach the loop in order, and the frames given in one
clock tick (one per call) wake the loop once."""

from __future__ import annotations

import asyncio
import threading

from bridge.sip.audio import LoopHandOff


async def test_frames_of_one_tick_wake_the_loop_once() -> None:
    hand_off = LoopHandOff(asyncio.get_running_loop())
    got: list[tuple[str, bytes]] = []

    def sink(name: str):  # type: ignore[no-untyped-def]
        return lambda data: got.append((name, data))

    sinks = [sink(f"call{i}") for i in range(4)]

    def tick(n: int) -> None:  # what the clock thread does for 4 calls in one tick
        for i, s in enumerate(sinks):
            hand_off.give(s, bytes([n, i]))

    for n in range(3):
        t = threading.Thread(target=tick, args=(n,))
        t.start()
        t.join()
        await asyncio.sleep(0.01)
    assert got == [(f"call{i}", bytes([n, i])) for n in range(3) for i in range(4)]
    assert hand_off.wakeups == 3


async def test_a_failing_sink_does_not_stop_the_others() -> None:
    hand_off = LoopHandOff(asyncio.get_running_loop())
    got: list[bytes] = []

    def broken(data: bytes) -> None:
        raise ValueError("boom")

    t = threading.Thread(target=lambda: [hand_off.give(broken, b"x"),
                                         hand_off.give(got.append, b"y")])
    t.start()
    t.join()
    await asyncio.sleep(0.01)
    assert got == [b"y"]
