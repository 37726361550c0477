"""A registered link at Kamailio and a real phone (baresip extension 101) behind it:
calls both ways with audio checked by content, DTMF both ways, MESSAGE through the PBX."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.media import tone
from bridge.sip.config import LinkConfig
from bridge.sip.events import Answered, Dtmf, Ended, IncomingMessage
from bridge.sip.handles import CallHandle
from bridge.sip.pool import WorkerPool
from tests.peers.baresip import Baresip
from tests.peers.kamailio import Kamailio
from tests.sip.conftest import StartPool, eventually, sip_config
from tests.sip.sippctl import Sipp


@pytest.fixture
async def ext101(kamailio: Kamailio, tmp_path: Path) -> AsyncIterator[Baresip]:
    phone = Baresip(tmp_path, user="101", password="pw101", registrar=kamailio.address,
                    tone_hz=800)
    await asyncio.to_thread(phone.start)
    try:
        await asyncio.to_thread(phone.wait_registered, 10)
        yield phone
    finally:
        await asyncio.to_thread(phone.stop)


async def registered_pool(kamailio: Kamailio, start_pool: StartPool, **handlers: object
                          ) -> WorkerPool:
    link = LinkConfig(company="acme", mode="register", domain="127.0.0.1",
                      server_uri=kamailio.uri, username="matrix", password="secret")
    pool = await start_pool(sip_config(link), **handlers)
    await eventually(lambda: pool.link_states()["acme"].state == "registered", 10,
                     "registration")
    return pool


async def test_call_extension_audio_and_dtmf_both_ways(
    kamailio: Kamailio, ext101: Baresip, start_pool: StartPool
):
    pool = await registered_pool(kamailio, start_pool)
    mark = ext101.mark()
    call = await pool.make_call("acme", "101", from_user="alice=example.org",
                                from_display="Alice")
    await call.wait_for(Answered, 10)
    up = await asyncio.to_thread(ext101.wait_call, "CALL_ESTABLISHED", 5, mark)
    assert "alice=example.org" in str(up), up

    heard = await call.probe_audio(1.0)  # the phone plays 800 Hz
    assert abs(heard.freq_hz - 800) <= 20 and heard.level_dbfs > -30, heard

    assert await call.send_dtmf("42", "rfc4733") == "rfc4733"
    await eventually(lambda: ext101.received_dtmf(mark) == "42", 5, "DTMF at the phone")
    await asyncio.to_thread(ext101.send_dtmf, "7")
    dtmf = await call.wait_for(Dtmf, 5)
    assert (dtmf.digit, dtmf.method) == ("7", "rfc4733")

    await call.play_tone(1000, -12)
    await asyncio.sleep(1.5)
    await call.hangup()
    assert isinstance(await call.wait_ended(5), Ended)
    await asyncio.to_thread(ext101.wait_event, "CALL_CLOSED", 5, mark)
    pcm, rate = await asyncio.to_thread(ext101.recording)
    last_second = pcm[-rate * 2:]
    report = tone.analyse(last_second, rate)
    assert abs(report.freq_hz - 1000) <= 20 and report.level_dbfs > -30, report


async def test_extension_calls_the_bridge(kamailio: Kamailio, ext101: Baresip,
                                          start_pool: StartPool):
    answered: asyncio.Queue[CallHandle] = asyncio.Queue()

    async def on_call(handle: CallHandle) -> None:
        await handle.answer()
        await answered.put(handle)

    await registered_pool(kamailio, start_pool, on_incoming_call=on_call)
    mark = ext101.mark()
    await asyncio.to_thread(ext101.dial, "matrix")
    call = await asyncio.wait_for(answered.get(), 10)
    assert call.info is not None
    assert (call.info.company, call.info.caller_user) == ("acme", "101")
    await call.wait_for(Answered, 5)
    heard = await call.probe_audio(0.6)
    assert abs(heard.freq_hz - 800) <= 20, heard
    await asyncio.to_thread(ext101.hangup)
    end = await call.wait_ended(5)
    assert isinstance(end, Ended) and end.by == "remote"
    await asyncio.to_thread(ext101.wait_event, "CALL_CLOSED", 5, mark)


async def test_extension_cancels_while_ringing(kamailio: Kamailio, ext101: Baresip,
                                               start_pool: StartPool):
    ringing: asyncio.Queue[CallHandle] = asyncio.Queue()

    async def on_call(handle: CallHandle) -> None:
        await handle.ringing()  # 180, and never an answer
        await ringing.put(handle)

    await registered_pool(kamailio, start_pool, on_incoming_call=on_call)
    mark = ext101.mark()
    await asyncio.to_thread(ext101.dial, "matrix")
    call = await asyncio.wait_for(ringing.get(), 10)
    await asyncio.to_thread(ext101.wait_event, "CALL_RINGING", 5, mark)
    await asyncio.to_thread(ext101.hangup)  # CANCEL
    end = await call.wait_ended(5)
    assert isinstance(end, Ended) and end.by == "remote" and end.status == 487, end


async def test_messages_through_the_registrar(kamailio: Kamailio, tmp_path: Path,
                                              start_pool: StartPool):
    got: asyncio.Queue[IncomingMessage] = asyncio.Queue()
    pool = await registered_pool(kamailio, start_pool, on_message=got.put)
    sender = Sipp(tmp_path, "uac_message", remote=kamailio.address, service="matrix",
                  keys={"caller": "555", "caller_name": "Front Desk", "text": "call me"},
                  template={"STATUS": "200"}).start()
    msg = await asyncio.wait_for(got.get(), 10)
    assert (msg.company, msg.from_user, msg.text.strip()) == ("acme", "555", "call me")
    assert await sender.done(10) == 0, sender.explain()
    result = await pool.send_message("acme", "999", "anyone?", from_user="alice=example.org")
    assert (result.status, result.delivered) == (404, False)
