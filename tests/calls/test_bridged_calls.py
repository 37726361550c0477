"""Matrix calls ⇄ PBX calls with real audio, end to end: the Element-like test client
(its own aiortc) → Synapse → the bridge → its pjsua2 worker → Kamailio (acme's PBX) →
baresip registered as extension 101, and back. Audio is checked by its content."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.media import tone
from tests.conftest import NewUser, Stack, fixed_user
from tests.harness.call_client import CallClient, CallOptions, CallState
from tests.harness.dm_calls import connected_call, dm_with, notice_in
from tests.harness.matrix_user import MatrixUser
from tests.peers.baresip import Baresip
from tests.peers.sipp import Sipp

HS = "bridge.test"
ALICE = f"@sip_acme_101:{HS}"


@pytest.fixture
def alice(stack: Stack, tmp_path: Path) -> Iterator[Baresip]:
    """Extension 101 of acme: baresip, auto-answer, plays 800 Hz, records what it hears."""
    ua = Baresip(tmp_path / "alice", user="101", password="pw101",
                 registrar=stack.kamailio.address, tone_hz=800.0).start()
    try:
        ua.wait_registered(10)
        yield ua
    finally:
        ua.stop()


@pytest.fixture
async def caller(new_user: NewUser) -> AsyncIterator[MatrixUser]:
    yield await new_user("caller")


def assert_tone(pcm: bytes, rate: int, freq: float) -> None:
    report = tone.analyse(pcm, rate)
    assert abs(report.freq_hz - freq) <= 20, report
    assert report.level_dbfs > -30, report


async def test_matrix_calls_extension_audio_both_ways(stack: Stack, alice: Baresip,
                                                      caller: MatrixUser) -> None:
    room = await dm_with(caller, ALICE)
    client = CallClient(caller.transport(room), CallOptions(end_of_candidates=False))
    try:
        client.play_tone(1000)
        await client.place_call()
        await client.wait_for_state(CallState.CONNECTED, timeout=30)
        alice.wait_call("CALL_ESTABLISHED", 10)
        answer = next(e for e in client.received if e["type"] == "m.call.answer")["content"]
        assert answer["version"] == "1" and answer["capabilities"]["m.call.dtmf"] is True
        await asyncio.sleep(1.0)
        heard = await client.record(1.5)
        assert_tone(heard, 8000, 800)  # baresip's tone reached the Matrix side
        await client.hangup()
        await asyncio.to_thread(alice.wait_call, "CALL_CLOSED", 10)
        pcm, rate = alice.recording("dec")
        assert_tone(pcm[-rate * 2:], rate, 1000)  # the Matrix side's tone reached baresip
    finally:
        await client.close()
    notice = await caller.wait_for(lambda e: e["room_id"] == room and "Call ended" in
                                   e.get("content", {}).get("body", ""), timeout=15)
    assert notice["sender"] == ALICE


# --------------------------------------------------------------------------- endings
async def call_and_wait_end(caller: MatrixUser, ghost: str,
                            options: CallOptions | None = None) -> tuple[CallClient, str]:
    room = await dm_with(caller, ghost)
    client = CallClient(caller.transport(room), options or CallOptions())
    await client.place_call()
    await client.wait_for_state(CallState.ENDED, timeout=40)
    return client, room


async def test_extension_hangs_up(stack: Stack, alice: Baresip, caller: MatrixUser) -> None:
    async with connected_call(caller, ALICE) as (client, room):
        await asyncio.to_thread(alice.wait_call, "CALL_ESTABLISHED", 10)
        alice.hangup()
        await client.wait_for_state(CallState.ENDED, timeout=15)
        assert client.hangup_reason == "user_hangup"
        await notice_in(caller, room, "Call ended")


async def test_busy(stack: Stack, caller: MatrixUser, tmp_path: Path) -> None:
    pbx = Sipp.uas_reject(tmp_path, code=486, local_port=stack.trunk_pbx_port).start()
    try:
        client, room = await call_and_wait_end(caller, f"@sip_trunkco_201:{HS}")
        await client.close()
        assert client.hangup_reason == "user_busy"
        await notice_in(caller, room, "Sam Sipp (Trunk Co 201) is busy.")
        await asyncio.to_thread(pbx.wait_ok, 10)
    finally:
        pbx.stop()


async def test_unknown_extension(stack: Stack, caller: MatrixUser) -> None:
    client, room = await call_and_wait_end(caller, f"@sip_acme_109:{HS}")
    await client.close()
    assert client.hangup_reason == "unknown_error"
    await notice_in(caller, room, "Acme Corp 109 does not exist.")


async def test_no_answer_cancels_the_sip_side(stack: Stack, caller: MatrixUser,
                                              tmp_path: Path) -> None:
    pbx = Sipp.uas_ring(tmp_path, local_port=stack.trunk_pbx_port).start()
    try:
        client, room = await call_and_wait_end(caller, f"@sip_trunkco_201:{HS}",
                                               CallOptions(lifetime_ms=4000))
        await client.close()
        assert client.hangup_reason == "invite_timeout"
        await notice_in(caller, room, "did not answer")
        await asyncio.to_thread(pbx.wait_ok, 10)  # the scenario passes only after a CANCEL
        assert "CANCEL" in [m.method for m in pbx.received()]
    finally:
        pbx.stop()


async def test_pbx_unreachable(stack: Stack, caller: MatrixUser) -> None:
    """Nothing listens on trunkco's PBX port: the SIP side times out or is refused."""
    client, room = await call_and_wait_end(caller, f"@sip_trunkco_201:{HS}")
    await client.close()
    assert client.hangup_reason in ("unknown_error", "invite_timeout")
    await notice_in(caller, room, ".", timeout=5)


# --------------------------------------------------------------------------- PBX → Matrix
@pytest.fixture
async def receiver(stack: Stack) -> AsyncIterator[MatrixUser]:
    """@receiver:bridge.test, whom acme's number 2001 rings (companies.acme.numbers)."""
    user = await fixed_user(stack, "receiver")
    stack.kamailio.set_route("2001", "@matrix")
    try:
        yield user
    finally:
        await user.close()


async def wait_call_invite(user: MatrixUser, since: int) -> tuple[str, dict]:
    """Accept the ghost's DM invite if one comes, then wait for its m.call.invite."""
    deadline = asyncio.get_running_loop().time() + 20
    joined: set[str] = set()
    while asyncio.get_running_loop().time() < deadline:
        for room in list(user.invites):
            if room not in joined:
                joined.add(room)
                await user.join(room)
                user.invites.pop(room, None)
        for ev in user.events[since:]:
            if ev["type"] == "m.call.invite":
                return ev["room_id"], ev
        await asyncio.sleep(0.1)
    raise TimeoutError("no m.call.invite")


async def test_extension_calls_matrix_user(stack: Stack, alice: Baresip,
                                           receiver: MatrixUser) -> None:
    since = len(receiver.events)
    alice.dial("2001")
    room, invite = await wait_call_invite(receiver, since)
    assert invite["sender"] == ALICE and invite["content"]["version"] == "1"
    client = CallClient(receiver.transport(room, since=receiver.events.index(invite)))
    try:
        client.play_tone(1000)
        await client.wait_for_invite(10)
        await client.answer()
        await client.wait_for_state(CallState.CONNECTED, timeout=20)
        await asyncio.to_thread(alice.wait_call, "CALL_ESTABLISHED", 10)
        # The bridge sends select_answer before it answers the SIP side, but the client
        # reads it from its sync, which can come after ICE and the SIP answer.
        await client.wait_for_event("m.call.select_answer", timeout=10)
        await asyncio.sleep(1.0)
        assert_tone(await client.record(1.5), 8000, 800)
        alice.hangup()
        await client.wait_for_state(CallState.ENDED, timeout=15)
        pcm, rate = alice.recording("dec")
        assert_tone(pcm[-rate * 2:], rate, 1000)
    finally:
        await client.close()


async def test_missed_call(stack: Stack, alice: Baresip, receiver: MatrixUser) -> None:
    since = len(receiver.events)
    mark = alice.mark()
    alice.dial("2001")
    room, invite = await wait_call_invite(receiver, since)
    call_id = invite["content"]["call_id"]
    closed = await asyncio.to_thread(alice.wait_event, ("CALL_CLOSED",), 20, mark)
    assert "480" in str(closed.get("param", "")) or closed["type"] == "CALL_CLOSED"
    await notice_in(receiver, room, "Missed call from Alice Martin (Acme Corp 101)")
    hangup = await receiver.wait_for(lambda e: e["room_id"] == room
                                     and e["type"] == "m.call.hangup"
                                     and e["content"].get("call_id") == call_id, timeout=10)
    seen = [(e["type"], e["sender"], e["content"].get("reason")) for e in receiver.events
            if e["room_id"] == room and e["type"].startswith("m.call.")
            and e["content"].get("call_id") == call_id]
    assert hangup["content"]["reason"] == "invite_timeout", seen


# --------------------------------------------------------------------------- in the call
async def test_dtmf_hold_and_video(stack: Stack, alice: Baresip, caller: MatrixUser) -> None:
    async with connected_call(caller, ALICE, options=CallOptions(video=True)) as (client, room):
        mark = alice.mark()
        await asyncio.to_thread(alice.wait_call, "CALL_ESTABLISHED", 10)
        answer = next(e for e in client.received if e["type"] == "m.call.answer")["content"]
        assert "m=video 0 " in answer["answer"]["sdp"]  # video refused, audio works
        await asyncio.sleep(0.5)
        assert_tone(await client.record(1.0), 8000, 800)
        client.send_dtmf("5")
        await caller.send_text(room, "7")  # digits typed in the DM during a call
        for _ in range(100):
            if "5" in alice.received_dtmf(mark) and "7" in alice.received_dtmf(mark):
                break
            await asyncio.sleep(0.1)
        assert "5" in alice.received_dtmf(mark) and "7" in alice.received_dtmf(mark)
        await client.hold()
        await client.resume()
        await asyncio.sleep(0.5)
        assert_tone(await client.record(1.0), 8000, 800)
        assert client.state == CallState.CONNECTED
        await client.hangup()


async def test_worker_killed_mid_call(stack: Stack, alice: Baresip, caller: MatrixUser) -> None:
    import os
    import re
    import signal

    room = await dm_with(caller, ALICE)
    client = CallClient(caller.transport(room))
    try:
        await client.place_call()
        await client.wait_for_state(CallState.CONNECTED, timeout=30)
        pids = re.findall(r"worker 0 \(pid (\d+)\) ready", stack.bridge.log_text())
        os.kill(int(pids[-1]), signal.SIGKILL)
        await client.wait_for_state(CallState.ENDED, timeout=20)
        assert client.hangup_reason == "unknown_error"
        await notice_in(caller, room, "lost")
    finally:
        await client.close()
    # The pool replaced the worker: a new call works.
    for _ in range(100):
        if len(re.findall(r"worker 0 \(pid (\d+)\) ready", stack.bridge.log_text())) > len(pids):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # the new worker registers acme again
    async with connected_call(caller, room=room) as (client, _):
        await client.hangup()


async def test_company_room_dm_calls_the_main_line(stack: Stack, new_user: NewUser,
                                                   tmp_path: Path) -> None:
    """Found by name: join #sip_trunkco, take the DM that follows, call: the PBX's main
    line (200) rings and answers (sipp with RTP echo hears our tone and sends it back)."""
    user = await new_user()
    await user.join(f"#sip_trunkco:{HS}")
    dm = await user.wait_invite(timeout=20)
    await user.join(dm)
    pbx = Sipp.uas_echo(tmp_path, local_port=stack.trunk_pbx_port).start()
    client = CallClient(user.transport(dm))
    try:
        client.play_tone(1000)
        await client.place_call()
        await client.wait_for_state(CallState.CONNECTED, timeout=30)
        await asyncio.sleep(0.8)
        assert_tone(await client.record(1.0), 8000, 1000)  # echoed by the PBX
        await client.hangup()
        await asyncio.to_thread(pbx.wait_ok, 15)
        invite = pbx.received("INVITE")[0]
        assert invite.start_line.startswith("INVITE sip:200@"), invite.start_line
    finally:
        await client.close()
        pbx.stop()


async def test_permission_denials_get_a_notice(stack: Stack) -> None:
    """@lowly has the 'call' level: main lines and public extensions only. Private
    extensions and dial-out numbers are refused before anything reaches the PBX."""
    user = await fixed_user(stack, "lowly")
    try:
        for ghost in (f"@sip_acme_102:{HS}", f"@sip_acme_012345678:{HS}"):
            room = await dm_with(user, ghost)
            client = CallClient(user.transport(room))
            try:
                await client.place_call()
                await client.wait_for_state(CallState.ENDED, timeout=20)
            finally:
                await client.close()
            await notice_in(user, room, "You are not allowed to call this number")
        # A number no pattern allows is refused for everyone, 'user' level included.
    finally:
        await user.close()


async def test_transfer_by_refer_from_the_pbx(stack: Stack, caller: MatrixUser,
                                              tmp_path: Path) -> None:
    """The PBX answers, then transfers the call (REFER) to 102, a party that echoes: the
    Matrix user stays in the same Matrix call, hears the new party, and gets a notice."""
    from tests.sip.sippctl import Sipp as SippCtl

    target = SippCtl(tmp_path / "target", "uas_answer", rtp_echo=True).start()
    pbx = SippCtl(tmp_path / "pbx", "uas_refer", keys={"target": f"102@{target.address}"},
                  template={"TALK_MS": "2500", "FINAL": "200"},
                  port=stack.trunk_pbx_port).start()
    room = await dm_with(caller, f"@sip_trunkco_201:{HS}")
    client = CallClient(caller.transport(room))
    try:
        client.play_tone(1000)
        await client.place_call()
        await client.wait_for_state(CallState.CONNECTED, timeout=30)
        call_id = client.call_id
        notice = await notice_in(caller, room, "transferred to", timeout=20)
        assert "102@" in notice["content"]["body"]
        await asyncio.sleep(0.8)
        assert_tone(await client.record(1.0), 8000, 1000)  # echoed by the new party
        assert client.state == CallState.CONNECTED and client.call_id == call_id
        await client.hangup()
        assert await target.done(10) == 0, target.explain()
    finally:
        await client.close()
        target.stop()
        pbx.stop()


async def _bot_dm(user: MatrixUser) -> str:
    room = await user.create_dm(f"@sipbot:{HS}")
    await user.wait_for(lambda e: e["room_id"] == room and e.get("sender") == f"@sipbot:{HS}"
                        and e["type"] == "m.room.message", timeout=20)
    return room


async def _ask(user: MatrixUser, room: str, text: str, expect: str) -> str:
    since = len(user.events)
    await user.send_text(room, text)
    ev = await user.wait_for(lambda e: e["room_id"] == room and e.get("sender") != user.user_id
                             and e["type"] == "m.room.message"
                             and expect in e["content"].get("body", ""), timeout=20, start=since)
    return str(ev["content"]["body"])


async def test_status_commands_and_hangup_by_command(stack: Stack, alice: Baresip,
                                                     caller: MatrixUser) -> None:
    bot = await _bot_dm(caller)
    assert "level here is 'user'" in await _ask(caller, bot, "whoami", "You are")
    assert "Acme Corp (acme)" in await _ask(caller, bot, "companies", "companies:")
    room = await dm_with(caller, ALICE)
    client = CallClient(caller.transport(room))
    try:
        await client.place_call()
        await client.wait_for_state(CallState.CONNECTED, timeout=30)
        status = await _ask(caller, bot, "status", "Active calls")
        assert "Active calls: 1" in status and "Alice Martin" in status and "PBX links" not in status
        await caller.send_text(room, "!sip hangup")
        await client.wait_for_state(CallState.ENDED, timeout=15)
        assert client.hangup_reason == "user_hangup"
        await asyncio.to_thread(alice.wait_call, "CALL_CLOSED", 10)
    finally:
        await client.close()
    calls = await _ask(caller, bot, "calls", "call(s)")
    assert "acme 101: completed" in calls


async def test_admin_status_shows_links_and_workers(stack: Stack) -> None:
    boss = await fixed_user(stack, "boss")
    try:
        bot = await _bot_dm(boss)
        status = await _ask(boss, bot, "status", "Active calls")
        assert "acme: registered" in status and "trunkco: trunk" in status
        assert "worker 0 (pid" in status and "alive" in status
        assert "PBX link: registered" in await _ask(boss, bot, "companies", "companies:")
    finally:
        await boss.close()


async def test_early_media_is_heard_before_the_answer(stack: Stack, caller: MatrixUser,
                                                      tmp_path: Path) -> None:
    """The PBX answers 183 with SDP (an IVR greeting, here an echo) and never 200: the
    Matrix call connects at once (early_media_answer) and the caller hears the early media;
    hanging up cancels the SIP call."""
    from tests.sip.sippctl import Sipp as SippCtl

    pbx = SippCtl(tmp_path / "pbx", "uas_early", rtp_echo=True,
                  port=stack.trunk_pbx_port).start()
    room = await dm_with(caller, f"@sip_trunkco_201:{HS}")
    client = CallClient(caller.transport(room))
    try:
        client.play_tone(1000)
        await client.place_call()
        await client.wait_for_state(CallState.CONNECTED, timeout=30)
        await asyncio.sleep(0.8)
        assert_tone(await client.record(1.0), 8000, 1000)  # early media echoed
        await client.hangup()
        assert await pbx.done(10) == 0, pbx.explain()  # CANCEL, 200, 487, ACK
    finally:
        await client.close()
        pbx.stop()


async def test_glare_lower_call_id_wins(stack: Stack, alice: Baresip,
                                        receiver: MatrixUser) -> None:
    """Alice (101) calls @receiver while @receiver calls Alice in the same DM. The bridge's
    call IDs start with "sip", Element's with digits, so the Matrix user's call is the lower
    one and wins: the bridge ends its own invite and puts the user's call through."""
    since = len(receiver.events)
    alice.dial("2001")
    room, invite = await wait_call_invite(receiver, since)
    ours = CallClient(receiver.transport(room))
    try:
        call_id = await ours.place_call()
        assert call_id < invite["content"]["call_id"]
        hangup = await receiver.wait_for(
            lambda e: e["type"] == "m.call.hangup"
            and e["content"].get("call_id") == invite["content"]["call_id"], timeout=15)
        assert hangup["sender"] == ALICE
        await ours.wait_for_state(CallState.CONNECTED, timeout=30)  # Alice auto-answers
        await ours.hangup()
    finally:
        await ours.close()


async def test_admin_maps_a_number_at_run_time(stack: Stack, alice: Baresip,
                                               receiver: MatrixUser, caller: MatrixUser) -> None:
    bot = await _bot_dm(caller)
    assert "needs the 'admin' permission" in await _ask(
        caller, bot, f"map acme 2002 @receiver:{HS}", "admin")
    boss = await fixed_user(stack, "boss")
    try:
        bot = await _bot_dm(boss)
        assert "now rings" in await _ask(boss, bot, f"map acme 2002 @receiver:{HS}", "2002")
        assert "(set by @boss" in await _ask(boss, bot, "numbers", "Mapped numbers")
        stack.kamailio.set_route("2002", "@matrix")
        since = len(receiver.events)
        alice.dial("2002")  # no restart: the mapping is used at once
        room, invite = await wait_call_invite(receiver, since)
        assert invite["sender"] == ALICE
        await receiver.send(room, "m.call.reject", {"call_id": invite["content"]["call_id"],
                                                    "party_id": "R", "version": "1"})
        await asyncio.to_thread(alice.wait_call, "CALL_CLOSED", 10)
        assert "no longer rings" in await _ask(boss, bot, "unmap acme 2002", "2002")
    finally:
        await boss.close()


async def test_user_claims_a_personal_number(stack: Stack, new_user: NewUser) -> None:
    user = await new_user("claimer")
    other = await new_user("latecomer")
    bot = await _bot_dm(user)
    assert "is yours" in await _ask(user, bot, "claim acme 3001", "3001")
    assert "does not let users claim" in await _ask(user, bot, "claim acme 2999", "2999")
    bot2 = await _bot_dm(other)
    assert "is taken" in await _ask(other, bot2, "claim acme 3001", "3001")
    resolved = await stack_resolve(stack, "acme", "3001")
    assert resolved == user.user_id


async def stack_resolve(stack: Stack, company: str, number: str) -> str | None:
    """Which Matrix user the bridge's database maps a number to (read as the bridge does)."""
    import sqlite3

    db = stack.bridge.workdir / "bridge.db"
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT user_id FROM number_map WHERE company=? AND number=?",
                           (company, number)).fetchone()
    return row[0] if row else None
