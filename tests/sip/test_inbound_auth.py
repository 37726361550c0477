"""A trunk company with ``inbound_auth``: its PBX (sipp, or hand-made requests) must answer the
bridge's digest challenge before an INVITE or MESSAGE gets through.

- no credentials: 401 with a ``WWW-Authenticate`` challenge, nothing reported;
- a wrong password: 403, nothing reported;
- the right password (sipp's ``[authentication]``, qop=auth; hand-made without qop): the call
  is reported to ``on_incoming_call`` and answered, the MESSAGE to ``on_message``;
- the answer to an unauthenticated request is the same whatever user it is for;
- a stale nonce with the right response: 401 ``stale=true``;
- the password never reaches the logs (workers at DEBUG, pjsip logging every message);
- without the source filter (the fallback in pjsua2's callbacks), an INVITE is still
  challenged (401 through the call's answer) and a MESSAGE without credentials, which pjsua
  has answered 200 already, is dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.sip.config import InboundAuth
from bridge.sip.digest import NonceKey, parse_digest
from bridge.sip.events import Answered, IncomingMessage
from bridge.sip.handles import CallHandle
from bridge.sip.pool import WorkerPool
from tests.security.hostile import UdpPeer, request
from tests.sip.conftest import StartPool, sip_config, trunk, worker_address
from tests.sip.sippctl import Sipp

USER, PASSWORD, REALM = "acmepbx", "Inb0und-s3cret", "bridge.acme.example"
SECRET = "f" * 64  # the pool's nonce key, known here to make stale nonces
CALLER = {"caller": "555", "caller_name": "Bob Caller"}

ANSWERED = """  <recv response="200" rtd="true" rrs="true"/>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "[caller_name]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 ACK
Contact: <sip:[caller]@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <pause milliseconds="500"/>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "[caller_name]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 3 BYE
Contact: <sip:[caller]@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>"""

REFUSED = """  <recv response="@@STATUS@@"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-1]
From: "[caller_name]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>"""


def auth_trunk(**kwargs: Any) -> Any:
    return trunk(inbound_auth=InboundAuth(USER, PASSWORD, REALM), **kwargs)


def config(**kwargs: Any) -> Any:
    return sip_config(auth_trunk(), nonce_secret=SECRET, log_level="DEBUG", pj_log_level=5,
                      **kwargs)


def call_with_auth(tmp_path: Path, pool: WorkerPool, password: str, status: int = 200) -> Sipp:
    steps = ANSWERED if status == 200 else REFUSED.replace("@@STATUS@@", str(status))
    return Sipp(tmp_path, "uac_call_auth", remote=worker_address(pool),
                service="alice=example.org", keys=CALLER,
                template={"AUTH_USER": USER, "AUTH_PASS": password, "FINAL_STEPS": steps})


def message_with_auth(tmp_path: Path, pool: WorkerPool, password: str, status: int) -> Sipp:
    return Sipp(tmp_path, "uac_message_auth", remote=worker_address(pool),
                service="alice=example.org", keys={**CALLER, "text": "hello"},
                template={"AUTH_USER": USER, "AUTH_PASS": password, "STATUS": str(status)})


def challenges(sipp: Sipp) -> list[dict[str, str]]:
    """The WWW-Authenticate challenges sipp received."""
    out = []
    for line in sipp.messages().splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "www-authenticate":
            parsed = parse_digest(value.strip())
            assert parsed is not None, line
            out.append(parsed)
    return out


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def authorization(method: str, uri: str, nonce: str, password: str = PASSWORD) -> str:
    """Credentials without qop (RFC 2069 style), computed here."""
    resp = md5(f"{md5(f'{USER}:{REALM}:{password}')}:{nonce}:{md5(f'{method}:{uri}')}")
    return (f'Authorization: Digest username="{USER}", realm="{REALM}", nonce="{nonce}", '
            f'uri="{uri}", response="{resp}", algorithm=MD5')


def no_password_logged(caplog: pytest.LogCaptureFixture) -> None:
    leaked = [r.getMessage() for r in caplog.records if PASSWORD in r.getMessage()]
    assert not leaked, leaked[:3]
    assert any("Authorization: Digest" in r.getMessage() for r in caplog.records), \
        "pjsip's message log was not captured: the check above proves nothing"


async def test_invite_needs_valid_credentials(tmp_path: Path, start_pool: StartPool,
                                              caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    calls: asyncio.Queue[CallHandle] = asyncio.Queue()

    async def on_call(handle: CallHandle) -> None:
        await handle.answer()
        await calls.put(handle)

    pool = await start_pool(config(), on_incoming_call=on_call)

    # no credentials: 401 with a challenge, no call
    bare = Sipp(tmp_path / "bare", "uac_rejected", remote=worker_address(pool),
                service="alice=example.org", keys=CALLER, template={"STATUS": "401"}).start()
    assert await bare.done(10) == 0, bare.explain()
    [c] = challenges(bare)
    assert c["realm"] == REALM and c["qop"] == "auth" and c["algorithm"] == "MD5"
    assert NonceKey(SECRET).check(c["nonce"]) == "fresh"

    # wrong password: 403 after the challenge, no call
    wrong = call_with_auth(tmp_path / "wrong", pool, "not-the-password", 403).start()
    assert await wrong.done(10) == 0, wrong.explain()
    assert "SIP/2.0 401" in wrong.messages() and "SIP/2.0 403 Forbidden" in wrong.messages()
    assert calls.empty()

    # the right password: reported, answered, hung up by the caller
    right = call_with_auth(tmp_path / "right", pool, PASSWORD).start()
    call = await asyncio.wait_for(calls.get(), 10)
    assert call.info is not None and call.info.company == "acme"
    assert call.info.caller_user == "555"
    assert await call.wait_for(Answered, 5)
    assert await right.done(15) == 0, right.explain()
    assert await call.wait_ended(10) is not None
    assert calls.empty()
    assert any("wrong credentials: 403" in r.getMessage() for r in caplog.records)
    no_password_logged(caplog)


async def test_message_needs_valid_credentials(tmp_path: Path, start_pool: StartPool,
                                               caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    got: asyncio.Queue[IncomingMessage] = asyncio.Queue()
    pool = await start_pool(config(), on_message=got.put)

    bare = Sipp(tmp_path / "bare", "uac_message", remote=worker_address(pool),
                service="alice=example.org", keys={**CALLER, "text": "no creds"},
                template={"STATUS": "401"}).start()
    assert await bare.done(10) == 0, bare.explain()
    assert len(challenges(bare)) == 1
    wrong = message_with_auth(tmp_path / "wrong", pool, "nope", 403).start()
    assert await wrong.done(10) == 0, wrong.explain()
    await asyncio.sleep(0.3)
    assert got.empty()

    right = message_with_auth(tmp_path / "right", pool, PASSWORD, 200).start()
    assert await right.done(10) == 0, right.explain()
    msg = await asyncio.wait_for(got.get(), 5)
    assert (msg.company, msg.from_user, msg.text.strip()) == ("acme", "555", "hello")
    await asyncio.sleep(0.3)
    assert got.empty()
    no_password_logged(caplog)


async def test_same_answer_for_every_user_and_stale_nonces(start_pool: StartPool):
    got: asyncio.Queue[IncomingMessage] = asyncio.Queue()
    pool = await start_pool(config(), on_message=got.put)
    port = int(worker_address(pool).rsplit(":", 1)[1])
    key = NonceKey(SECRET)

    def probe() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with UdpPeer("127.0.0.1") as peer:  # the trunk's PBX address: admitted
            def ask(method: str, user: str, *extra: str) -> tuple[int | None, list[str]]:
                n = len(peer.received)
                uri = f"sip:{user}@127.0.0.1:{port}"
                status = peer.ask(request(
                    method, uri, sport=peer.port, extra=extra,
                    content_type="text/plain" if method == "MESSAGE" else None,
                    body="hi" if method == "MESSAGE" else ""), port)
                head = peer.received[-1].split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
                assert len(peer.received) > n
                return status, head

            for method in ("INVITE", "MESSAGE"):
                for user in ("100", "101", "alice=example.org", "nobody", "admin"):
                    status, head = ask(method, user)
                    names = tuple(sorted(h.split(":", 1)[0].lower() for h in head[1:]))
                    challenge = next(h for h in head if h.lower().startswith("www-auth"))
                    parsed = parse_digest(challenge.split(":", 1)[1]) or {}
                    out[f"{method} {user}"] = (status, names, parsed.get("realm"),
                                               "stale" in parsed)
                    uri = f"sip:{user}@127.0.0.1:{port}"
                    wrong = authorization(method, uri, parsed["nonce"], password="guess")
                    out[f"{method} {user} wrong"] = ask(method, user, wrong)[0]
            out["OPTIONS"] = ask("OPTIONS", "100")[0]  # keepalives are not challenged
            # a stale nonce with the right response: challenged again with stale=true
            uri = f"sip:alice=example.org@127.0.0.1:{port}"
            old = key.make(time.time() - 400)
            status, head = ask("MESSAGE", "alice=example.org",
                               authorization("MESSAGE", uri, old))
            out["stale"] = (status, [h for h in head if "stale=true" in h] != [])
            # the right response without qop, on a fresh nonce: delivered
            out["no-qop"] = ask("MESSAGE", "alice=example.org",
                                authorization("MESSAGE", uri, key.make()))[0]
        return out

    answers = await asyncio.to_thread(probe)
    print("INBOUND_AUTH_ANSWERS", answers)
    first = [v for k, v in answers.items() if k.count(" ") == 1]
    assert len(set(first)) == 1, answers
    status, names, realm, stale = first[0]
    assert (status, realm, stale) == (401, REALM, False)
    assert "www-authenticate" in names and "server" not in names
    assert {v for k, v in answers.items() if k.endswith(" wrong")} == {403}
    assert answers["OPTIONS"] == 200
    assert answers["stale"] == (401, True)
    assert answers["no-qop"] == 200
    msg = await asyncio.wait_for(got.get(), 5)
    assert msg.text == "hi"
    await asyncio.sleep(0.3)
    assert got.empty()  # only the authenticated MESSAGE got through


async def test_fallback_without_source_filter(tmp_path: Path, start_pool: StartPool):
    calls: asyncio.Queue[CallHandle] = asyncio.Queue()
    got: asyncio.Queue[IncomingMessage] = asyncio.Queue()

    async def on_call(handle: CallHandle) -> None:
        await handle.answer()
        await calls.put(handle)

    pool = await start_pool(config(source_filter=False), on_incoming_call=on_call,
                            on_message=got.put)
    assert pool.workers()[0].alive

    # INVITE: challenged through pjsua's answer (401 + WWW-Authenticate), then accepted
    right = call_with_auth(tmp_path / "right", pool, PASSWORD).start()
    call = await asyncio.wait_for(calls.get(), 10)
    assert await call.wait_for(Answered, 5)
    assert await right.done(15) == 0, right.explain()
    [c] = challenges(right)
    assert c["realm"] == REALM
    wrong = call_with_auth(tmp_path / "wrong", pool, "guess", 403).start()
    assert await wrong.done(10) == 0, wrong.explain()
    assert calls.empty()

    # MESSAGE: pjsua has answered 200 before we see it; without credentials it is dropped
    bare = Sipp(tmp_path / "bare", "uac_message", remote=worker_address(pool),
                service="alice=example.org", keys={**CALLER, "text": "no creds"},
                template={"STATUS": "200"}).start()
    assert await bare.done(10) == 0, bare.explain()
    port = int(worker_address(pool).rsplit(":", 1)[1])

    def send_authenticated() -> int | None:
        uri = f"sip:alice=example.org@127.0.0.1:{port}"
        with UdpPeer("127.0.0.1") as peer:
            return peer.ask(request(
                "MESSAGE", uri, sport=peer.port, content_type="text/plain", body="with creds",
                extra=[authorization("MESSAGE", uri, NonceKey(SECRET).make())]), port)

    assert await asyncio.to_thread(send_authenticated) == 200
    msg = await asyncio.wait_for(got.get(), 5)
    assert msg.text == "with creds"
    await asyncio.sleep(0.3)
    assert got.empty()
