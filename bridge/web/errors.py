"""One aiohttp middleware that turns every error into a JSON body with an `errcode`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_DEFAULT_ERRCODES = {
    400: "M_BAD_JSON",
    401: "M_UNAUTHORIZED",
    403: "M_FORBIDDEN",
    404: "M_NOT_FOUND",
    405: "M_UNRECOGNIZED",
    413: "M_TOO_LARGE",
    429: "M_LIMIT_EXCEEDED",
}


def json_error(status: int, errcode: str, error: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": error}, status=status)


class ApiError(Exception):
    """Raise inside a handler to answer with this status and errcode."""

    def __init__(self, status: int, errcode: str, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.errcode = errcode
        self.error = error


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return json_error(e.status, e.errcode, e.error)
    except web.HTTPException as e:
        if e.content_type == "application/json":
            raise
        if e.status < 400:
            raise
        errcode = _DEFAULT_ERRCODES.get(e.status, "M_UNKNOWN")
        return json_error(e.status, errcode, e.reason)
    except json.JSONDecodeError:
        return json_error(400, "M_NOT_JSON", "request body is not valid JSON")
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "M_UNKNOWN", "internal error in the bridge")
