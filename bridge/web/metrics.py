"""Prometheus metrics on their own address (`metrics.listen`), and what /ready checks.

Counters and histograms are updated where things happen; values that the pool and the call
manager already know (active calls, workers, PBX links) are read at scrape time by a collector,
so they can never drift.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..context import BridgeContext
    from ..sip.events import AudioStats

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StateCollector(Collector):
    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Any]:
        active = GaugeMetricFamily("bridge_active_calls", "Calls in progress",
                                   labels=["company", "direction"])
        counts: dict[tuple[str, str], int] = {}
        if self.ctx.calls is not None:
            for call in self.ctx.calls.calls.values():
                if not call.ended:
                    key = (call.target.company.slug, call.direction)
                    counts[key] = counts.get(key, 0) + 1
        for (company, direction), n in sorted(counts.items()):
            active.add_metric([company, direction], n)
        yield active
        pool = self.ctx.pool
        alive = GaugeMetricFamily("bridge_workers_alive", "SIP/media workers running")
        restarts = CounterMetricFamily("bridge_worker_restarts", "Workers replaced after dying")
        link = GaugeMetricFamily("bridge_pbx_link_up", "1 when the PBX link is registered "
                                 "(trunk links: always 1)", labels=["company", "mode"])
        if pool is not None:
            workers = pool.workers()
            alive.add_metric([], sum(1 for w in workers if w.alive))
            restarts.add_metric([], sum(w.restarts for w in workers))
            states = pool.link_states()
            for slug, cfg in sorted(self.ctx.config.companies.items()):
                if cfg.pbx.mode == "trunk":
                    link.add_metric([slug, "trunk"], 1)
                else:
                    st = states.get(slug)
                    link.add_metric([slug, "register"],
                                    1 if st is not None and st.state == "registered" else 0)
        yield alive
        yield restarts
        yield link
        if pool is not None and pool.config.min_idle_cpu > 0:
            refused = CounterMetricFamily(
                "bridge_calls_refused_overload", "New calls refused because the CPU was "
                "nearly full (sip.min_idle_cpu)", labels=["direction"])
            for direction, n in sorted(pool.overload_refusals.items()):
                refused.add_metric([direction], n)
            yield refused
            idle = pool.cpu_idle_percent
            if idle is not None:
                yield GaugeMetricFamily("bridge_cpu_idle_percent", "Idle share of the "
                                        "machine's CPU over the last 5 s, as admission "
                                        "control sees it", value=idle)
            cost = pool.call_cost_percent
            if cost is not None:
                yield GaugeMetricFamily("bridge_call_cpu_percent", "What admission control "
                                        "counts one answered call to cost, in % of one "
                                        "core: learned from the workers' CPU time",
                                        value=cost)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.call_attempts = Counter(
            "bridge_call_attempts", "Calls by outcome", ["company", "direction", "outcome"],
            registry=self.registry)
        self.setup_seconds = Histogram(
            "bridge_call_setup_overhead_seconds",
            "Time the bridge adds to call setup (m.call.invite→SIP INVITE and SIP 200→"
            "m.call.answer)", ["step"], registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0))
        self.transaction_seconds = Histogram(
            "bridge_matrix_transaction_seconds", "Handling time of appservice transactions",
            registry=self.registry, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0))
        self.messages = Counter(
            "bridge_messages", "Text messages bridged", ["direction", "outcome"],
            registry=self.registry)
        self.frames = Counter(
            "bridge_audio_frames", "Audio frames (20 ms) bridged, counted when a call's media "
            "closes", ["direction"], registry=self.registry)
        self.frames_lost = Counter(
            "bridge_audio_frames_lost", "Audio frames dropped or missing (underruns), counted "
            "when a call's media closes", ["direction"], registry=self.registry)
        self._runner: web.AppRunner | None = None

    def audio_stats(self, _call: Any, stats: AudioStats) -> None:
        """The pool's ``on_audio_stats``: one call's frame counts."""
        self.frames.labels("to_matrix").inc(stats.to_matrix_frames)
        self.frames_lost.labels("to_matrix").inc(stats.to_matrix_lost)
        self.frames.labels("to_sip").inc(stats.to_sip_frames)
        self.frames_lost.labels("to_sip").inc(stats.to_sip_lost)

    def watch(self, ctx: BridgeContext) -> None:
        self.registry.register(_StateCollector(ctx))

    async def handle(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE})

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info("metrics on http://%s:%d/metrics", host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
