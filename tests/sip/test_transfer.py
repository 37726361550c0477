"""Transfer from the PBX side: a REFER to the bridge (blind transfer) moves the call's audio
to the Refer-To target, on the same call handle; the old dialog ends with BYE."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from bridge.sip.events import Answered, Ended, Transferred
from tests.sip.conftest import StartPool, sip_config, trunk, worker_address
from tests.sip.sippctl import Sipp


async def test_blind_transfer_by_refer(tmp_path: Path, start_pool: StartPool):
    target = Sipp(tmp_path / "target", "uas_answer", rtp_echo=True).start()
    pbx = Sipp(tmp_path / "pbx", "uas_refer", keys={"target": f"102@{target.address}"},
               template={"TALK_MS": "1500", "FINAL": "200"}).start()
    pool = await start_pool(sip_config(trunk(domain=pbx.address)))
    call = await pool.make_call("acme", "100", from_user="alice=example.org")
    await call.wait_for(Answered, 5)
    old_sip = call.sip_call_id
    await call.play_tone(1000, -12)
    before = await call.probe_audio(0.3)  # the first party does not echo
    assert before.level_dbfs < -50, before

    moved = await call.wait_for(Transferred, 10)  # CallEndedError if Ended came first
    assert moved == Transferred(f"sip:102@{target.address}", "refer", call.sip_call_id)
    assert call.sip_call_id != old_sip and call.state == "answered"
    report = await call.probe_audio(0.5)  # the new party echoes our tone
    assert abs(report.freq_hz - 1000) <= 20, report
    assert report.level_dbfs > -20, report

    assert await pbx.done(10) == 0, pbx.explain()  # REFER 202, NOTIFYs, then our BYE
    trace = pbx.messages()
    assert re.search(r"NOTIFY .*?SIP/2\.0 200 OK", trace, re.S), trace
    assert not call.ended
    await call.hangup()
    end = await call.wait_ended(5)
    assert isinstance(end, Ended) and end.by == "local"
    assert await target.done(10) == 0, target.explain()


async def test_failed_blind_transfer_keeps_the_call(tmp_path: Path, start_pool: StartPool):
    target = Sipp(tmp_path / "target", "uas_ring_reject",
                  template={"STATUS": "486", "REASON": "Busy Here"}).start()
    pbx = Sipp(tmp_path / "pbx", "uas_refer", keys={"target": f"102@{target.address}"},
               template={"TALK_MS": "300", "FINAL": "486"}).start()
    pool = await start_pool(sip_config(trunk(domain=pbx.address)))
    call = await pool.make_call("acme", "100", from_user="alice=example.org")
    await call.wait_for(Answered, 5)
    old_sip = call.sip_call_id
    assert await target.done(10) == 0, target.explain()
    await asyncio.sleep(0.3)
    assert not call.ended and call.sip_call_id == old_sip
    await call.hangup()  # BYE on the first dialog, which went on
    after = [e async for e in call.events()]
    assert after == [Ended(200, "OK", "local")], after  # no Transferred, no early end
    assert await pbx.done(10) == 0, pbx.explain()
    assert re.search(r"NOTIFY .*?SIP/2\.0 486 Busy Here", pbx.messages(), re.S)


async def test_attended_transfer_by_invite_with_replaces(tmp_path: Path,
                                                         start_pool: StartPool):
    first = Sipp(tmp_path / "first", "uas_answer").start()  # no echo
    pool = await start_pool(sip_config(trunk(domain=first.address)))
    call = await pool.make_call("acme", "100", from_user="alice=example.org")
    await call.wait_for(Answered, 5)
    await call.play_tone(1000, -12)
    before = await call.probe_audio(0.3)
    assert before.level_dbfs < -50, before

    # Replaces names our dialog as we see it: to-tag is our tag, from-tag the first party's
    ours = re.search(r"^From:.*;tag=([^;\s]+)", first.messages(), re.M)
    theirs = re.search(r"^To:.*;tag=([^;\s]+)", first.messages(), re.M)
    assert ours and theirs, first.messages()
    replaces = f"{call.sip_call_id};to-tag={ours.group(1)};from-tag={theirs.group(1)}"
    second = Sipp(tmp_path / "second", "uac_replaces", remote=worker_address(pool),
                  service="alice=example.org", rtp_echo=True,
                  keys={"caller": "102", "caller_name": "Carol", "replaces": replaces}).start()

    moved = await call.wait_for(Transferred, 10)
    assert moved.kind == "replaces" and "102@" in moved.to and moved.to.startswith("Carol <")
    assert call.sip_call_id == moved.sip_call_id != replaces.split(";")[0]
    report = await call.probe_audio(0.5)  # the new party echoes our tone
    assert abs(report.freq_hz - 1000) <= 20, report
    assert await first.done(10) == 0, first.explain()  # the replaced dialog got BYE
    assert pool.workers()[0].calls == 1 and not call.ended
    await call.hangup()
    end = await call.wait_ended(5)
    assert isinstance(end, Ended) and end.by == "local"
    assert await second.done(10) == 0, second.explain()
