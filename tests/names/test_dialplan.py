"""Dial-out patterns (toll-fraud guard): nothing beyond the listed numbers unless allowed."""

from __future__ import annotations

import pytest

from bridge.dialplan import check_pattern, matches


def test_patterns() -> None:
    assert matches(["1XX"], "109") and not matches(["1XX"], "1090") and not matches(["1XX"], "209")
    assert matches(["0ZXXXXXXX"], "012345678") and not matches(["0ZXXXXXXX"], "002345678")
    assert matches(["NXX"], "200") and not matches(["NXX"], "100")
    assert matches(["9."], "9123") and not matches(["9."], "9")
    assert matches(["[1-3]0"], "20") and not matches(["[1-3]0"], "40")
    assert not matches([], "100")


@pytest.mark.parametrize("bad", ["1XY", "0[a-z]", "09.9", "x"])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_pattern(bad)
