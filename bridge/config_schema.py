"""A small declarative schema for the YAML config.

mautrix.util.config fills in defaults silently and accepts unknown keys; the bridge must instead
name every unknown, missing or mistyped key in a one-line error. Each node checks a value and
returns the validated plain value (defaults filled in), raising :class:`ConfigError` with the
dotted key path otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

_MISSING: Any = object()


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class Node:
    """Base class: validate ``value`` found at ``key`` and return the clean value."""

    def check(self, value: Any, key: str) -> Any:
        raise NotImplementedError

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key or "(top level)")


class Str(Node):
    def __init__(
        self,
        *,
        pattern: str | None = None,
        hint: str = "",
        nonempty: bool = True,
        secret: bool = False,
    ) -> None:
        self.pattern = re.compile(pattern) if pattern else None
        self.hint = hint
        self.nonempty = nonempty
        self.secret = secret

    def check(self, value: Any, key: str) -> str:
        # YAML reads bare numbers such as extension 101 as int: accept and keep as text.
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_type_name(value)}")
        if self.nonempty and not value.strip():
            raise self.fail(key, "must not be empty")
        if self.pattern and not self.pattern.fullmatch(value):
            shown = "(hidden)" if self.secret else repr(value)
            raise self.fail(key, f"{shown} is not valid{': ' + self.hint if self.hint else ''}")
        return value


class Int(Node):
    def __init__(self, *, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def check(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {_type_name(value)}")
        if self.minimum is not None and value < self.minimum:
            raise self.fail(key, f"must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise self.fail(key, f"must be at most {self.maximum}, got {value}")
        return value


class Bool(Node):
    def check(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_type_name(value)}")
        return value


class Enum(Node):
    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def check(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or value not in self.choices:
            allowed = ", ".join(self.choices)
            raise self.fail(key, f"expected one of {allowed}; got {_type_name(value)}")
        return value


class OneOf(Node):
    """The first alternative that accepts the value wins; the error lists them all."""

    def __init__(self, *alternatives: Node, describe: str) -> None:
        self.alternatives = alternatives
        self.describe = describe

    def check(self, value: Any, key: str) -> Any:
        for alt in self.alternatives:
            try:
                return alt.check(value, key)
            except ConfigError:
                continue
        raise self.fail(key, f"expected {self.describe}, got {_type_name(value)}")


class Custom(Node):
    """Wraps another node and then a function that may raise ``ValueError`` with a message."""

    def __init__(self, inner: Node, func: Callable[[Any], Any]) -> None:
        self.inner = inner
        self.func = func

    def check(self, value: Any, key: str) -> Any:
        clean = self.inner.check(value, key)
        try:
            return self.func(clean)
        except ValueError as e:
            raise self.fail(key, str(e)) from None


class List(Node):
    def __init__(self, item: Node, *, min_items: int = 0) -> None:
        self.item = item
        self.min_items = min_items

    def check(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list, got {_type_name(value)}")
        if len(value) < self.min_items:
            raise self.fail(key, f"needs at least {self.min_items} item(s)")
        return [self.item.check(v, f"{key}[{i}]") for i, v in enumerate(value)]


class Map(Node):
    """A mapping with free keys (checked by ``key_node``) and uniform values."""

    def __init__(self, value: Node, *, key_node: Node | None = None) -> None:
        self.value = value
        self.key_node = key_node or Str()

    def check(self, value: Any, key: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping, got {_type_name(value)}")
        out: dict[str, Any] = {}
        for k, v in value.items():
            sub = f"{key}.{k}" if key else str(k)
            clean_key = self.key_node.check(k, sub)
            out[clean_key] = self.value.check(v, sub)
        return out


@dataclass
class Field:
    node: Node
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def required(node: Node) -> Field:
    return Field(node)


def optional(node: Node, default: Any = None) -> Field:
    return Field(node, default)


class Struct(Node):
    """A mapping with a fixed set of keys; unknown keys are errors."""

    def __init__(self, fields: dict[str, Field], *, default_empty: bool = True) -> None:
        self.fields = fields
        self.default_empty = default_empty

    def check(self, value: Any, key: str) -> dict[str, Any]:
        if value is None and self.default_empty:
            value = {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping, got {_type_name(value)}")
        for k in value:
            if k not in self.fields:
                sub = f"{key}.{k}" if key else str(k)
                known = ", ".join(self.fields)
                raise ConfigError(f"unknown key (known keys here: {known})", key=sub)
        out: dict[str, Any] = {}
        for name, field in self.fields.items():
            sub = f"{key}.{name}" if key else name
            if name in value and value[name] is not None:
                out[name] = field.node.check(value[name], sub)
            elif field.required:
                raise ConfigError("required key is missing", key=sub)
            elif (isinstance(field.node, Struct) and field.node.default_empty
                  and field.default is None):
                out[name] = field.node.check({}, sub)
            else:
                out[name] = field.default
        return out
