"""With ``public_address`` set, what we send names that address and no other of ours.

tests/sip/test_transports.py::test_public_address_rtp_range_and_codec_order checks Via,
Contact and c= with 127.0.0.2. Here the address is a documentation one (192.0.2.10, where
nothing is ever sent: the PBX's sipp answers 486 to the packet's source, and a rejected call
has no media), and the check is the other way round: every IPv4 address written anywhere in
the INVITE and ACK the PBX received is either the public address or the PBX's own
(127.0.0.1), so no address of this machine (LAN, container, private range) leaks out.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from bridge.sip.events import Ended
from tests.peers.sipp import parse_message_trace
from tests.security.hostile import INSIDER
from tests.sip.conftest import StartPool, sip_config, trunk, worker_address
from tests.sip.sippctl import Sipp

PUBLIC = "192.0.2.10"
IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")


async def test_outbound_invite_names_only_the_public_address(tmp_path: Path,
                                                             start_pool: StartPool):
    pbx = Sipp(tmp_path, "uas_reject", template={"STATUS": "486", "REASON": "Busy Here"})
    pbx.start()
    cfg = sip_config(trunk(domain=pbx.address, allowed_sources=(INSIDER,)))
    pool = await start_pool(dataclasses.replace(cfg, public_address=PUBLIC))
    port = int(worker_address(pool).rsplit(":", 1)[1])
    call = await pool.make_call("acme", "100", from_user="alice=example.org")
    assert isinstance(await call.wait_ended(10), Ended)
    assert await pbx.done(10) == 0, pbx.explain()

    received = [m for m in parse_message_trace(pbx.messages()) if m.direction == "received"]
    assert [m.method for m in received] == ["INVITE", "ACK"], pbx.explain()
    invite = received[0]
    assert (invite.header("via") or "").startswith(f"SIP/2.0/UDP {PUBLIC}:{port}"), invite
    assert f"@{PUBLIC}:{port}" in (invite.header("contact") or ""), invite
    assert f"c=IN IP4 {PUBLIC}" in invite.body, invite.body
    assert re.search(rf"^o=.* IN IP4 {re.escape(PUBLIC)}\s*$", invite.body, re.M), invite.body
    for msg in received:
        text = msg.start_line + "\n" + "\n".join(f"{n}: {v}" for n, v in msg.fields) \
            + "\n" + msg.body
        assert set(IPV4.findall(text)) <= {PUBLIC, "127.0.0.1"}, text
    print("PUBLIC_ADDRESS", {"via": invite.header("via"), "contact": invite.header("contact"),
                             "c": re.findall(r"^c=.*$", invite.body, re.M)})
