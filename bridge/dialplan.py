"""Dial-out patterns: which numbers beyond a company's listed extensions may be dialled.

Patterns use the PBX convention: X = any digit, Z = 1-9, N = 2-9, [1-5] = a class,
a trailing "." = one or more further characters; anything else stands for itself
("0XXXXXXXXX" = 10-digit national numbers, "1XX" = internal 3-digit extensions).
Nothing matches by default: a company without patterns allows only its listed numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

_CLASSES = {"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]"}


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c in _CLASSES:
            out.append(_CLASSES[c])
        elif c == "[":
            end = pattern.find("]", i)
            if end < 0 or not re.fullmatch(r"[0-9-]+", pattern[i + 1:end]):
                raise ValueError(f"bad character class in dial pattern {pattern!r}")
            out.append(pattern[i:end + 1])
            i = end
        elif c == "." and i == len(pattern) - 1:
            out.append("[0-9*#+]+")
        elif c in "0123456789*#+":
            out.append(re.escape(c))
        else:
            raise ValueError(f"{c!r} is not allowed in dial pattern {pattern!r}")
        i += 1
    return re.compile("".join(out))


def check_pattern(pattern: str) -> str:
    compile_pattern(pattern)
    return pattern


def matches(patterns: Iterable[str], number: str) -> bool:
    return any(compile_pattern(p).fullmatch(number) for p in patterns)
