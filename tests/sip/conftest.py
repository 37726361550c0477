"""Fixtures for the SIP worker tests: pools on 127.0.0.1 with free ports, Kamailio, sipp."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.sip.config import LinkConfig, ListenAddress, SipConfig
from bridge.sip.pool import WorkerPool
from tests.peers.kamailio import Kamailio
from tests.peers.ports import LOOPBACK

StartPool = Callable[..., Awaitable[WorkerPool]]


def rtp_range(size: int = 400) -> tuple[int, int]:
    """A random even-based RTP range (pjsua skips ports in use, so overlaps are harmless)."""
    base = random.randrange(20000, 60000 - size, 2)
    return base, base + size - 1


def sip_config(
    *links: LinkConfig,
    workers: int = 1,
    calls_per_worker: int = 4,
    transports: tuple[str, ...] = ("udp",),
    **kwargs: Any,
) -> SipConfig:
    return SipConfig(
        listen=tuple(ListenAddress(t, LOOPBACK, 0) for t in transports),  # type: ignore[arg-type]
        public_address=LOOPBACK,
        rtp_ports=rtp_range(),
        workers=workers,
        calls_per_worker=calls_per_worker,
        links=links,
        heartbeat_interval_s=0.5,
        heartbeat_timeout_s=3.0,
        **kwargs,
    )


def trunk(company: str = "acme", domain: str = LOOPBACK, **kwargs: Any) -> LinkConfig:
    kwargs.setdefault("allowed_sources", (LOOPBACK,))
    return LinkConfig(company=company, mode="trunk", domain=domain, **kwargs)


def worker_address(pool: WorkerPool, index: int = 0, transport: str = "udp") -> str:
    info = pool.workers()[index]
    for t, host, port in info.transports:
        if t == transport:
            return f"{host}:{port}"
    raise AssertionError(f"worker {index} has no {transport} transport")


async def eventually(pred: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def start_pool() -> AsyncIterator[StartPool]:
    pools: list[WorkerPool] = []

    async def start(config: SipConfig, **handlers: Any) -> WorkerPool:
        pool = WorkerPool(config)
        for name, handler in handlers.items():
            setattr(pool, name, handler)
        pools.append(pool)
        await pool.start()
        return pool

    yield start
    for pool in pools:
        await pool.stop()


@pytest.fixture
def kamailio(tmp_path: Path) -> Iterator[Kamailio]:
    k = Kamailio(tmp_path / "kamailio", users={"matrix": "secret", "101": "pw101"})
    k.start()
    try:
        yield k
    finally:
        k.close()
