"""A bridge with its own Synapse and PBX peers, for tests that need a config the shared
stack (tests/conftest.py) does not have."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from tests.harness.bridge_proc import BridgeProc
from tests.harness.matrix_user import MatrixUser, login
from tests.harness.synapse import SERVER_NAME, Synapse


class Peer(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> Any: ...


@contextmanager
def own_stack(workdir: Path, overrides: dict[str, Any],
              *peers: Peer) -> Iterator[tuple[Synapse, BridgeProc]]:
    """Synapse with the bridge's registration, the peers, then the bridge; stopped in the
    reverse order."""
    synapse = Synapse(workdir / "synapse", registrations=[])
    bridge = BridgeProc(workdir / "bridge", synapse.url, SERVER_NAME, overrides=overrides)
    bridge.generate()
    synapse.registrations = [bridge.registration_path]
    try:
        synapse.start()
        for peer in peers:
            peer.start()
        bridge.start()
        yield synapse, bridge
    finally:
        bridge.stop()
        for peer in peers:
            peer.stop()
        synapse.stop()


async def syncing_user(synapse: Synapse, prefix: str) -> MatrixUser:
    """A new user on ``synapse``, logged in and syncing (the caller closes it)."""
    local = f"{prefix}{secrets.token_hex(3)}"
    synapse.register_user(local, "pw-" + local)
    user = await login(synapse.url, f"@{local}:{SERVER_NAME}", "pw-" + local)
    user.start_sync()
    return user
