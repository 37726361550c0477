"""Digest maths of inbound_auth (bridge.sip.digest): nonces, header parsing, verdicts."""

from __future__ import annotations

import hashlib
import re

import pytest

from bridge.sip import digest
from bridge.sip.digest import NonceKey, Verdict, authenticate, parse_digest

NOW = 1_800_000_000.0
REALM = "acme.example"
USER, PASSWORD = "pbx", "s3cret pass"
URI = "sip:alice=example.org@127.0.0.1:5060"


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def client_header(challenge: str, *, user: str = USER, password: str = PASSWORD,
                  method: str = "INVITE", uri: str = URI, qop: bool = True,
                  realm: str | None = None, nonce: str | None = None) -> str:
    """What a client answers to ``challenge`` (computed here without bridge.sip.digest)."""
    c = parse_digest(challenge)
    assert c is not None
    realm = c["realm"] if realm is None else realm
    nonce = c["nonce"] if nonce is None else nonce
    ha1 = md5(f"{user}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    if qop:
        resp = md5(f"{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}")
        return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                f'response="{resp}", algorithm=MD5, qop=auth, nc=00000001, cnonce="0a4f113b"')
    resp = md5(f"{ha1}:{nonce}:{ha2}")
    return (f'Digest username="{user}",realm="{realm}",nonce="{nonce}",uri="{uri}",'
            f'response="{resp}"')


def verdict(headers: list[str], key: NonceKey, now: float = NOW, method: str = "INVITE"
            ) -> Verdict:
    return authenticate(username=USER, realm=REALM, password=PASSWORD, key=key, method=method,
                        authorization=headers, now=now)


def test_rfc2617_example_response() -> None:
    assert digest.response(
        username="Mufasa", realm="testrealm@host.com", password="Circle Of Life",
        method="GET", uri="/dir/index.html", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth", nc="00000001", cnonce="0a4f113b",
    ) == "6629fae49393a05397450978507c4ef1"


def test_nonce_fresh_stale_foreign() -> None:
    key = NonceKey(b"k" * 32)
    nonce = key.make(NOW)
    assert key.check(nonce, NOW) == "fresh"
    assert key.check(nonce, NOW + 299) == "fresh"
    assert key.check(nonce, NOW + 301) == "stale"  # 5 minutes
    assert key.check(nonce, NOW - 60) == "stale"  # from the future
    assert NonceKey(b"k" * 32).check(nonce, NOW) == "fresh"  # same secret: another worker
    assert NonceKey(b"x" * 32).check(nonce, NOW) == "foreign"
    assert NonceKey().check(nonce, NOW) == "foreign"  # a random secret of its own
    stamp, mac = nonce.split(".")
    assert key.check(f"{int(stamp, 16) + 1000:x}.{mac}", NOW) == "foreign"  # stamp changed
    for bad in ("", ".", "zz.zz", nonce + "0", "x" * 5000, f"{stamp}.{mac.upper()}"):
        assert key.check(bad, NOW) == "foreign"
    assert "k" * 8 not in repr(key)


def test_parse_digest() -> None:
    got = parse_digest('Digest username="a\\"b", realm="r, with comma",nonce=abc , '
                       'uri="sip:x@y;transport=udp", response="00ff", qop=auth, nc=00000001')
    assert got == {"username": 'a"b', "realm": "r, with comma", "nonce": "abc",
                   "uri": "sip:x@y;transport=udp", "response": "00ff", "qop": "auth",
                   "nc": "00000001"}
    assert parse_digest("digest realm=x") == {"realm": "x"}
    assert parse_digest('Basic dXNlcjpwYXNz') is None
    assert parse_digest('Digest realm="unterminated') is None
    assert parse_digest('Digest realm="x" junk') is None
    assert parse_digest("Digest " + "a=b," * 2000) is None  # too long
    assert parse_digest("") is None


def test_challenge_header() -> None:
    key = NonceKey(b"k" * 32)
    v = verdict([], key)
    assert v.status == 401 and v.why == "no credentials"
    c = parse_digest(v.challenge)
    assert c is not None
    assert c["realm"] == REALM and c["algorithm"] == "MD5" and c["qop"] == "auth"
    assert key.check(c["nonce"], NOW) == "fresh"
    assert "stale" not in c
    assert digest.challenge('a"b', "n", stale=True) == (
        'Digest realm="a\\"b", nonce="n", algorithm=MD5, qop="auth", stale=true')


@pytest.mark.parametrize("qop", [True, False])
def test_valid_credentials_with_and_without_qop(qop: bool) -> None:
    key = NonceKey(b"k" * 32)
    challenge = verdict([], key).challenge
    assert verdict([client_header(challenge, qop=qop)], key) == Verdict(0, why="authenticated")
    msg = client_header(challenge, qop=qop, method="MESSAGE")
    assert verdict([msg], key, method="MESSAGE").status == 0
    assert verdict([msg], key, method="INVITE").status == 403  # signed for another method
    upper = re.sub(r'response="([0-9a-f]+)"', lambda m: f'response="{m[1].upper()}"',
                   client_header(challenge, qop=qop))
    assert verdict([upper], key).status == 0  # hex digits in either case


def test_wrong_credentials_get_403() -> None:
    key = NonceKey(b"k" * 32)
    challenge = verdict([], key).challenge
    for header in (
        client_header(challenge, password="wrong"),
        client_header(challenge, user="admin"),
        client_header(challenge, qop=False, password=""),
        client_header(challenge).replace("algorithm=MD5", "algorithm=SHA-256"),
        client_header(challenge).replace("qop=auth", "qop=auth-int"),
        client_header(challenge).replace(', nc=00000001', ''),
        f'Digest username="{USER}", realm="{REALM}", nonce="x"',  # no response
    ):
        v = verdict([header], key)
        assert v.status == 403 and not v.challenge, (header, v)


def test_other_realm_or_scheme_is_no_credentials() -> None:
    key = NonceKey(b"k" * 32)
    challenge = verdict([], key).challenge
    for headers in ([client_header(challenge, realm="elsewhere")], ["Basic dXNlcjpwYXNz"],
                    ["Digest garbage ="]):
        v = verdict(headers, key)
        assert v.status == 401 and v.challenge, headers
    # a header for another realm next to ours: ours is used
    both = [client_header(challenge, realm="elsewhere"), client_header(challenge)]
    assert verdict(both, key).status == 0


def test_stale_or_foreign_nonce_with_right_response_is_challenged_again() -> None:
    key = NonceKey(b"k" * 32)
    old = key.make(NOW - 400)
    other = NonceKey(b"x" * 32).make(NOW)
    for nonce, why in ((old, "stale nonce"), (other, "foreign nonce")):
        header = client_header(digest.challenge(REALM, nonce), nonce=nonce)
        v = verdict([header], key)
        assert (v.status, v.why) == (401, why)
        c = parse_digest(v.challenge)
        assert c is not None and c["stale"] == "true" and key.check(c["nonce"], NOW) == "fresh"
        # a wrong password is 403 whatever the nonce
        wrong = client_header(digest.challenge(REALM, nonce), nonce=nonce, password="x")
        assert verdict([wrong], key).status == 403
