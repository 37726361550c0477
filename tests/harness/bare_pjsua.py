"""pjsua2 on its own in this process, as a worker sets it up but with no SIP transport: one
thread of ours (``threadCnt=0``), no log output, the null sound device, 8 kHz and no VAD or
echo canceller. For tests and benchmarks that run pjsua2 in a child process (it is one per
process)."""

from __future__ import annotations

import pjsua2 as pj


def init(clock_rate: int = 8000) -> pj.Endpoint:
    """``libCreate`` and ``libInit``: add transports, then call ``libStart``."""
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    med = cfg.medConfig
    med.clockRate = med.sndClockRate = clock_rate
    med.ecTailLen = 0
    med.noVad = True
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    return ep
