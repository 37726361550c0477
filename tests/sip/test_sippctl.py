"""The sipp runner itself (tests/sip/sippctl.py): a port taken between the moment it was
found free and sipp's bind moves sipp to another one instead of failing the test (free
ports come from the kernel's ephemeral range, which every bind to port 0 on the machine
shares)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.peers.ports import LOOPBACK
from tests.sip.sippctl import Sipp


def test_sipp_moves_to_another_port_when_its_own_was_taken(tmp_path: Path) -> None:
    sipp = Sipp(tmp_path, "uas_answer")
    taken = sipp.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind((LOOPBACK, taken))  # someone else gets there first
        sipp.start()
        try:
            assert sipp.port != taken and sipp.proc.alive()
            assert list(tmp_path.glob("uas_answer_*_errors.log"))  # the failed first try
        finally:
            sipp.stop()


def test_a_port_the_test_chose_is_not_changed(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind((LOOPBACK, 0))
        port = other.getsockname()[1]
        sipp = Sipp(tmp_path, "uas_answer", port=port)
        try:
            sipp.start()
        except RuntimeError as e:
            assert "exited" in str(e) and sipp.port == port
        else:
            sipp.stop()
            raise AssertionError("sipp started on a port someone else holds")
