"""Digest authentication of requests a PBX sends us (RFC 2617 / RFC 7616, MD5), stateless.

Used when a company's link has ``inbound_auth``: the :mod:`.sourcefilter` answers an INVITE or
MESSAGE without valid credentials before pjsua sees it. Pure functions, no pjsua2.

- **Nonce**: ``<unix time, hex>.<HMAC-SHA256(secret, that hex), first 128 bits, hex>``. The
  secret is random per pool start and shared by its workers (in ``WorkerConfig``), so a nonce
  one worker gave out is valid at another (a round-robin dispatcher may send the retried
  request elsewhere); nothing is stored per challenge. A nonce is good for
  :data:`NONCE_LIFETIME_S`; an older one (or one made with another secret, e.g. before a
  restart) gets a new challenge with ``stale=true`` when the response itself was right.
- **Verdict** (:func:`authenticate`), in this order: no ``Authorization`` for our realm → 401
  with a challenge; credentials that cannot be valid (another user name, a wrong response, an
  algorithm other than MD5, a qop other than auth, missing fields) → 403; right response but
  a stale or foreign nonce → 401 ``stale=true``; else accepted. The request's target plays no
  part, so an unauthenticated caller learns nothing about which extensions exist.
- **Response**: ``MD5(HA1:nonce:HA2)``, or with ``qop=auth``
  ``MD5(HA1:nonce:nc:cnonce:auth:HA2)``; ``HA1 = MD5(user:realm:password)``,
  ``HA2 = MD5(method:digest-uri)``. The challenge offers ``qop="auth"``; answers without qop
  (RFC 2069 clients) are accepted too. The digest-uri is taken as sent (a proxy in front may
  rewrite the Request-URI). Responses are compared in constant time.

Limits: a stateless nonce cannot be used only once, so a request captured on the wire can be
replayed within the nonce's lifetime (use TLS, or ``allowed_sources``, against that); ``nc``
is not tracked.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

NONCE_LIFETIME_S = 300
#: a nonce stamped this far in the future (clock step between workers) still counts as fresh.
CLOCK_SKEW_S = 5
HEADER = "WWW-Authenticate"
_MAX_HEADER = 4096

NonceState = Literal["fresh", "stale", "foreign"]


def _md5(text: str) -> str:
    # MD5 is what SIP digest (RFC 2617, RFC 8760 "MD5") uses; no choice here.
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


class NonceKey:
    """Makes and checks stateless nonces with one secret."""

    def __init__(
        self,
        secret: bytes | str | None = None,
        lifetime_s: float = NONCE_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if secret is None or secret == "" or secret == b"":
            secret = secrets.token_bytes(32)
        self._secret = secret.encode() if isinstance(secret, str) else bytes(secret)
        self.lifetime_s = lifetime_s
        self._clock = clock

    def __repr__(self) -> str:
        return f"NonceKey(lifetime_s={self.lifetime_s})"

    def _mac(self, stamp: str) -> str:
        return hmac.new(self._secret, stamp.encode("ascii"), hashlib.sha256).hexdigest()[:32]

    def make(self, now: float | None = None) -> str:
        stamp = f"{int(self._clock() if now is None else now):x}"
        return f"{stamp}.{self._mac(stamp)}"

    def check(self, nonce: str, now: float | None = None) -> NonceState:
        m = re.fullmatch(r"([0-9a-f]{1,12})\.([0-9a-f]{32})", nonce)
        if m is None or not hmac.compare_digest(m.group(2), self._mac(m.group(1))):
            return "foreign"
        age = (self._clock() if now is None else now) - int(m.group(1), 16)
        if age > self.lifetime_s or age < -CLOCK_SKEW_S:
            return "stale"
        return "fresh"


_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(?:,|$)')


def parse_digest(value: str) -> dict[str, str] | None:
    """``Digest username="u", realm="r", …`` → lower-case names to unquoted values; None
    for another scheme or a value that does not parse."""
    if len(value) > _MAX_HEADER:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    out: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            return None
        raw = m.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        out.setdefault(m.group(1).lower(), raw)
        pos = m.end()
    return out


def response(
    *,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
) -> str:
    """The ``response`` value a client with these credentials sends."""
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    if qop:
        return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _md5(f"{ha1}:{nonce}:{ha2}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(realm: str, nonce: str, stale: bool = False) -> str:
    """The value of a ``WWW-Authenticate`` header."""
    out = f'Digest realm={_quote(realm)}, nonce="{nonce}", algorithm=MD5, qop="auth"'
    return out + ", stale=true" if stale else out


@dataclass(frozen=True)
class Verdict:
    """0: authenticated; 401 (``challenge`` is the WWW-Authenticate value) or 403."""

    status: int
    challenge: str = ""
    #: for the log (never a credential)
    why: str = ""


def authenticate(
    *,
    username: str,
    realm: str,
    password: str,
    key: NonceKey,
    method: str,
    authorization: Sequence[str],
    now: float | None = None,
) -> Verdict:
    """The verdict for a request carrying these ``Authorization`` header values."""
    creds = None
    for value in authorization:
        parsed = parse_digest(value)
        if parsed is not None and parsed.get("realm") == realm:
            creds = parsed
            break
    if creds is None:
        why = "no credentials" if not authorization else "no credentials for our realm"
        return Verdict(401, challenge(realm, key.make(now)), why)
    needed = ("username", "nonce", "uri", "response")
    if any(not creds.get(k) for k in needed):
        return Verdict(403, why="incomplete credentials")
    if creds.get("algorithm", "MD5").upper() != "MD5":
        return Verdict(403, why="unsupported digest algorithm")
    qop = creds.get("qop")
    if qop is not None and (qop.lower() != "auth" or not creds.get("nc")
                            or not creds.get("cnonce")):
        return Verdict(403, why="unsupported qop")
    expected = response(
        username=username, realm=realm, password=password, method=method, uri=creds["uri"],
        nonce=creds["nonce"], qop=qop.lower() if qop else None, nc=creds.get("nc", ""),
        cnonce=creds.get("cnonce", ""),
    )
    user_ok = hmac.compare_digest(creds["username"].encode(), username.encode())
    response_ok = hmac.compare_digest(creds["response"].lower().encode(), expected.encode())
    if not (user_ok and response_ok):
        return Verdict(403, why="wrong credentials")
    state = key.check(creds["nonce"], now)
    if state != "fresh":
        return Verdict(401, challenge(realm, key.make(now), stale=True), f"{state} nonce")
    return Verdict(0, why="authenticated")
