"""Transports and media settings: TLS with verification (bridge to bridge), the public
address in Via/Contact/SDP, RTP port range, codec priority, the conference clock rate."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from bridge.sip.config import LinkConfig, TlsServer
from bridge.sip.events import Answered, Ended
from bridge.sip.handles import CallHandle
from tests.sip.conftest import StartPool, sip_config, trunk, worker_address
from tests.sip.sippctl import Sipp


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


async def test_tls_call_verified_by_ca_file_and_refused_without(tmp_path: Path,
                                                                start_pool: StartPool):
    cert, key = self_signed(tmp_path)
    answered: asyncio.Queue[CallHandle] = asyncio.Queue()

    async def on_call(handle: CallHandle) -> None:
        await handle.answer()
        await answered.put(handle)

    # a link's PBX must use the link's transport both ways (accounts are locked to it)
    callee = await start_pool(
        sip_config(trunk(transport="tls"), transports=("udp", "tls"),
                   tls_server=TlsServer(cert_file=str(cert), key_file=str(key))),
        on_incoming_call=on_call)
    tls_at = worker_address(callee, transport="tls")

    def link(company: str, **kwargs: object) -> LinkConfig:
        return LinkConfig(company=company, mode="trunk", domain=tls_at, transport="tls",
                          allowed_sources=("127.0.0.1",), **kwargs)  # type: ignore[arg-type]

    caller = await start_pool(sip_config(
        link("good", ca_file=str(cert)), link("noca"), link("noverify", tls_verify=False),
        transports=("udp", "tls")))

    call = await caller.make_call("good", "100", from_user="alice=example.org")
    await call.wait_for(Answered, 10)
    remote = await asyncio.wait_for(answered.get(), 5)
    await call.play_tone(900, -12)
    report = await remote.probe_audio(0.6)
    assert abs(report.freq_hz - 900) <= 20, report
    await call.hangup()
    assert isinstance(await call.wait_ended(5), Ended)
    assert await remote.wait_ended(5) == Ended(200, "Normal call clearing", "remote")

    refused = await caller.make_call("noca", "100", from_user="alice=example.org")
    end = await refused.wait_ended(15)
    assert isinstance(end, Ended) and end.status >= 400 and end.by == "remote", end
    assert answered.empty()

    unverified = await caller.make_call("noverify", "100", from_user="alice=example.org")
    await unverified.wait_for(Answered, 10)
    await unverified.hangup()
    assert isinstance(await unverified.wait_ended(5), Ended)
    remote = await asyncio.wait_for(answered.get(), 5)
    end = await remote.wait_ended(5)
    assert isinstance(end, Ended) and end.by == "remote", end


async def test_public_address_rtp_range_and_codec_order(tmp_path: Path, start_pool: StartPool):
    uas = Sipp(tmp_path, "uas_reject", template={"STATUS": "486", "REASON": "Busy Here"})
    uas.start()
    cfg = sip_config(trunk(domain=uas.address), codecs=("G722", "PCMA"))
    cfg = type(cfg)(**{**cfg.__dict__, "public_address": "127.0.0.2"})
    pool = await start_pool(cfg)
    call = await pool.make_call("acme", "100", from_user="alice=example.org")
    assert isinstance(await call.wait_ended(10), Ended)
    assert await uas.done(10) == 0, uas.explain()
    invite = uas.messages().split("INVITE sip:", 1)[1]
    port = int(worker_address(pool).rsplit(":", 1)[1])
    assert f"Via: SIP/2.0/UDP 127.0.0.2:{port}" in invite
    assert re.search(rf"Contact: <sip:[^>]*@127\.0\.0\.2:{port}", invite), invite
    assert "c=IN IP4 127.0.0.2" in invite
    m = re.search(r"m=audio (\d+) RTP/AVP ([\d ]+)", invite)
    assert m is not None
    first, last = cfg.rtp_ports
    assert first <= int(m.group(1)) <= last
    assert m.group(2).split()[:2] == ["9", "8"]  # G722 then PCMA; PCMU left out
    assert " 0 " not in f" {m.group(2)} "


@pytest.mark.parametrize("clock_rate", [16000])
async def test_other_clock_rate(tmp_path: Path, start_pool: StartPool, clock_rate: int):
    uas = Sipp(tmp_path, "uas_answer", rtp_echo=True).start()
    pool = await start_pool(sip_config(trunk(domain=uas.address), clock_rate=clock_rate))
    call = await pool.make_call("acme", "100", from_user="alice=example.org")
    await call.wait_for(Answered, 10)
    await call.play_tone(1000, -12)
    report = await call.probe_audio(0.6)
    assert abs(report.freq_hz - 1000) <= 20 and report.level_dbfs > -20, report
    await call.hangup()
    assert await uas.done(10) == 0, uas.explain()
