"""Inbound calls from a sipp UAC: what the controller learns, its decisions, the limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.sip.events import Answered, Dtmf, Ended
from bridge.sip.handles import CallHandle
from tests.sip.conftest import StartPool, sip_config, trunk, worker_address
from tests.sip.sippctl import DTMF_PCAP, Sipp

CALLER = {"caller": "555", "caller_name": "Bob Caller"}


def uac(tmp_path: Path, pool: object, scenario: str = "uac_call", hold_ms: int = 1500,
        status: str = "200", **kwargs: object) -> Sipp:
    keys = {**CALLER, "pcap": DTMF_PCAP.format(1)}
    return Sipp(tmp_path, scenario, remote=worker_address(pool),  # type: ignore[arg-type]
                service="alice=example.org", keys=keys,
                template={"STATUS": status, "HOLD_MS": str(hold_ms)},
                **kwargs)  # type: ignore[arg-type]


async def test_inbound_call_reported_answered_with_dtmf(tmp_path: Path, start_pool: StartPool):
    incoming: asyncio.Queue[CallHandle] = asyncio.Queue()

    async def on_call(handle: CallHandle) -> None:
        await handle.ringing()
        await handle.answer()
        await incoming.put(handle)

    pool = await start_pool(sip_config(trunk()), on_incoming_call=on_call)
    caller = uac(tmp_path, pool, rtp_echo=True).start()
    call = await asyncio.wait_for(incoming.get(), 10)
    info = call.info
    assert info is not None
    assert (info.company, info.caller_user, info.caller_display) == ("acme", "555", "Bob Caller")
    assert info.asserted_identity == "sip:555@pbx.example"
    assert info.target == "alice=example.org" and info.to_user == "alice=example.org"
    assert info.source == caller.address
    assert info.sip_call_id
    assert await call.wait_for(Answered, 5)
    await call.play_tone(1000, -12)  # sipp echoes it back
    report = await call.probe_audio(0.5)
    assert abs(report.freq_hz - 1000) <= 20, report
    dtmf = [await call.wait_for(Dtmf, 5), await call.wait_for(Dtmf, 5)]
    assert [(d.digit, d.method) for d in dtmf] == [("1", "rfc4733"), ("5", "info")]
    assert await call.wait_ended(10) == Ended(200, "Normal call clearing", "remote") or \
        (call.end is not None and getattr(call.end, "by", "") == "remote")
    assert await caller.done(10) == 0, caller.explain()
    assert "SIP/2.0 180 Ringing" in caller.messages()


async def test_bridge_hangs_up_inbound_call(tmp_path: Path, start_pool: StartPool):
    answered: asyncio.Queue[CallHandle] = asyncio.Queue()

    async def on_call(handle: CallHandle) -> None:
        await handle.answer()
        await answered.put(handle)

    pool = await start_pool(sip_config(trunk()), on_incoming_call=on_call)
    caller = uac(tmp_path, pool, "uac_call_wait_bye").start()
    call = await asyncio.wait_for(answered.get(), 10)
    await call.wait_for(Answered, 5)
    await call.hangup()
    end = await call.wait_ended(5)
    assert isinstance(end, Ended) and end.by == "local"
    assert await caller.done(10) == 0, caller.explain()


async def test_controller_rejects_and_no_handler_means_480(tmp_path: Path,
                                                           start_pool: StartPool):
    async def on_call(handle: CallHandle) -> None:
        await handle.reject(603, "Decline")

    pool = await start_pool(sip_config(trunk()), on_incoming_call=on_call)
    caller = uac(tmp_path / "a", pool, "uac_rejected", status="603").start()
    assert await caller.done(10) == 0, caller.explain()
    pool.on_incoming_call = None
    caller = uac(tmp_path / "b", pool, "uac_rejected", status="480").start()
    assert await caller.done(10) == 0, caller.explain()


async def test_source_not_allowed_gets_403_and_is_not_reported(tmp_path: Path,
                                                              start_pool: StartPool):
    reported: list[CallHandle] = []
    pool = await start_pool(sip_config(trunk(allowed_sources=("192.0.2.0/24",))),
                            on_incoming_call=reported.append)
    caller = uac(tmp_path, pool, "uac_rejected", status="403").start()
    assert await caller.done(10) == 0, caller.explain()
    assert reported == []


async def test_company_limit_486_and_worker_limit_503(tmp_path: Path, start_pool: StartPool):
    held: asyncio.Queue[CallHandle] = asyncio.Queue()

    async def on_call(handle: CallHandle) -> None:
        await handle.answer()
        await held.put(handle)

    # company limit (pool-wide): one call for acme
    pool = await start_pool(sip_config(trunk(max_calls=1)), on_incoming_call=on_call)
    first = uac(tmp_path / "1", pool, hold_ms=3000).start()
    await asyncio.wait_for(held.get(), 10)
    second = uac(tmp_path / "2", pool, "uac_rejected", status="486").start()
    assert await second.done(10) == 0, second.explain()
    assert await first.done(15) == 0, first.explain()

    # worker capacity: one call per worker
    pool = await start_pool(sip_config(trunk(), calls_per_worker=1), on_incoming_call=on_call)
    first = uac(tmp_path / "3", pool, hold_ms=3000).start()
    await asyncio.wait_for(held.get(), 10)
    second = uac(tmp_path / "4", pool, "uac_rejected", status="503").start()
    assert await second.done(10) == 0, second.explain()
    assert await first.done(15) == 0, first.explain()
