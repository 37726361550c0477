"""The C functions read from the pjsua2 wheel through ctypes (bridge/sip/pjlib.py), on a
real pjsua endpoint in a child process (pjsua is one per process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.peers.ports import free_port

SCRIPT = textwrap.dedent("""
    import json, sys, time
    import pjsua2 as pj
    from bridge.sip.pjlib import pjsua_call_count, pjsua_call_dumps
    from tests.harness import bare_pjsua

    ep = bare_pjsua.init()
    tcfg = pj.TransportConfig()
    tcfg.boundAddress = "127.0.0.1"
    tcfg.port = 0
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    before = pjsua_call_count()
    acc = pj.Account()
    acfg = pj.AccountConfig()
    acfg.idUri = "sip:probe@127.0.0.1"
    acc.create(acfg)
    call = pj.Call(acc)
    prm = pj.CallOpParam(True)
    call.makeCall("sip:nobody@127.0.0.1:%(port)d", prm)  # nothing answers: it stays CALLING
    ep.libHandleEvents(50)
    out = {"before": before, "during": pjsua_call_count(), "id": call.getId(),
           "dumps": pjsua_call_dumps(), "skipped": pjsua_call_dumps(skip={call.getId()})}
    print(json.dumps(out))
    sys.stdout.flush()
    ep.hangupAllCalls()
    ep.libHandleEvents(50)
    ep.libDestroy()
""")


def test_call_count_and_dumps_of_a_live_call() -> None:
    port = free_port()
    proc = subprocess.run([sys.executable, "-c", SCRIPT % {"port": port}], capture_output=True,
                          text=True, timeout=60)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    out = json.loads(lines[-1])
    assert out["before"][0] == 0 and out["before"][1] >= 1
    assert out["during"] == [1, out["before"][1]]
    assert len(out["dumps"]) == 1, out
    dump = out["dumps"][0]
    assert dump.startswith(f"call {out['id']}: [CALLING] To: sip:nobody@127.0.0.1"), dump
    assert "Call time:" in dump, dump
    assert out["skipped"] == []
