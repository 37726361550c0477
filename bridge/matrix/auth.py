"""hs_token check for every request the homeserver makes to the appservice API."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from ..web.errors import Handler, json_error

log = logging.getLogger(__name__)

# Paths the homeserver calls with the hs_token (spec paths and the legacy unprefixed ones).
PROTECTED_PREFIXES = ("/_matrix/app/", "/transactions/", "/users/", "/rooms/", "/thirdparty/")


def token_from_request(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            return value.strip()
        return ""
    return request.rel_url.query.get("access_token")


def tokens_equal(given: str, expected: str) -> bool:
    """Constant-time comparison (never `==` on secrets)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def hs_token_middleware(hs_token: str) -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(PROTECTED_PREFIXES):
            return await handler(request)
        token = token_from_request(request)
        if token is None:
            log.warning("rejected %s %s: no hs_token", request.method, request.path)
            return json_error(401, "M_UNAUTHORIZED", "missing access token")
        if not tokens_equal(token, hs_token):
            log.warning("rejected %s %s: wrong hs_token", request.method, request.path)
            return json_error(403, "M_FORBIDDEN", "invalid access token")
        return await handler(request)

    return check
