"""Provisioning API on the appservice's web server: `/_matrix/provision/v1/...`.

Guarded by `appservice.provisioning_secret` (Bearer token, compared in constant time); off
when no secret is set. Errors are JSON with an `errcode`. Routes: companies and their
extensions (read all; create, update and delete those linked at run time, see
:mod:`bridge.companies`), PBX link status, active calls, and call records (filterable, CSV
export).
"""

from __future__ import annotations

import csv
import io
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..companies import CompanyError, redacted
from ..matrix.auth import tokens_equal
from .errors import ApiError, Handler

if TYPE_CHECKING:
    from ..context import BridgeContext

PREFIX = "/_matrix/provision/v1"
RECORD_FIELDS = ("id", "direction", "matrix_user", "room_id", "company", "extension",
                 "matrix_call_id", "sip_call_id", "worker", "invited_at", "answered_at",
                 "ended_at", "outcome", "sip_status", "hangup_reason")


def _iso(ms: int | None) -> str:
    if ms is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


class Provisioning:
    def __init__(self, ctx: BridgeContext, secret: str) -> None:
        self.ctx = ctx
        self.secret = secret

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get(PREFIX + "/companies", self.companies)
        r.add_get(PREFIX + "/companies/{slug}", self.company)
        r.add_post(PREFIX + "/companies", self.create_company)
        r.add_patch(PREFIX + "/companies/{slug}", self.update_company)
        r.add_delete(PREFIX + "/companies/{slug}", self.delete_company)
        r.add_put(PREFIX + "/companies/{slug}/extensions/{number}", self.put_extension)
        r.add_delete(PREFIX + "/companies/{slug}/extensions/{number}", self.delete_extension)
        r.add_get(PREFIX + "/links", self.links)
        r.add_get(PREFIX + "/calls", self.active_calls)
        r.add_get(PREFIX + "/call-records", self.call_records)
        app.middlewares.append(self.auth)

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(PREFIX + "/"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header or scheme.lower() != "bearer":
            raise ApiError(401, "M_UNAUTHORIZED", "missing provisioning secret")
        if not tokens_equal(token.strip(), self.secret):
            raise ApiError(403, "M_FORBIDDEN", "wrong provisioning secret")
        return await handler(request)

    def _company_json(self, slug: str) -> dict[str, Any]:
        d = self.ctx.directory
        c = d.companies[slug]
        out: dict[str, Any] = {
            "slug": c.slug, "name": c.name, "description": c.description,
            "main_line": c.main_line, "mxid": d.ghost_mxid(c), "alias": d.alias(c),
            "source": self.ctx.companies.source(slug),
            "extensions": [{"number": e.number, "name": e.name, "public": e.public,
                            "mxid": d.ghost_mxid(c, e.number)} for e in c.extensions],
            "dial_out": list(c.dial_out),
            "pbx_mode": self.ctx.config.companies[slug].pbx.mode,
        }
        if out["source"] == "database":
            # what was given, as the config file's keys (secrets shown as ***)
            out["settings"] = redacted(self.ctx.companies.stored[slug])
        return out

    async def companies(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"companies": [self._company_json(s) for s in sorted(self.ctx.directory.companies)]})

    async def company(self, request: web.Request) -> web.Response:
        slug = request.match_info["slug"]
        if slug not in self.ctx.directory.companies:
            raise ApiError(404, "M_NOT_FOUND", f"no company {slug!r}")
        return web.json_response(self._company_json(slug))

    # ------------------------------------------------------------ changes
    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "M_NOT_JSON", "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "M_BAD_JSON", "the body must be a JSON object")
        return body

    async def _change(self, coro: Any) -> Any:
        try:
            return await coro
        except CompanyError as e:
            raise ApiError(e.status, e.errcode, str(e)) from None

    async def create_company(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        slug = body.pop("slug", None)
        if not isinstance(slug, str):
            raise ApiError(400, "M_BAD_JSON", "slug (a string) is required")
        await self._change(self.ctx.companies.create(slug, body, "provisioning API"))
        return web.json_response(self._company_json(slug), status=201)

    async def update_company(self, request: web.Request) -> web.Response:
        slug = request.match_info["slug"]
        body = await self._body(request)
        await self._change(self.ctx.companies.update(slug, body, "provisioning API"))
        return web.json_response(self._company_json(slug))

    async def delete_company(self, request: web.Request) -> web.Response:
        slug = request.match_info["slug"]
        await self._change(self.ctx.companies.delete(slug, "provisioning API"))
        return web.json_response({})

    async def put_extension(self, request: web.Request) -> web.Response:
        slug, number = request.match_info["slug"], request.match_info["number"]
        body = await self._body(request)
        name, public = body.get("name"), body.get("public", False)
        if not isinstance(name, str) or not isinstance(public, bool):
            raise ApiError(400, "M_BAD_JSON", "name (a string) and public (true/false)")
        await self._change(self.ctx.companies.set_extension(slug, number, name, public,
                                                            "provisioning API"))
        return web.json_response(self._company_json(slug))

    async def delete_extension(self, request: web.Request) -> web.Response:
        slug, number = request.match_info["slug"], request.match_info["number"]
        await self._change(self.ctx.companies.remove_extension(slug, number,
                                                               "provisioning API"))
        return web.json_response(self._company_json(slug))

    async def links(self, _: web.Request) -> web.Response:
        pool = self.ctx.pool
        states = pool.link_states() if pool is not None else {}
        out = []
        for slug, cfg in sorted(self.ctx.config.companies.items()):
            st = states.get(slug)
            out.append({"company": slug, "mode": cfg.pbx.mode,
                        "state": "trunk" if cfg.pbx.mode == "trunk" else
                        (st.state if st else "unknown"),
                        "status": st.status if st else 0, "reason": st.reason if st else "",
                        "retry_in_s": st.retry_in_s if st else 0})
        workers = [{"index": w.index, "pid": w.pid, "alive": w.alive, "calls": w.calls,
                    "max_calls": w.max_calls, "restarts": w.restarts}
                   for w in (pool.workers() if pool is not None else [])]
        return web.json_response({"links": out, "workers": workers})

    async def active_calls(self, _: web.Request) -> web.Response:
        calls = [c for c in (self.ctx.calls.calls.values() if self.ctx.calls else [])
                 if not c.ended]
        return web.json_response({"calls": [{
            "matrix_call_id": c.matrix_call_id, "direction": c.direction,
            "matrix_user": c.user_id, "room_id": c.room_id,
            "company": c.target.company.slug, "extension": c.target.number,
            "state": "connected" if c.answered else "ringing",
            "sip_call_id": c.sip.sip_call_id if c.sip is not None else None,
        } for c in calls]})

    async def call_records(self, request: web.Request) -> web.StreamResponse:
        q = request.rel_url.query
        where: list[str] = []
        args: list[Any] = []
        for key, column in (("user", "matrix_user"), ("company", "company"),
                            ("outcome", "outcome"), ("direction", "direction")):
            if key in q:
                args.append(q[key])
                where.append(f"{column}=${len(args)}")
        for key, op in (("since", ">="), ("until", "<")):
            if key in q:
                try:
                    args.append(int(q[key]))
                except ValueError:
                    raise ApiError(400, "M_INVALID_PARAM",
                                   f"{key} must be milliseconds since the epoch") from None
                where.append(f"invited_at {op} ${len(args)}")
        try:
            limit = min(10000, max(1, int(q.get("limit", "1000"))))
        except ValueError:
            raise ApiError(400, "M_INVALID_PARAM", "limit must be a number") from None
        sql = "SELECT * FROM call_record"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY invited_at DESC LIMIT {limit}"
        rows = [dict(r) for r in await self.ctx.db.fetch(sql, *args)]
        if q.get("format") == "csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(RECORD_FIELDS)
            for r in rows:
                w.writerow([_iso(r[f]) if f.endswith("_at") else
                            ("" if r[f] is None else r[f]) for f in RECORD_FIELDS])
            return web.Response(text=buf.getvalue(), content_type="text/csv",
                                headers={"Content-Disposition":
                                         'attachment; filename="call-records.csv"'})
        return web.json_response({"records": rows})
