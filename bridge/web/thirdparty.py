"""Third-party lookups the homeserver forwards to the appservice (Element's dial pad).

Element shows its dial pad when /thirdparty/protocols lists `m.protocol.pstn` or
`im.vector.protocol.pstn`, then asks `/thirdparty/user/<protocol>?m.id.phone=TEXT` and calls the
first `userid` returned. TEXT is resolved by `bridge.names.resolve`. The homeserver does not
tell the appservice who asks, so these lookups see what any caller may see: company main lines
and public extensions, and the server's default company for bare extension numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..directory import may_dial
from ..names import Match, resolve
from .errors import ApiError

if TYPE_CHECKING:
    from ..context import BridgeContext

PSTN_PROTOCOLS = ("m.protocol.pstn", "im.vector.protocol.pstn")
SIP_PROTOCOL = "sip"
ALL_PROTOCOLS = (*PSTN_PROTOCOLS, SIP_PROTOCOL)
NETWORK_ID = "sip"


class ThirdParty:
    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx

    def register(self, app: web.Application) -> None:
        for prefix in ("/_matrix/app/v1", ""):
            app.router.add_get(prefix + "/thirdparty/protocol/{protocol}", self.get_protocol)
            app.router.add_get(prefix + "/thirdparty/user/{protocol}", self.get_user)
            app.router.add_get(prefix + "/thirdparty/location/{protocol}", self.get_location)
            app.router.add_get(prefix + "/thirdparty/user", self.reverse_user)
            app.router.add_get(prefix + "/thirdparty/location", self.reverse_location)

    def _protocol(self, request: web.Request) -> str:
        protocol = request.match_info["protocol"]
        if protocol not in ALL_PROTOCOLS:
            raise ApiError(404, "M_NOT_FOUND", f"unknown protocol {protocol!r}")
        return protocol

    async def get_protocol(self, request: web.Request) -> web.Response:
        protocol = self._protocol(request)
        instance = {
            "desc": "Companies' phone systems",
            "network_id": NETWORK_ID,
            "fields": {},
        }
        if protocol == SIP_PROTOCOL:
            body: dict[str, Any] = {
                "user_fields": ["company", "extension"],
                "location_fields": ["company"],
                "icon": "",
                "field_types": {
                    "company": {"regexp": ".+", "placeholder": "acme"},
                    "extension": {"regexp": "[0-9*#+]*", "placeholder": "101"},
                },
                "instances": [instance],
            }
        else:
            body = {
                "user_fields": ["m.id.phone"],
                "location_fields": [],
                "icon": "",
                "field_types": {
                    "m.id.phone": {"regexp": ".+", "placeholder": "acme, acme 101 or 101"},
                },
                "instances": [instance],
            }
        return web.json_response(body)

    def _matches(self, text: str) -> list[Match]:
        d = self.ctx.directory
        found = resolve(text, d.all(), default_company=self.ctx.config.bridge.default_company,
                        may_dial=may_dial)
        # The homeserver does not say who asks: main lines, public extensions and numbers the
        # company's dial_out patterns allow; the call itself is checked against the caller's
        # permission level (with a notice when refused).
        return [m for m in found if m.extension is None or m.known is None or m.known.public]

    def _user_entry(self, protocol: str, m: Match, text: str) -> dict[str, Any]:
        d = self.ctx.directory
        fields: dict[str, str]
        if protocol == SIP_PROTOCOL:
            fields = {"company": m.company.slug, "extension": m.extension or ""}
        else:
            fields = {"m.id.phone": text}
        return {
            "userid": d.ghost_mxid(m.company, m.extension),
            "protocol": protocol,
            "fields": fields,
        }

    async def get_user(self, request: web.Request) -> web.Response:
        protocol = self._protocol(request)
        q = request.rel_url.query
        if protocol == SIP_PROTOCOL:
            text = " ".join(x for x in (q.get("company", ""), q.get("extension", "")) if x)
        else:
            text = q.get("m.id.phone", "")
        return web.json_response([self._user_entry(protocol, m, text) for m in self._matches(text)])

    async def get_location(self, request: web.Request) -> web.Response:
        protocol = self._protocol(request)
        q = request.rel_url.query
        text = q.get("company") or q.get("m.id.phone") or q.get("search") or ""
        out = []
        for m in self._matches(text):
            if m.extension is None:
                out.append(
                    {
                        "alias": self.ctx.directory.alias(m.company),
                        "protocol": protocol,
                        "fields": {"company": m.company.slug},
                    }
                )
        return web.json_response(out)

    async def reverse_user(self, request: web.Request) -> web.Response:
        user_id = request.rel_url.query.get("userid", "")
        target = self.ctx.directory.target_for_ghost(user_id)
        if target is None:
            return web.json_response([])
        return web.json_response(
            [
                {
                    "userid": user_id,
                    "protocol": SIP_PROTOCOL,
                    "fields": {"company": target.company.slug, "extension": target.extension or ""},
                }
            ]
        )

    async def reverse_location(self, request: web.Request) -> web.Response:
        alias = request.rel_url.query.get("alias", "")
        company = self.ctx.directory.company_for_alias(alias)
        if company is None:
            return web.json_response([])
        return web.json_response(
            [{"alias": alias, "protocol": SIP_PROTOCOL, "fields": {"company": company.slug}}]
        )
