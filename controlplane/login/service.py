"""A running login service: the manager, its supervised loops and its HTTP site.

Loops (each a named task under the supervisor):
- ``reaper``: every ``reap_interval_s``, end sessions whose client stopped
  heartbeating (queue members removed, virtual ID released);
- ``pbx-events-<site>``: feed each site's normalized PBX events to the manager
  (phone registrations drive CTI registration) and push PBX up/down to clients;
- ``gc`` (with a ``gc`` policy, which ``ccdr login serve`` installs): the scheduled full
  garbage collection, put off while logins, moves or CTI work are in flight.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractAccessLogger
from redis.asyncio import Redis

from controlplane.login.authn import Authenticator
from controlplane.login.http import ADMISSION, DEFAULT_MAX_IN_FLIGHT, SOCKETS, broadcast, build_app, push
from controlplane.login.manager import LoginManager
from controlplane.login.ports import Directory
from controlplane.login.ratelimit import LoginRateLimiter, RateLimits
from controlplane.login.reads import KeyReads
from controlplane.login.sessions import SessionStore
from controlplane.login.verified import VERIFIED_TTL_S, VerifiedPasswords
from controlplane.pbx.base import EventKind, LinkState, PbxClient
from controlplane.runtime.clock import Clock, RealClock
from controlplane.runtime.gcpolicy import GcPolicy, full_collections
from controlplane.runtime.supervisor import Supervisor
from controlplane.settings import Topology

log = logging.getLogger(__name__)

STATUS_PATH = "/status"
LISTEN_BACKLOG = 4096
STOP_GRACE_S = 5.0  # SIGTERM: in-flight requests, then CTI work, get this long each
DEEP_SWEEP_S = 60.0  # a session waiting this long for its phone: ask the PBX for its contacts
RECONCILE_LOCK_S = 120  # a reconcile's lock outlives a holder that died by this much at most


_ACCESS = logging.getLogger("controlplane.login.access")
_ACCESS.setLevel(logging.INFO)


class _AccessLog(AbstractAccessLogger):
    """Method, path, status, seconds. Never the query string: the session channel's URL
    carries the session token there."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %d %.4f", request.remote, request.method, request.path, response.status, time)


class LoginService:
    def __init__(
        self,
        site_id: str,
        topology: Topology,
        directory: Directory,
        pbx: dict[str, PbxClient],
        redis: Redis,
        admin_token: str,
        *,
        prefix: str = "ccdr:",
        session_ttl_s: float = 30.0,
        reap_interval_s: float = 1.0,
        limits: RateLimits | None = None,
        clock: Clock | None = None,
        authenticator: Authenticator | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        gc: GcPolicy | None = None,
        verified_key: bytes | None = None,
        verified_ttl_s: float = VERIFIED_TTL_S,
    ) -> None:
        self.clock = clock or RealClock()
        self.gc = gc
        self.redis = redis
        self.pbx = pbx
        self.reap_interval_s = reap_interval_s
        self.sessions = SessionStore(redis, prefix, session_ttl_s)
        reads = KeyReads(redis)  # the rate limiter's and the verification cache's, in one MGET
        verified = VerifiedPasswords(redis, prefix, verified_key, verified_ttl_s, reads) if verified_key else None
        self.manager = LoginManager(site_id, topology, directory, self.sessions,
                                    LoginRateLimiter(redis, prefix, limits, reads), pbx, clock=self.clock,
                                    authenticator=authenticator, verified=verified)
        self.supervisor = Supervisor(topology.timings.reconnect, self.clock)
        self.app = build_app(self.manager, admin_token, max_in_flight)
        self.manager.push = self._deliver
        self.app.on_shutdown.append(self._close_channels)
        self.app.router.add_get(STATUS_PATH, self._status)
        self._runner: web.AppRunner | None = None

    async def _reaper(self) -> None:
        last_deep = self.clock.now()
        while True:
            await self.manager.reap_once()
            for site in self.pbx:
                self.manager.sweep_pending(site)
            if self.clock.now() - last_deep >= DEEP_SWEEP_S:
                # Rare and costly (PJSIPShowContacts: 2.4 s per 1,000 contacts): only for
                # sessions that waited a full DEEP_SWEEP_S for their phone.
                last_deep = self.clock.now()
                for site in self.pbx:
                    await self.manager.sweep_pending_deep(site, DEEP_SWEEP_S)
            await self.clock.sleep(self.reap_interval_s)

    def _pump(self, site: str, client: PbxClient) -> Any:
        async def loop() -> None:
            async for ev in client.events():
                await self.manager.on_event(site, ev)
                if ev.kind is EventKind.PBX_UP and site == self.manager.site.id:
                    self.manager.spawn(self._reconcile(site))
                if ev.kind in (EventKind.PBX_UP, EventKind.PBX_DOWN, EventKind.PBX_AUTH_FAILED):
                    # "refused": the PBX is gone for certain (its port refuses), not only
                    # silent; clients then confirm without waiting out a blip's hold.
                    await broadcast(self.app, {"type": "pbx", "site": site, "state": client.state.value,
                                               "refused": bool(ev.data.get("refused"))})
        return loop

    async def _reconcile(self, site: str) -> None:
        """Reconcile a site that came back, in one process at a time: with ``--workers`` every
        worker sees the PBX come up, and each would read every member of the site and try
        the same removals (a 10,000-member site: four full QueueStatus reads, three of them
        for "Not there" errors). A Redis lock held while it runs, bounded in case its holder
        dies; released after, so a later comeback is reconciled again."""
        key = f"{self.sessions.p}reconcile:{site}"
        me = f"{os.getpid()}:{id(self)}"
        try:
            if not await self.redis.set(key, me, nx=True, ex=RECONCILE_LOCK_S):
                return
            try:
                await self.manager.reconcile_site(site)
            finally:
                await self.redis.eval("if redis.call('get', KEYS[1]) == ARGV[1] then"
                                      " return redis.call('del', KEYS[1]) end return 0", 1, key, me)
        except Exception as exc:  # the next comeback, or a restart, reconciles again
            log.warning("reconcile of site %s failed: %s: %s", site, type(exc).__name__, exc)

    async def _deliver(self, sid: str, message: dict[str, Any]) -> None:
        """A push for a session's channel: here if this process holds it, else through Redis
        to whichever process of whichever site's service holds it (the login that replaced
        a session was served elsewhere; with ``--workers``, a sibling process accepted the
        channel). A channel held nowhere yet reads the state in its hello instead."""
        if self.app[SOCKETS].get(sid):
            await push(self.app, sid, message)
        else:
            await self.redis.publish(self.manager.push_channel, json.dumps({"session_id": sid, "message": message}))

    async def _relay(self) -> None:
        """Pushes published by other processes: delivered to the channels held here."""
        ps = self.redis.pubsub()
        await ps.subscribe(self.manager.push_channel)
        try:
            async for msg in ps.listen():
                if msg.get("type") != "message":
                    continue
                data = json.loads(msg["data"])
                sid = str(data.get("session_id", ""))
                if self.app[SOCKETS].get(sid) and isinstance(data.get("message"), dict):
                    await push(self.app, sid, data["message"])
        finally:
            await ps.aclose()  # type: ignore[no-untyped-call]

    async def start_loops(self) -> None:
        for site, client in self.pbx.items():
            self.supervisor.spawn(f"pbx-events-{site}", self._pump(site, client))
        self.supervisor.spawn("push-relay", self._relay)
        own = self.pbx.get(self.manager.site.id)
        if own is not None and own.state is LinkState.UP:
            # Its PBX_UP came before we listened: clean up what an earlier run left behind.
            self.manager.spawn(self._reconcile(self.manager.site.id))
        self.supervisor.spawn("reaper", self._reaper)
        if self.gc is not None:
            policy = self.gc
            self.supervisor.spawn("gc", lambda: full_collections(policy, self.clock, self.busy))

    def busy(self) -> bool:
        """Logins or moves in flight, or CTI work running: no time for a full collection."""
        return self.app[ADMISSION].in_flight > 0 or self.manager.cti_busy

    async def serve(self, host: str, port: int, reuse_port: bool = False, access_log: bool = False) -> None:
        """Listen on host:port. ``reuse_port``: several processes of one site's service share
        the port (SO_REUSEPORT; the kernel spreads connections over them)."""
        await self.start_loops()
        # The access log (method, path, status, seconds: no query string, which holds the
        # session channel's token) is off by default: a line per login in a storm is costly.
        self._runner = web.AppRunner(self.app, access_log_class=_AccessLog, shutdown_timeout=STOP_GRACE_S,
                                     access_log=_ACCESS if access_log else None)
        await self._runner.setup()
        # A mass move brings thousands of connections at once; aiohttp's default listen
        # backlog of 128 dropped the rest's SYNs, and their kernels retried after 1, 3 and
        # 7 s: 1,000 agents moving took 10 s instead of 2. (Capped by net.core.somaxconn.)
        await web.TCPSite(self._runner, host, port, backlog=LISTEN_BACKLOG, reuse_port=reuse_port or None).start()
        log.info("login service for site %s on %s:%d", self.manager.site.id, host, port)

    async def stop(self) -> None:
        """Orderly and bounded: loops stopped, channels closed (clients reconnect elsewhere),
        requests given STOP_GRACE_S, then CTI work given as long and cancelled."""
        await self.supervisor.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.manager.drain(STOP_GRACE_S)

    async def _close_channels(self, app: web.Application) -> None:
        for socks in list(app[SOCKETS].values()):
            for ws in list(socks):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"login service stopping")

    async def status(self) -> dict[str, Any]:
        """Every component's health in one document (after Wazo's /status)."""
        try:
            redis_ok = bool(await self.redis.ping())
        except Exception:  # any failure is "down"
            redis_ok = False
        pbx = {s: {"state": c.state.value} for s, c in self.pbx.items()}
        tasks = self.supervisor.status()
        healthy = redis_ok and all(t["running"] for t in tasks.values())
        return {
            "site": self.manager.site.id,
            "process": os.getpid(),  # one of several with --workers
            "healthy": healthy,
            "redis": {"state": "up" if redis_ok else "down"},
            "pbx": pbx,
            "tasks": tasks,
            "admission": {"in_flight": self.app[ADMISSION].in_flight, "limit": self.app[ADMISSION].limit,
                          "shed": self.app[ADMISSION].shed},
            "sessions": {"live": await self.sessions.count(),
                         "connected": sum(len(v) for v in self.app[SOCKETS].values())},
        }

    async def _status(self, request: web.Request) -> web.Response:
        st = await self.status()
        return web.json_response(st, status=200 if st["healthy"] else 503)
