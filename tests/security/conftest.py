"""Fixtures of the hostile-input tests: the SIP tests' pool starter (a pool on 127.0.0.1)."""

from __future__ import annotations

from tests.sip.conftest import start_pool

__all__ = ["start_pool"]
