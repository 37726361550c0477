"""Just enough SIP message parsing to read who calls whom from a received request.

pjsua2 hands us the whole received message as text (``SipRxData.wholeMsg``); the
:mod:`.sourcefilter` reads the same text straight from pjsip's buffer. This module turns it
into a start line and headers (compact forms and folded lines understood) and parses
name-addr values (``"Alice" <sip:101@pbx;user=phone>;tag=x``) and SIP/SIPS/tel URIs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from .errors import InvalidTarget

_COMPACT = {
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "v": "via",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "u": "allow-events",
}


_USER_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+")


def check_user(value: str, what: str) -> str:
    """A SIP URI user part (extension, number, ``alice=example.org``) or InvalidTarget."""
    if not value or len(value) > 128 or not _USER_RE.fullmatch(value):
        raise InvalidTarget(f"{what} {value!r} cannot be a SIP user part")
    return value


def quote_display(name: str) -> str:
    """A display name as a SIP quoted-string (control characters dropped, 80 chars max)."""
    cleaned = "".join(ch for ch in name if ch >= " " and ch != "\x7f")[:80]
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class SipUri:
    scheme: str = ""
    user: str = ""
    host: str = ""
    port: int = 0
    params: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}"
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}:{user}{self.host}{port}"


@dataclass(frozen=True)
class NameAddr:
    display: str
    uri: SipUri
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    method: str
    uri: SipUri
    headers: dict[str, list[str]]

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def to_tag(self) -> str:
        to = self.header("to")
        return parse_name_addr(to).params.get("tag", "") if to else ""


def _params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        key, _, value = part.partition("=")
        out[key.strip().lower()] = value.strip()
    return out


def parse_uri(text: str) -> SipUri:
    """``sip:user:pw@host:port;params?headers``, ``sips:…`` or ``tel:number;params``."""
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if not sep:
        return SipUri(host=text)
    scheme = scheme.lower()
    rest = rest.split("?", 1)[0]
    main, _, params = rest.partition(";")
    if scheme == "tel":
        return SipUri(scheme, unquote(main), "", 0, _params(params))
    user = ""
    if "@" in main:
        user, _, main = main.rpartition("@")
        user = unquote(user.split(":", 1)[0])
    host, port = main, 0
    if main.startswith("["):
        end = main.find("]")
        host = main[: end + 1]
        tail = main[end + 1 :]
        if tail.startswith(":") and tail[1:].isdigit():
            port = int(tail[1:])
    elif ":" in main:
        host, _, p = main.rpartition(":")
        port = int(p) if p.isdigit() else 0
    return SipUri(scheme, user, host.lower(), port, _params(params))


def _unquote_display(text: str) -> tuple[str, str]:
    """Parse a leading quoted-string; return (display, rest)."""
    out = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), text[i + 1 :]
        out.append(ch)
        i += 1
    return "".join(out), ""


def parse_name_addr(value: str) -> NameAddr:
    """A From/To/P-Asserted-Identity/Contact value (first entry only)."""
    value = value.strip()
    display = ""
    if value.startswith('"'):
        display, value = _unquote_display(value)
        value = value.strip()
    if "<" in value:
        before, _, rest = value.partition("<")
        if not display:
            display = before.strip()
        uri_text, _, params = rest.partition(">")
        return NameAddr(display, parse_uri(uri_text), _params(params))
    uri_text, _, params = value.partition(";")
    uri_text = uri_text.split(",", 1)[0]
    return NameAddr(display, parse_uri(uri_text), _params(params))


def parse_request(text: str) -> Request | None:
    """Start line and headers of a request; None for a response or garbage."""
    head = text.split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
    lines = head.replace("\r\n", "\n").split("\n")
    if not lines:
        return None
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].upper().startswith("SIP/"):
        return None
    headers: dict[str, list[str]] = {}
    last: str | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and last is not None:
            headers[last][-1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        key = _COMPACT.get(key, key)
        headers.setdefault(key, []).append(value.strip())
        last = key
    return Request(parts[0].upper(), parse_uri(parts[1]), headers)


def split_source(address: str) -> tuple[str, int]:
    """``"127.0.0.1:5060"`` or ``"[::1]:5060"`` → (ip, port)."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else 0
    host, sep, port = address.rpartition(":")
    if not sep or ":" in host:
        return address, 0
    return host, int(port) if port.isdigit() else 0
