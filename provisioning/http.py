"""Serve rendered phone files over HTTP at the paths the phones request.

These files hold SIP passwords and phones fetch them without credentials (that is
how zero-touch provisioning works on all four vendors), so bind the server to the
voice network only.  Paths and status codes are logged; bodies never are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

log = logging.getLogger(__name__)

Provider = Callable[[], Awaitable[Mapping[str, bytes]]]


def content_type(path: str, body: bytes) -> str:
    # Polycom's files end in .cfg but are XML; tell by the content as well as the name.
    if path.endswith(".xml") or body.lstrip().startswith(b"<?xml"):
        return "text/xml"
    return "text/plain"


def make_app(phones_provider: Provider) -> web.Application:
    """An app answering GET/HEAD on every path of ``phones_provider()``, 404 elsewhere."""

    async def handle(request: web.Request) -> web.Response:
        # Paths are rendered with a lowercase MAC; phones send either case
        # (Cisco's $MA vs $MAU, Polycom's uppercase on some firmware).
        path = request.path.lower()
        files = await phones_provider()
        body = files.get(path)
        if body is None:
            log.info("provisioning: %s not found", path)
            raise web.HTTPNotFound()
        log.info("provisioning: served %s", path)
        # no-store: a cache between phone and server must not keep passwords.
        return web.Response(body=body, content_type=content_type(path, body), charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


def cached(load: Provider, ttl_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> Provider:
    """Wrap ``load`` so it runs at most once per ``ttl_s``, once for all concurrent callers.

    After a site failure every phone reboots or resyncs at once; without this each
    request would re-read the whole inventory.  If a reload fails after a good one,
    the last good files keep being served (and the failure is logged): a database
    outage must not also take the phones' configuration away.
    """
    lock = asyncio.Lock()
    files: Mapping[str, bytes] | None = None
    at = 0.0

    async def get() -> Mapping[str, bytes]:
        nonlocal files, at
        async with lock:
            if files is not None and clock() - at < ttl_s:
                return files
            try:
                fresh = await load()
            except Exception:
                if files is None:
                    raise
                log.exception("provisioning: reload failed; serving the previous files")
                at = clock()  # retry after another ttl, not on every request
                return files
            files, at = fresh, clock()
            return fresh

    return get
