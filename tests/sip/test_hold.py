"""Hold and resume: ours (CallHandle.hold → re-INVITE a=sendonly / a=sendrecv, checked in
sipp's message trace) and the PBX's (its re-INVITE with a=sendonly or a=inactive keeps the call
up, and what reaches the Matrix side meanwhile is silence, not stale audio)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from bridge.sip.errors import SipError
from bridge.sip.events import Answered, AudioReport, Ended, Held
from bridge.sip.handles import CallHandle
from tests.sip.conftest import StartPool, sip_config, trunk, worker_address
from tests.sip.sippctl import Sipp


def sip_messages(trace: str, method: str) -> list[str]:
    """The requests of one method in a sipp -trace_msg log, in order, without
    retransmissions (one per CSeq)."""
    out: dict[str, str] = {}
    for chunk in re.split(r"\n-{20,}[^\n]*\n", trace):
        lines = [ln for ln in chunk.splitlines() if ln.strip()]
        for i, line in enumerate(lines):
            if line.startswith(f"{method} ") and line.endswith("SIP/2.0"):
                text = "\n".join(lines[i:])
                cseq = re.search(r"^CSeq:\s*(\d+)", text, re.M | re.I)
                out.setdefault(cseq.group(1) if cseq else text, text)
                break
    return list(out.values())


async def test_hold_and_resume_from_our_side(tmp_path: Path, start_pool: StartPool):
    uas = Sipp(tmp_path, "uas_hold", rtp_echo=True).start()
    pool = await start_pool(sip_config(trunk(domain=uas.address)))
    call = await pool.make_call("acme", "100", from_user="alice=example.org")
    await call.wait_for(Answered, 5)
    await call.play_tone(1000, -12)
    report = await call.probe_audio(0.4)
    assert abs(report.freq_hz - 1000) <= 20, report

    await call.hold(True)
    assert await call.wait_for(Held, 5) == Held("local", True)
    await call.hold(True)  # already held: nothing sent
    await call.hold(False)
    assert await call.wait_for(Held, 5) == Held("local", False)
    report = await call.probe_audio(0.4)  # the echo is back
    assert abs(report.freq_hz - 1000) <= 20, report

    await call.hangup()
    end = await call.wait_ended(5)
    assert isinstance(end, Ended) and end.by == "local"
    assert await uas.done(10) == 0, uas.explain()
    invites = sip_messages(uas.messages(), "INVITE")
    assert len(invites) == 3, uas.messages()
    assert "a=sendonly" in invites[1] and "a=sendrecv" not in invites[1]
    assert "a=sendrecv" in invites[2]


async def _probe_or_silence(call: CallHandle, seconds: float) -> AudioReport | None:
    """The probe's report, or None when no frame at all came (also silence for Matrix)."""
    try:
        return await call.probe_audio(seconds)
    except SipError:
        return None


@pytest.mark.parametrize(("hold_dir", "answer_dir"), [("sendonly", "recvonly"),
                                                      ("inactive", "inactive")])
async def test_hold_from_the_pbx_keeps_the_call(tmp_path: Path, start_pool: StartPool,
                                                 hold_dir: str, answer_dir: str):
    answered: asyncio.Queue[CallHandle] = asyncio.Queue()

    async def on_call(handle: CallHandle) -> None:
        await handle.answer()
        await answered.put(handle)

    pool = await start_pool(sip_config(trunk()), on_incoming_call=on_call)
    caller = Sipp(tmp_path, "uac_hold", remote=worker_address(pool), service="alice=example.org",
                  keys={"caller": "555", "caller_name": "Bob"}, rtp_echo=True,
                  template={"TALK_MS": "1500", "HOLD_MS": "2000", "HOLD_DIR": hold_dir,
                            "ANSWER_DIR": answer_dir}).start()
    call = await asyncio.wait_for(answered.get(), 10)
    await call.wait_for(Answered, 5)
    await call.play_tone(1000, -12)
    report = await call.probe_audio(0.4)
    assert abs(report.freq_hz - 1000) <= 20, report

    assert await call.wait_for(Held, 5) == Held("remote", True)
    await asyncio.sleep(0.2)
    during = await _probe_or_silence(call, 0.5)
    print("during hold", during)
    assert during is None or during.level_dbfs < -50, during

    assert await call.wait_for(Held, 5) == Held("remote", False)
    report = await call.probe_audio(0.4)
    assert abs(report.freq_hz - 1000) <= 20, report
    end = await call.wait_ended(10)
    assert isinstance(end, Ended) and end.by == "remote", end
    assert await caller.done(10) == 0, caller.explain()
