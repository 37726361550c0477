"""Outbound calls from a worker to sipp UASes: audio by content, failures by status, DTMF."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.sip.config import SessionTimers
from bridge.sip.errors import (
    CapacityExceeded,
    CompanyBusy,
    InvalidTarget,
    PjsipFailure,
    UnknownCompany,
)
from bridge.sip.events import Answered, Dtmf, EarlyMedia, Ended, Ringing
from tests.sip.conftest import StartPool, sip_config, trunk
from tests.sip.sippctl import Sipp


async def test_call_answered_tone_echoed_dtmf_and_bye(tmp_path: Path, start_pool: StartPool):
    uas = Sipp(tmp_path, "uas_answer", rtp_echo=True).start()
    timers = SessionTimers("optional", expires_s=600, min_se_s=120)
    pool = await start_pool(sip_config(trunk(domain=uas.address), session_timers=timers))
    call = await pool.make_call("acme", "100", from_user="alice=example.org",
                                from_display="Alice Martin")
    assert call.sip_call_id
    ringing = await call.wait_for(Ringing, 5)
    assert ringing.status == 180
    answered = await call.wait_for(Answered, 5)
    assert answered.codec == "PCMU/8000"

    await call.play_tone(1000, -12)
    report = await call.probe_audio(1.0)
    assert abs(report.freq_hz - 1000) <= 20, report
    assert report.level_dbfs > -20, report
    await call.stop_tone()

    # RFC 4733 events come back through sipp's RTP echo
    assert await call.send_dtmf("1#", "rfc4733") == "rfc4733"
    got = [await call.wait_for(Dtmf, 5), await call.wait_for(Dtmf, 5)]
    assert [(d.digit, d.method) for d in got] == [("1", "rfc4733"), ("#", "rfc4733")]
    assert await call.send_dtmf("5", "info") == "info"

    await call.hangup()
    end = await call.wait_ended(5)
    assert end == Ended(200, "OK", "local") or (isinstance(end, Ended) and end.by == "local")
    assert await uas.done(10) == 0, uas.explain()
    msgs = uas.messages()
    assert '"Alice Martin" <sip:alice=example.org@127.0.0.1>' in msgs
    assert "Content-Type: application/dtmf-relay" in msgs and "Signal=5" in msgs
    assert "c=IN IP4 127.0.0.1" in msgs
    assert "Session-Expires: 600" in msgs and "Min-SE: 120" in msgs


@pytest.mark.parametrize(("status", "reason"), [(486, "Busy Here"), (404, "Not Found"),
                                                (480, "Temporarily Unavailable")])
async def test_rejected_call_reports_status(
    tmp_path: Path, start_pool: StartPool, status: int, reason: str
):
    uas = Sipp(tmp_path, "uas_reject", template={"STATUS": str(status), "REASON": reason})
    uas.start()
    pool = await start_pool(sip_config(trunk(domain=uas.address)))
    call = await pool.make_call("acme", "100", from_user="bob=example.org")
    end = await call.wait_ended(10)
    assert end == Ended(status, reason, "remote")
    assert await uas.done(10) == 0, uas.explain()


async def test_early_media_then_cancel(tmp_path: Path, start_pool: StartPool):
    uas = Sipp(tmp_path, "uas_early", rtp_echo=True).start()
    pool = await start_pool(sip_config(trunk(domain=uas.address)))
    call = await pool.make_call("acme", "100", from_user="carol=example.org")
    assert (await call.wait_for(Ringing, 5)).status == 183
    assert (await call.wait_for(EarlyMedia, 5)).status == 183
    await call.play_tone(700, -10)
    report = await call.probe_audio(0.6)
    assert abs(report.freq_hz - 700) <= 20, report
    await call.hangup()  # CANCEL
    assert await call.wait_ended(10) == Ended(487, "Request Terminated", "local")
    assert await uas.done(10) == 0, uas.explain()


async def test_dtmf_falls_back_to_sip_info(tmp_path: Path, start_pool: StartPool):
    uas = Sipp(tmp_path, "uas_answer_no_te").start()
    pool = await start_pool(sip_config(trunk(domain=uas.address)))
    call = await pool.make_call("acme", "100", from_user="alice=example.org")
    await call.wait_for(Answered, 5)
    assert await call.send_dtmf("3") == "info"  # no telephone-event in the answer
    await call.hangup()
    assert await uas.done(10) == 0, uas.explain()
    assert "Signal=3" in uas.messages()


async def test_company_and_capacity_limits_for_outbound(tmp_path: Path, start_pool: StartPool):
    uas = Sipp(tmp_path, "uas_answer", rtp_echo=True, calls=2).start()
    pool = await start_pool(sip_config(trunk("acme", domain=uas.address, max_calls=1),
                                       trunk("bolt", domain=uas.address), calls_per_worker=2))
    first = await pool.make_call("acme", "100", from_user="alice=example.org")
    with pytest.raises(CompanyBusy):
        await pool.make_call("acme", "101", from_user="alice=example.org")
    second = await pool.make_call("bolt", "100", from_user="alice=example.org")
    with pytest.raises(CapacityExceeded):
        await pool.make_call("bolt", "101", from_user="alice=example.org")
    with pytest.raises(InvalidTarget):
        await pool.make_call("bolt", "bad target", from_user="alice=example.org")
    with pytest.raises(UnknownCompany):
        await pool.make_call("nope", "100", from_user="alice=example.org")
    await second.wait_for(Answered, 5)
    await second.hangup()
    await second.wait_ended(5)
    with pytest.raises(PjsipFailure, match="INVITE to"):
        await pool.make_call("bolt", "sip:no host@", from_user="alice=example.org")
    assert pool.workers()[0].alive and pool.workers()[0].calls == 1
    await first.wait_for(Answered, 5)
    await first.hangup()
    assert await uas.done(10) == 0, uas.explain()
