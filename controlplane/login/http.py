"""The login service's HTTP and WebSocket surface (aiohttp). Handlers only: the
work is in :class:`controlplane.login.manager.LoginManager`.

Errors are JSON ``{"error": {"code": ..., "message": ...}}`` with a stable code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import defaultdict
from typing import Any

from aiohttp import WSMsgType, web

from controlplane.errors import LoginRefused
from controlplane.login.manager import LoginManager

log = logging.getLogger(__name__)

MANAGER: web.AppKey[LoginManager] = web.AppKey("manager")
SOCKETS: web.AppKey[defaultdict[str, set[web.WebSocketResponse]]] = web.AppKey("sockets")
ADMIN_TOKEN: web.AppKey[str] = web.AppKey("admin_token")
ADMISSION: web.AppKey[Admission] = web.AppKey("admission")
DEFAULT_MAX_IN_FLIGHT = 512  # logins and moves being served at once by one process
BUSY = "too many logins in progress here; retry in a moment"
SESSION_FILTERS = ("site", "state", "account")  # GET /v1/sessions: exact-match filters
SESSIONS_PAGE = 1000  # GET /v1/sessions: sessions per page by default ...
SESSIONS_PAGE_MAX = 10_000  # ... and at most


class Admission:
    """Load shedding for logins and moves: past ``limit`` in flight, answer 503 ``busy`` at
    once. A login queued longer than the client waits is work thrown away twice (the
    client gives up and asks again); 5,000 agents starting at once kept two services
    saturated with such retries for minutes. A quick "busy" makes the client back off."""

    def __init__(self, limit: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self.limit = limit
        self.in_flight = 0
        self.shed = 0  # requests refused as busy (tests, /status)

    def enter(self, shed: bool = True) -> bool:
        """Admit one more (the caller must :meth:`leave`), or count it shed (unless not
        ``shed``: counted in flight, never refused)."""
        if shed and self.in_flight >= self.limit:
            self.shed += 1
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


def _error(code: str, status: int, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LoginRefused("bad_request", 400, "body: not JSON") from None
    if not isinstance(body, dict):
        raise LoginRefused("bad_request", 400, "body: must be a JSON object")
    return body


@web.middleware
async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except LoginRefused as exc:
        return _error(exc.code, exc.status, str(exc))


@web.middleware
async def admission(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.method != "POST" or request.path not in ("/v1/login", "/v1/move"):
        resp: web.StreamResponse = await handler(request)
        return resp
    adm = request.app[ADMISSION]
    if not adm.enter():
        r = _error("busy", 503, BUSY)
        r.headers["Retry-After"] = "1"
        return r
    try:
        resp = await handler(request)
        return resp
    finally:
        adm.leave()


async def login(request: web.Request) -> web.Response:
    body = await _json_body(request)
    res = await request.app[MANAGER].login(
        body.get("account"), body.get("password"), body.get("mac"), request.remote or "unknown"
    )
    return web.json_response(res.payload)


async def move(request: web.Request) -> web.Response:
    """Re-home a live session here (the client's site failed): session id and token, no password."""
    body = await _json_body(request)
    res = await request.app[MANAGER].move(body.get("session_id"), body.get("token"))
    return web.json_response(res.payload)


async def _move_in_channel(request: web.Request, sid: str, token: str, data: dict[str, Any]) -> dict[str, Any]:
    """``{"type": "move", "away_from": SITE}`` over the session channel: the move of
    ``POST /v1/move`` without a request and a new channel. When only a site's PBX dies, its
    login service still holds its agents' channels: in a 1,000-agent move, each agent's
    request and channel open at the survivor were most of both sides' work. The answer is
    ``{"type": "moved", "session": <the move reply>}`` or ``{"type": "move_refused",
    "code", "message"}`` (the client then moves by ``POST /v1/move`` elsewhere)."""
    away = data.get("away_from")
    if not isinstance(away, str) or not away:
        return {"type": "move_refused", "code": "bad_request", "message": "away_from: required, a site id"}
    adm = request.app[ADMISSION]
    # Counted, never shed: refused, the client would move by a request and a new channel
    # at another service, more work for a machine already saturated (5,000 agents: half the
    # moves were refused busy, then retried and backed off, and the last took 19 s). Its
    # session is held here already; waiting here is the cheapest place to wait.
    adm.enter(shed=False)
    try:
        res = await request.app[MANAGER].move(sid, token, away_from=away)
    except LoginRefused as exc:
        return {"type": "move_refused", "code": exc.code, "message": str(exc)}
    finally:
        adm.leave()
    return {"type": "moved", "session": res.payload}


async def _authorized_session(request: web.Request, sid: Any, token: Any) -> str:
    if not isinstance(sid, str) or not isinstance(token, str):
        raise LoginRefused("bad_request", 400, "session_id and token: required strings")
    if not await request.app[MANAGER].check_token(sid, token):
        raise LoginRefused("bad_session", 401, "unknown session or wrong token")
    return sid


async def logout(request: web.Request) -> web.Response:
    body = await _json_body(request)
    sid = await _authorized_session(request, body.get("session_id"), body.get("token"))
    await request.app[MANAGER].logout(sid)
    return web.json_response({"ok": True})


def _sessions_query(query: Any) -> tuple[dict[str, str], int, str]:
    """``GET /v1/sessions``'s filters (exact matches), page size and cursor, checked: a bad
    one is a 400 that names it."""
    unknown = sorted(set(query) - {*SESSION_FILTERS, "limit", "after"})
    if unknown:
        raise LoginRefused("bad_request", 400, f"{unknown[0]}: unknown parameter (filters: "
                                               f"{', '.join(SESSION_FILTERS)}; paging: limit, after)")
    raw = query.get("limit", str(SESSIONS_PAGE))
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= SESSIONS_PAGE_MAX:
        raise LoginRefused("bad_request", 400, f"limit: an integer 1..{SESSIONS_PAGE_MAX}, got {raw[:20]!r}")
    return {k: query[k] for k in SESSION_FILTERS if k in query}, limit, query.get("after", "")


async def sessions(request: web.Request) -> web.Response:
    """The live sessions (admin token), ordered by session ID, ``limit`` a page (default
    1,000) after the cursor ``after``; ``site``, ``state``, ``account`` filter. ``total``
    counts every match, ``next`` is the cursor of the next page (null on the last): 10,000
    sessions in one answer were 2 MB of JSON, for an operator asking what is at site b."""
    want = request.app[ADMIN_TOKEN]
    got = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if not want or not secrets.compare_digest(got, want):
        raise LoginRefused("unauthorized", 401, "admin token required")
    filters, limit, after = _sessions_query(request.query)
    live = sorted((s for s in await request.app[MANAGER].sessions.all()
                   if all(str(getattr(s, k)) == v for k, v in filters.items())), key=lambda s: s.id)
    page = [s for s in live if s.id > after][:limit + 1]
    more = len(page) > limit
    page = page[:limit]
    return web.json_response({"sessions": [
        {"session_id": s.id, "account": s.account, "site": s.site, "extension": s.extension,
         "virtual_agent_id": s.vaid, "queues": [q for q, _ in s.queues], "state": s.state}
        for s in page
    ], "total": len(live), "next": page[-1].id if more else None})


async def session_ws(request: web.Request) -> web.StreamResponse:
    token = request.query.get("token", "")
    sid = await _authorized_session(request, request.match_info["sid"], token)
    mgr = request.app[MANAGER]
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    # Registered before the session's state is read for the hello: a CTI registration that
    # completes in between is then either in the state read or pushed to this socket.
    request.app[SOCKETS][sid].add(ws)
    hb = max(1.0, mgr.sessions.ttl_s / 3)

    async def pinger() -> None:
        while not ws.closed:
            await ws.send_json({"type": "heartbeat"})
            await asyncio.sleep(hb)

    pbx = {site: c.state.value for site, c in mgr.pbx.items()}
    s = await mgr.sessions.get(sid)
    try:
        await ws.send_json({"type": "hello", "session_id": sid, "pbx": pbx, "cti": s.state if s else "ended"})
    except ConnectionError:  # the client gave up while we read its state (a busy service)
        request.app[SOCKETS][sid].discard(ws)
        return ws
    ping_task = asyncio.create_task(pinger(), name=f"ws-ping-{sid}")
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
            except json.JSONDecodeError:
                await ws.send_json({"type": "error", "code": "bad_request", "message": "not JSON"})
                continue
            if not isinstance(data, dict):
                await ws.send_json({"type": "error", "code": "bad_request", "message": "not a JSON object"})
                continue
            kind = data.get("type")
            if kind == "heartbeat":
                if not await mgr.heartbeat(sid):
                    await ws.send_json({"type": "session", "state": "ended", "why": "expired"})
                    break
            elif kind == "move":
                await ws.send_json(await _move_in_channel(request, sid, token, data))
    finally:
        ping_task.cancel()
        request.app[SOCKETS][sid].discard(ws)
    return ws


async def push(app: web.Application, sid: str, message: dict[str, Any]) -> None:
    for ws in list(app[SOCKETS].get(sid, ())):
        try:
            await ws.send_json(message)
        except ConnectionError:
            pass


async def broadcast(app: web.Application, message: dict[str, Any]) -> None:
    """The same message to every channel, serialized once: a site's "PBX down" to 5,000
    channels of one process, serialized per channel, took most of a second while
    every other task of that process waited."""
    text = json.dumps(message)
    for sockets in list(app[SOCKETS].values()):
        for ws in list(sockets):
            try:
                await ws.send_str(text)
            except ConnectionError:
                pass


def build_app(manager: LoginManager, admin_token: str, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> web.Application:
    app = web.Application(middlewares=[errors_as_json, admission])
    app[ADMISSION] = Admission(max_in_flight)
    app[MANAGER] = manager
    sockets: defaultdict[str, set[web.WebSocketResponse]] = defaultdict(set)
    app[SOCKETS] = sockets
    app[ADMIN_TOKEN] = admin_token

    async def _push(sid: str, msg: dict[str, Any]) -> None:
        await push(app, sid, msg)

    manager.push = _push
    app.add_routes([
        web.post("/v1/login", login),
        web.post("/v1/move", move),
        web.post("/v1/logout", logout),
        web.get("/v1/sessions", sessions),
        web.get("/v1/session/{sid}/ws", session_ws),
    ])
    return app
