"""Extension states from the PBX: SUBSCRIBE to the dialog or presence event package of each
extension (a sipp PBX answers and NOTIFYs), reported by the pool in order."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

from bridge.sip.events import ExtensionStatus
from bridge.sip.pool import WorkerPool
from tests.sip.conftest import StartPool, sip_config, trunk, worker_address
from tests.sip.sippctl import Sipp
from tests.sip.test_presence_body import dialog_info, pidf


def subscribe_pbx(tmp_path: Path, event: str, ctype: str, idle: str, busy: str, idle2: str,
                  gaps_ms: tuple[int, int, int] = (300, 300, 300), **kw: Any) -> Sipp:
    """The PBX of one extension: 200 to the SUBSCRIBE, then NOTIFYs idle, busy, idle and
    terminated, ``gaps_ms`` apart."""
    return Sipp(tmp_path, "uas_subscribe", service="101", template={
        "EVENT": event, "CTYPE": ctype, "BODY_IDLE": idle, "BODY_BUSY": busy,
        "BODY_IDLE2": idle2, **{f"GAP{i}_MS": str(ms) for i, ms in enumerate(gaps_ms, 1)},
    }, **kw)


async def states(queue: asyncio.Queue[ExtensionStatus], count: int,
                 timeout_s: float = 15.0) -> list[tuple[str, str, str]]:
    out = []
    for _ in range(count):
        s = await asyncio.wait_for(queue.get(), timeout_s)
        out.append((s.extension, s.state, s.reason))
    return out


async def watch_101(start_pool: StartPool, pbx: Sipp, presence: str = "dialog",
                    **config: Any) -> tuple[WorkerPool, asyncio.Queue[ExtensionStatus]]:
    """A pool whose acme link (at ``pbx``) watches extension 101; the states it reports."""
    got: asyncio.Queue[ExtensionStatus] = asyncio.Queue()
    pool = await start_pool(sip_config(trunk(domain=pbx.address, presence=presence,
                                             extensions=("101",)), **config),
                            on_extension_state=got.put)
    return pool, got


async def test_dialog_package_busy_online_offline(tmp_path: Path, start_pool: StartPool):
    """Asterisk-style BLF: idle, a confirmed call, the call terminated, then the PBX ends the
    subscription."""
    pbx = subscribe_pbx(tmp_path, "dialog", "application/dialog-info+xml",
                        dialog_info(0), dialog_info(1, ("c1", "confirmed")),
                        dialog_info(2, ("c1", "terminated"))).start()
    pool, got = await watch_101(start_pool, pbx, workers=2)
    assert await states(got, 4) == [("101", "online", ""), ("101", "busy", ""),
                                    ("101", "online", ""), ("101", "offline", "noresource")]
    assert await pbx.done(10) == 0, pbx.explain()
    subscribe = pbx.messages()
    assert "Event: dialog" in subscribe and "application/dialog-info+xml" in subscribe
    # only the company's home worker subscribes (two workers run)
    assert subscribe.count("SUBSCRIBE sip:101@") == 1
    assert pool.extension_states()[("acme", "101")].state == "offline"


async def test_dialog_package_without_the_notify_observer(tmp_path: Path,
                                                          start_pool: StartPool):
    """Without the pjsip layout (source filter off, so no NOTIFY observer) the states come
    from pjsua's own reading of the dialog-info documents (their first dialog)."""
    pbx = subscribe_pbx(tmp_path, "dialog", "application/dialog-info+xml",
                        dialog_info(0), dialog_info(1, ("c1", "early")),
                        dialog_info(2, ("c1", "terminated")), gaps_ms=(600, 600, 600)).start()
    _, got = await watch_101(start_pool, pbx, source_filter=False)
    assert await states(got, 4) == [("101", "online", ""), ("101", "busy", ""),
                                    ("101", "online", ""), ("101", "offline", "noresource")]
    assert await pbx.done(10) == 0, pbx.explain()


async def test_presence_package_pidf(tmp_path: Path, start_pool: StartPool):
    """PIDF: open is online, open with the RPID activity on-the-phone is busy, closed is
    offline."""
    pbx = subscribe_pbx(tmp_path, "presence", "application/pidf+xml",
                        pidf("open", note="Ready"), pidf("open", "on-the-phone"),
                        pidf("closed", note="Unavailable")).start()
    _, got = await watch_101(start_pool, pbx, "presence")
    assert await states(got, 3) == [("101", "online", ""), ("101", "busy", ""),
                                    ("101", "offline", "")]
    assert await pbx.done(10) == 0, pbx.explain()
    assert "Event: presence" in pbx.messages()
    await asyncio.sleep(0.5)
    assert got.empty()  # the end of the subscription changes nothing: already offline


async def test_refused_subscription_is_offline_and_retried(tmp_path: Path,
                                                           start_pool: StartPool):
    """404 for the SUBSCRIBE: offline with the reason, and a new SUBSCRIBE after the
    back-off (2 s)."""
    pbx = Sipp(tmp_path, "uas_subscribe_reject", calls=2,
               template={"STATUS": "404", "REASON": "Not Found"}).start()
    loop = asyncio.get_running_loop()
    _, got = await watch_101(start_pool, pbx)
    started = loop.time()
    assert await states(got, 1) == [("101", "offline", "404 Not Found")]
    assert await pbx.done(15) == 0, pbx.explain()
    assert loop.time() - started >= 1.5  # the second SUBSCRIBE waited for the back-off
    assert pbx.messages().count("SUBSCRIBE sip:101@") == 2


async def test_forged_notify_changes_nothing(tmp_path: Path, start_pool: StartPool):
    """A NOTIFY from an admitted address that belongs to no subscription dialog gets 481
    from pjsip, and its body (on a call) never becomes the extension's state."""
    pbx = subscribe_pbx(tmp_path / "pbx", "dialog", "application/dialog-info+xml",
                        dialog_info(0), dialog_info(1), dialog_info(2),
                        gaps_ms=(3000, 100, 100)).start()
    pool, got = await watch_101(start_pool, pbx)
    assert await states(got, 1) == [("101", "online", "")]
    forger = Sipp(tmp_path / "forger", "uac_notify_forged", remote=worker_address(pool),
                  template={"BODY": dialog_info(5, ("x", "confirmed"))}).start()
    assert await forger.done(10) == 0, forger.explain()
    assert await states(got, 1) == [("101", "offline", "noresource")]  # nothing between
    assert await pbx.done(10) == 0, pbx.explain()


async def test_extensions_changed_at_run_time(tmp_path: Path, start_pool: StartPool):
    """pool.watch_extensions: the home worker subscribes to an added extension (the link's
    account and registration stay as they are)."""
    got: asyncio.Queue[ExtensionStatus] = asyncio.Queue()
    pbx = Sipp(tmp_path, "uas_subscribe_reject", calls=3,
               template={"STATUS": "404", "REASON": "Not Found"}).start()
    link = trunk(domain=pbx.address, presence="dialog", extensions=("101",))
    pool = await start_pool(sip_config(link), on_extension_state=got.put)
    assert await states(got, 1) == [("101", "offline", "404 Not Found")]
    await pool.watch_extensions(replace(link, extensions=("101", "102")))
    assert sorted(await states(got, 2)) == [("101", "offline", "404 Not Found"),
                                            ("102", "offline", "404 Not Found")]
    assert await pbx.done(10) == 0, pbx.explain()
    assert pbx.messages().count("SUBSCRIBE sip:102@") == 1
    assert set(pool.extension_states()) == {("acme", "101"), ("acme", "102")}


async def test_a_dead_home_worker_makes_its_extensions_offline(tmp_path: Path,
                                                               start_pool: StartPool):
    """The subscriptions die with their worker: offline until the replacement reports."""
    pbx = subscribe_pbx(tmp_path, "dialog", "application/dialog-info+xml",
                        dialog_info(0), dialog_info(1), dialog_info(2),
                        gaps_ms=(20000, 100, 100)).start()
    pool, got = await watch_101(start_pool, pbx)
    assert await states(got, 1) == [("101", "online", "")]
    os.kill(pool.workers()[0].pid, signal.SIGKILL)
    assert await states(got, 1) == [("101", "offline", "worker died")]
    pbx.stop()
