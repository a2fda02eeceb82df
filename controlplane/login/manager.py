"""The login manager: login, CTI registration, logout, reaping. No HTTP here.

A login is a sequence of actions; any failure after the first write undoes
what was done (virtual ID released, session removed), so a login that fails
half-way leaves nothing behind.

CTI registration follows the phone: queue members are added only after the
phone's registration is seen at the chosen site, which keeps a mass login fast
on Asterisk (shared notes: "Adding a member AFTER its phone has registered is
cheap"), then read back before the client hears "cti_registered".
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from controlplane.errors import LinkLost, LoginRefused, PbxCommandError, PbxError, PbxUnreachable
from controlplane.login.authn import Authenticator
from controlplane.login.decide import decide_site
from controlplane.login.ports import AgentRecord, Directory, Line
from controlplane.login.ratelimit import LoginRateLimiter
from controlplane.login.readback import ReadBack
from controlplane.login.sessions import LiveSession, SessionStore
from controlplane.login.verified import VerifiedPasswords
from controlplane.login.wave import MoveWave
from controlplane.names import normalize_mac
from controlplane.pbx.base import EventKind, LinkState, PbxClient, PbxEvent
from controlplane.runtime.clock import Clock, RealClock
from controlplane.settings import Site, Topology

log = logging.getLogger(__name__)

ACCOUNT_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
CTI_RETRIES = 3  # a CTI registration failing on something other than the PBX is retried this often
MEMBER_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}/[0-9]+$")  # account/vaid: the members ccdr adds
# The login service's password profile: OWASP's minimum for argon2id (19 MiB, t=2, p=1),
# ~20 ms a hash here. argon2-cffi's default (64 MiB, t=3, p=4) costs ~110 ms on 2 cores,
# which caps a login storm at ~18 logins/s. Hashes made otherwise are upgraded on login.
LOGIN_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
REHASH_INTERVAL_S = 0.2  # at most 5 upgrades a second per service: ~10 % of one core
# ... and none while more logins than this are in progress in the process: in a 5,000-agent
# login with four workers, trickled upgrades still took a third of the machine's CPU.
REHASH_BUSY_LOGINS = 2
# A dummy hash so an unknown account costs the same time as a wrong password.
_DUMMY_HASH = LOGIN_HASHER.hash("not-a-real-password")

Push = Callable[[str, dict[str, Any]], Awaitable[None]]  # (session id, message)


async def _add_member(pbx: PbxClient, queue: str, iface: str, name: str, penalty: int) -> None:
    """QueueAdd that accepts "already there": a retried CTI registration (after a link
    drop) finds the members its first attempt added; the read-back checks the result."""
    try:
        await pbx.queue_add(queue, iface, name=name, penalty=penalty)
    except PbxCommandError as exc:
        if "already there" not in str(exc).lower():
            raise


async def _remove_members(pbx: PbxClient, queues: list[str], iface: str) -> None:
    """QueueRemove from each queue; "not a member" (a CTI registration that never
    completed there) is fine."""
    for q in queues:
        try:
            await pbx.queue_remove(q, iface)
        except PbxError as exc:
            log.debug("queue_remove %s %s: %s", q, iface, exc)


@dataclass
class LoginResult:
    session: LiveSession
    token: str
    payload: dict[str, Any]


@dataclass
class _Pending:
    by_ext: dict[str, str] = field(default_factory=dict)  # extension -> session id
    since: dict[str, float] = field(default_factory=dict)  # extension -> when it started waiting

    def wait(self, extension: str, sid: str, now: float, *, keep: bool = False) -> None:
        """``sid`` waits for its phone on ``extension``; ``keep``: unless another already does."""
        if keep:
            self.by_ext.setdefault(extension, sid)
            self.since.setdefault(extension, now)
        else:
            self.by_ext[extension] = sid
            self.since[extension] = now

    def forget(self, extension: str, sid: str) -> None:
        """Drop ``sid``'s wait, not the wait of a session that replaced it on that phone."""
        if self.by_ext.get(extension) == sid:
            self.by_ext.pop(extension, None)
            self.since.pop(extension, None)


class LoginManager:
    def __init__(
        self,
        site_id: str,
        topology: Topology,
        directory: Directory,
        sessions: SessionStore,
        limiter: LoginRateLimiter,
        pbx: dict[str, PbxClient],
        push: Push | None = None,
        clock: Clock | None = None,
        hasher: PasswordHasher | None = None,
        authenticator: Authenticator | None = None,
        verified: VerifiedPasswords | None = None,
    ) -> None:
        self.site = topology.site(site_id)
        self.topology = topology
        self.directory = directory
        self.sessions = sessions
        self.limiter = limiter
        self.pbx = pbx
        self.push = push
        self.clock = clock or RealClock()
        self.hasher = hasher or LOGIN_HASHER
        self.authenticator = authenticator
        self.verified = verified  # recently verified passwords (login/verified.py), or None
        self._rehashing: set[str] = set()
        self._logins_now = 0  # logins in progress in this process
        self._next_rehash = float("-inf")
        self._rehash_slot = asyncio.Semaphore(1)
        self.pending: dict[str, _Pending] = defaultdict(_Pending)
        self.registered: dict[str, set[str]] = defaultdict(set)  # site -> registered endpoints
        self._cti_tasks: set[asyncio.Future[object]] = set()
        self._readback: dict[str, ReadBack] = {}
        self._in_flight: dict[tuple[str, str], str] = {}  # (site, extension) -> session id
        self.waves: dict[str, MoveWave] = {}  # site -> moved agents awaited there (login/wave.py)

    # --- login ---------------------------------------------------------------

    def _pbx_up(self) -> dict[str, bool]:
        return {s.id: (c := self.pbx.get(s.id)) is not None and c.state is LinkState.UP
                for s in self.topology.sites}

    async def login(self, account: Any, password: Any, mac: Any, source: str) -> LoginResult:
        self._logins_now += 1
        try:
            return await self._login(account, password, mac, source)
        finally:
            self._logins_now -= 1

    async def _login(self, account: Any, password: Any, mac: Any, source: str) -> LoginResult:
        for name, value in (("account", account), ("password", password), ("mac", mac)):
            if not isinstance(value, str) or not value:
                raise LoginRefused("bad_request", 400, f"{name}: required, a non-empty string")
        if not ACCOUNT_RE.match(account):
            raise LoginRefused("bad_request", 400, "account: letters, digits, . _ @ - only")
        norm_mac = normalize_mac(mac)
        if norm_mac is None:
            raise LoginRefused("bad_request", 400, f"mac: not a MAC address: {mac[:40]!r}")
        if self.verified is None:
            blocked, entry = await self.limiter.blocked(account, source), None
        else:
            # Asked together, the two reads share one MGET (login/reads.py).
            blocked, entry = await asyncio.gather(self.limiter.blocked(account, source),
                                                  self.verified.fetch(account))
        if blocked:
            raise LoginRefused("rate_limited", 429, "too many failed logins; try again later")
        view = await self.directory.login_view(account, norm_mac)
        rec = view.agent if view is not None else None
        if not await self._check_password(rec, password, entry) or view is None or rec is None:
            await self.limiter.failed(account, source)
            raise LoginRefused("bad_credentials", 401, "wrong account or password")

        decision = decide_site(rec.profile, self.site.id, [s.id for s in self.topology.sites],
                               self._pbx_up(), await self.directory.rules())
        if decision.site is None:
            raise LoginRefused("pbx_unreachable", 503, "no site's PBX is reachable")
        target = self.topology.site(decision.site)
        lines = view.lines  # every site's: the client's backup lines
        line = lines.get(target.id)
        if line is None:
            raise LoginRefused("unknown_mac", 404, f"mac: {norm_mac} has no line at site {target.id}")
        queue_names = view.queues_at(target.id)
        penalties = dict(rec.skill_penalties)
        queues = sorted((q, penalties[g]) for g, q in queue_names.items())

        sid = secrets.token_urlsafe(12)
        token = secrets.token_urlsafe(24)
        vaid = await self.directory.open_session(sid, account, target.id, norm_mac, line.extension, decision.reason)
        if vaid is None:
            raise LoginRefused("pool_exhausted", 503, "no free virtual agent ID")
        session = LiveSession(id=sid, account=account, site=target.id, extension=line.extension,
                              vaid=vaid, mac=norm_mac, queues=queues, created_at=self.clock.now())
        try:
            replaced = await self.sessions.put(session, self.clock.now(), token)
        except BaseException:
            # Nothing half-done stays: the ID goes back, the history says the session failed,
            # and whatever of it reached Redis is removed.
            await self.directory.release_vaid(sid)
            await self.directory.session_ended(sid, "failed")
            await self.sessions.claim(sid)
            await self.sessions.drop_token(sid)
            raise
        if replaced:
            self.spawn(self._end(replaced, "replaced"))
        self.pending[target.id].wait(line.extension, sid, self.clock.now())
        if line.extension in self.registered[target.id]:
            self.spawn(self._cti_register(target.id, line.extension))
        log.info("login %s at %s (%s) vaid %d ext %s", account, target.id, decision.reason, vaid, line.extension)
        payload = self._payload(session, token, target, line, decision.reason)
        # The device's lines at the other sites (a dual-line phone's backup lines): a client
        # whose site fails can register there while its move is being answered.
        payload["other_lines"] = [self._line_info(s, lines[s.id]) for s in self.topology.other_sites(target.id)
                                  if s.id in lines]
        return LoginResult(session, token, payload)

    @staticmethod
    def _line_info(site: Site, line: Line) -> dict[str, Any]:
        """A line as the client registers it: the login reply's own and its other_lines."""
        return {"site": site.id, "extension": line.extension,
                "registrar": {"host": site.sip.host, "port": site.sip.port, "transport": site.sip.transport},
                "sip": {"username": line.sip_username, "password": line.sip_password}}

    def _payload(self, session: LiveSession, token: str, target: Site, line: Line, reason: str) -> dict[str, Any]:
        """What the client needs to work at ``target``: the login and the move reply."""
        return {
            "session_id": session.id,
            "token": token,
            **self._line_info(target, line),  # site, registrar, extension, SIP credentials
            "reason": reason,
            "virtual_agent_id": session.vaid,
            "queues": [q for q, _ in session.queues],
            "timings": {
                "heartbeat_s": max(1.0, self.sessions.ttl_s / 3),
                "session_ttl_s": self.sessions.ttl_s,
                "probe_interval_s": self.topology.timings.probe_interval_s,
                "probe_timeout_s": self.topology.timings.probe_timeout_s,
                "confirm_window_s": self.topology.timings.confirm_window_s,
            },
            "other_login_urls": [s.login_url for s in self.topology.other_sites(self.site.id)],
        }

    # --- move ------------------------------------------------------------------

    async def move(self, sid: Any, token: Any, away_from: str | None = None) -> LoginResult:
        """Re-home a live session: the client's answer to a failed site. The session keeps
        its id, token and virtual agent ID; no password (a mass move of 10,000 agents would
        otherwise cost 10,000 argon2 verifications at the survivor), no allocation, no
        replaced session to end. Planned-switch rules are not consulted.

        Without ``away_from`` (``POST /v1/move``, asked of a service at the surviving site)
        the session moves to this service's site, if its PBX is up. With it (asked over the
        session channel, which may be held by the failed site's own service, still alive
        when only its PBX died) it moves to the first other site whose PBX is up, this
        service's site first; a session already away from that site stays where it is."""
        for name, value in (("session_id", sid), ("token", token)):
            if not isinstance(value, str) or not value or len(value) > 128:
                raise LoginRefused("bad_request", 400, f"{name}: required, a non-empty string")
        # Not rate-limited: a token is 192 random bits (nothing to guess), and a session that
        # expired during an outage is a normal bad_session; counting those per source would
        # lock a whole floor behind one NAT address out of its fallback logins.
        old, stored = await self.sessions.with_token(sid)
        if old is None or stored is None or not secrets.compare_digest(stored, token):
            # The client falls back to a full login (its session ended meanwhile, or never was).
            raise LoginRefused("bad_session", 401, "no such live session, or a wrong token")
        target = self.site if away_from is None else self._away(old.site, away_from)
        if self._pbx_up().get(target.id) is not True:
            raise LoginRefused("pbx_unreachable", 503, f"the PBX of site {target.id} is not reachable")
        found = await self.directory.move_target(old.account, old.mac, target.id)
        if found is None:
            raise LoginRefused("unknown_mac", 404, f"mac: {old.mac} has no line at site {target.id}")
        line, queues = found
        if old.site == target.id:
            # Already here (a retried move, or a client that lost only its channel). A
            # client asks again when its CTI registration here failed (the service's
            # "failed" push): it is tried again, or the client would wait for one forever.
            if old.state != "cti_registered" and (target.id, line.extension) not in self._in_flight:
                self._expect_cti(target.id, line.extension, sid)
            return LoginResult(old, token, self._payload(old, token, target, line, "move"))
        new = LiveSession(id=old.id, account=old.account, site=target.id, extension=line.extension,
                          vaid=old.vaid, mac=old.mac, queues=queues, created_at=old.created_at)
        if not await self.sessions.move(new, self.clock.now()):
            raise LoginRefused("bad_session", 401, "the session ended while moving")
        # Forget the old site's CTI work for this session in this service (the old site's
        # own service guards with the session's site when it gets there).
        self.pending[old.site].forget(old.extension, sid)
        self._forget_wave(old.site, old.extension)
        self._expect_cti(target.id, line.extension, sid)
        self.spawn(self._left(old, target.id, line.extension))
        log.info("moved %s from %s to %s vaid %d ext %s", old.account, old.site, target.id, old.vaid, line.extension)
        return LoginResult(new, token, self._payload(new, token, target, line, "move"))

    def _expect_cti(self, site: str, extension: str, sid: str) -> None:
        """A moved session's CTI registration at ``site``: at once if its phone is registered
        there, else when it is (a mass move's adds wait for the wave, login/wave.py)."""
        self.pending[site].wait(extension, sid, self.clock.now())
        if extension in self.registered[site]:
            self.spawn(self._cti_register(site, extension))
        else:
            self._wave(site).expect(extension)

    def _wave(self, site: str) -> MoveWave:
        w = self.waves.get(site)
        if w is None:
            w = self.waves[site] = MoveWave(site, self.topology.timings.move_wave, self.clock)
        return w

    def _forget_wave(self, site: str, extension: str) -> None:
        w = self.waves.get(site)
        if w is not None:
            w.forget(extension)

    def _away(self, current: str, away_from: str) -> Site:
        """Where a session fleeing ``away_from`` goes: nowhere if it is already elsewhere (a
        retried move), else the first other site whose PBX is up, this service's first."""
        if current != away_from:
            return self.topology.site(current)
        up = self._pbx_up()
        for s in (self.site, *self.topology.other_sites(self.site.id)):
            if s.id != away_from and up.get(s.id):
                return s
        raise LoginRefused("pbx_unreachable", 503, f"no site but {away_from} has a reachable PBX")

    async def _left(self, old: LiveSession, site: str, extension: str) -> None:
        """After a move to ``site``: the history row, and the old site's members where its PBX
        answers (a dead PBX's members are removed by reconcile_site when it comes back)."""
        try:
            await self.directory.session_moved(old.id, old.site, site, extension)
        except Exception as exc:  # history only: the live session is already moved
            log.warning("history of the move of %s: %s", old.account, type(exc).__name__)
        pbx = self.pbx.get(old.site)
        if pbx is not None and pbx.state is LinkState.UP:
            await _remove_members(pbx, [q for q, _ in old.queues], f"PJSIP/{old.extension}")

    async def _check_password(self, rec: AgentRecord | None, password: str, entry: bytes | None = None) -> bool:
        """``entry``: the account's verification cache entry, read beside the rate limits."""
        if rec is not None and rec.password_hash == "":
            # No hash in the inventory: the external authenticator decides.
            if self.authenticator is None:
                log.warning("agent %s has no password hash and no external authenticator is set",
                            rec.profile.account)
                return False
            return await self.authenticator.authenticate(rec.profile.account, password)
        # Verified within the cache's lifetime against this very hash: no argon2 (20 ms of CPU).
        # Only for hashes of the login profile: an import-profile hash is cheap to verify and
        # about to be upgraded (a new hash, which the entry would no longer match).
        cache = None
        if rec is not None and self.verified is not None and not self.hasher.check_needs_rehash(rec.password_hash):
            cache = self.verified
        if rec is None or cache is None or not cache.matches(entry, rec.profile.account, rec.password_hash, password):
            if not await self._verify(rec.password_hash if rec else _DUMMY_HASH, password) or rec is None:
                return False
            if cache is not None:
                await cache.remember(rec.profile.account, rec.password_hash, password)
        now = self.clock.now()
        if (self.hasher.check_needs_rehash(rec.password_hash) and now >= self._next_rehash
                and self._logins_now <= REHASH_BUSY_LOGINS and rec.profile.account not in self._rehashing):
            # Imported with the light import profile (or older parameters): upgrade the hash
            # now that we hold the password, off the login's path and trickled (at most one
            # per REHASH_INTERVAL_S): 10,000 strong hashes at once would take 200 CPU-seconds
            # from a login storm right after an import. Skipped logins upgrade next time.
            self._next_rehash = now + REHASH_INTERVAL_S
            self._rehashing.add(rec.profile.account)
            self.spawn(self._rehash(rec, password))
        return True

    async def _rehash(self, rec: AgentRecord, password: str) -> None:
        try:
            async with self._rehash_slot:
                new = await asyncio.to_thread(self.hasher.hash, password)
                await self.directory.set_password_hash(rec.profile.account, rec.password_hash, new)
        except Exception as exc:  # the login itself succeeded; the next one retries
            log.warning("rehash of %s failed: %s", rec.profile.account, type(exc).__name__)
        finally:
            self._rehashing.discard(rec.profile.account)

    async def _verify(self, hashed: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self.hasher.verify(hashed, password)
            except (VerificationError, InvalidHashError):
                return False

        # argon2 is deliberately slow and releases the GIL: keep it off the event loop.
        return await asyncio.to_thread(check)

    async def check_token(self, sid: str, token: str) -> bool:
        return await self.sessions.check_token(sid, token)

    # --- CTI registration ------------------------------------------------------

    @property
    def cti_busy(self) -> bool:
        return bool(self._cti_tasks)

    def spawn(self, coro: Awaitable[object]) -> None:
        t = asyncio.ensure_future(coro)
        self._cti_tasks.add(t)
        t.add_done_callback(self._cti_tasks.discard)

    async def on_event(self, site: str, ev: PbxEvent) -> None:
        """Feed every normalized event of ``site``'s PBX here."""
        ep = str(ev.data.get("endpoint", ""))
        if ev.kind is EventKind.PHONE_REGISTERED and ep:
            self.registered[site].add(ep)
            if (w := self.waves.get(site)) is not None:
                w.registered(ep)
            if ep in self.pending[site].by_ext:
                self.spawn(self._cti_register(site, ep))
        elif ev.kind is EventKind.PHONE_UNREGISTERED and ep:
            self.registered[site].discard(ep)
        elif ev.kind is EventKind.PBX_UP:
            self.sweep_pending(site)

    def sweep_pending(self, site: str) -> int:
        """Start CTI registration for sessions still waiting whose phone is registered by
        what this service or its PBX client knows (an event lost in a reconnect, or a
        registration that came before the login). Cheap: no PBX round trip."""
        pbx = self.pbx.get(site)
        if pbx is None or pbx.state is not LinkState.UP:
            return 0
        known = self.registered[site] | pbx.known_contacts()
        ready = [e for e in self.pending[site].by_ext if e in known and (site, e) not in self._in_flight]
        wave = self.waves.get(site)
        for ext in ready:
            if wave is not None:
                wave.registered(ext)  # an event this service missed: the wave must not wait for it
            self.spawn(self._cti_register(site, ext))
        return len(ready)

    async def sweep_pending_deep(self, site: str, older_than_s: float) -> int:
        """The last resort for a registration event that never arrived: ask the PBX for
        its contacts when some session has waited longer than ``older_than_s``."""
        pbx = self.pbx.get(site)
        p = self.pending[site]
        now = self.clock.now()
        if pbx is None or pbx.state is not LinkState.UP or not any(
                now - p.since.get(e, now) > older_than_s for e in p.by_ext):
            return 0
        self.registered[site] |= {c.endpoint for c in await pbx.contacts()}
        return self.sweep_pending(site)

    async def _cti_register(self, site: str, extension: str, attempt: int = 0) -> None:
        try:
            await self._cti_register_once(site, extension)
        except Exception as exc:  # a store failing under load: retry, a few times, never crash silently
            sid = self._in_flight.pop((site, extension), None)
            if sid is None or attempt >= CTI_RETRIES:
                log.warning("CTI registration at %s of extension %s failed: %s: %s", site, extension,
                            type(exc).__name__, exc)
                if sid is not None:
                    await self._cti_failed(sid, site, type(exc).__name__)
                return
            log.info("CTI registration at %s of %s: %s; retrying", site, extension, type(exc).__name__)
            self.pending[site].wait(extension, sid, self.clock.now(), keep=True)
            await asyncio.sleep(0.5 * (attempt + 1))
            await self._cti_register(site, extension, attempt + 1)
        finally:
            self._in_flight.pop((site, extension), None)

    async def _cti_register_once(self, site: str, extension: str) -> None:
        self.pending[site].since.pop(extension, None)
        sid = self.pending[site].by_ext.pop(extension, None)
        if sid is None:
            return
        self._in_flight[(site, extension)] = sid
        if (wave := self.waves.get(site)) is not None:
            await wave.passage()  # a mass move's registrations first (login/wave.py)
        s = await self.sessions.get(sid)
        if s is None or s.site != site:  # ended, or moved to another site meanwhile
            return
        pbx = self.pbx[site]
        iface = f"PJSIP/{extension}"
        try:
            await asyncio.gather(*(_add_member(pbx, q, iface, f"{s.account}/{s.vaid}", p) for q, p in s.queues))
            readback = self._readback.setdefault(site, ReadBack(pbx))
            present = await asyncio.gather(*(readback.has(q, iface) for q, _ in s.queues))
            missing = [q for (q, _), ok in zip(s.queues, present, strict=True) if not ok]
            if missing:
                raise PbxError(f"queue read-back: {iface} missing from {', '.join(missing)}")
        except (PbxUnreachable, LinkLost) as exc:
            if pbx.state is LinkState.UP:  # a slow command on a live link: a real failure
                log.warning("CTI registration of %s at %s failed: %s", s.account, site, exc)
                await self._cti_failed(sid, site, str(exc))
                return
            # The link dropped mid-way (a PBX restarting, an overloaded one): the session
            # waits again and is retried when the link is back up (on_event, PBX_UP).
            log.info("CTI registration of %s at %s postponed: %s", s.account, site, exc)
            self.pending[site].wait(extension, sid, self.clock.now(), keep=True)
            return
        except PbxError as exc:
            log.warning("CTI registration of %s at %s failed: %s", s.account, site, exc)
            await self._cti_failed(sid, site, str(exc))
            return
        if not await self.sessions.set_state(sid, "cti_registered", site=site):
            # Ended, or moved to another site, while its members were added here. A login
            # that replaced it on the same phone here shares these members: they stay.
            log.info("session of %s left %s during its CTI registration; removing its members", s.account, site)
            keep = await self._successor_queues(s, site, extension)
            await _remove_members(pbx, [q for q, _ in s.queues if q not in keep], iface)
            return
        await self._notify(sid, {"type": "cti", "state": "registered", "site": site,
                                 "queues": [q for q, _ in s.queues]})

    async def _cti_failed(self, sid: str, site: str, error: str) -> None:
        """The client is told its CTI registration at ``site`` failed (it asks again)."""
        await self._notify(sid, {"type": "cti", "state": "failed", "site": site, "error": error})

    async def _notify(self, sid: str, msg: dict[str, Any]) -> None:
        if self.push is not None:
            await self.push(sid, msg)

    # --- logout and reaping ------------------------------------------------------

    async def logout(self, sid: str) -> bool:
        return await self._end(sid, "logout")

    async def _end(self, sid: str, why: str) -> bool:
        s = await self.sessions.claim(sid)
        if s is None:
            return False
        await self._cleanup(s, why)
        return True

    async def _cleanup(self, s: LiveSession, why: str) -> None:
        self.pending[s.site].forget(s.extension, s.id)
        self._forget_wave(s.site, s.extension)
        keep = await self._successor_queues(s, s.site, s.extension)
        pbx = self.pbx.get(s.site)
        if pbx is not None and pbx.state is LinkState.UP:
            await _remove_members(pbx, [q for q, _ in s.queues if q not in keep], f"PJSIP/{s.extension}")
        await self.directory.release_vaid(s.id)
        await self.directory.session_ended(s.id, why)
        await self.sessions.drop_token(s.id)
        # The client's channel may be held by another site's service (it served the login;
        # this one the login that replaced it): the service's push relays it there.
        await self._notify(s.id, {"type": "session", "state": "ended", "why": why})
        log.info("session of %s at %s ended (%s)", s.account, s.site, why)

    async def _successor_queues(self, s: LiveSession, site: str, extension: str) -> set[str]:
        """The queues whose member ``PJSIP/<extension>`` at ``site`` is not ``s``'s to remove:
        the agent's current session, if another one, on the same phone at the same site (a
        login that replaced ``s``) holds them too, under the same interface. Removing them
        would pull the rug from under that session's CTI registration (seen in a 1,000-agent
        failover, where a login that timed out at the client still completed at the service;
        and when ``s``'s own CTI registration finished after the replacement)."""
        current = await self.sessions.current(s.account)
        if current is None or current == s.id:
            return set()
        successor = await self.sessions.get(current)
        if successor is None or (successor.site, successor.extension) != (site, extension):
            return set()
        return {q for q, _ in successor.queues}

    @property
    def push_channel(self) -> str:
        return f"{self.sessions.p}sess:push"

    async def reap_once(self) -> int:
        expired = await self.sessions.claim_expired(self.clock.now())
        for s in expired:
            await self._cleanup(s, "expired")
        return len(expired)

    async def reconcile_site(self, site: str) -> int:
        """Remove queue members ccdr added at ``site`` that no live session there owns.

        After a site comes back (a healed cut, a thawed freeze, a restarted Asterisk that
        kept its state), it still holds the members of agents that moved away while it was
        unreachable: the split brain the shared notes warn of. Only members named like
        ours (``account/vaid``) are touched; members added by hand are left alone."""
        pbx = self.pbx.get(site)
        if pbx is None or pbx.state is not LinkState.UP:
            return 0
        # Members first, sessions after: a session moved here is stored before its members
        # are added, so every member in this read has its session in the next. The other
        # order removed the members of sessions that moved here between the two reads (a
        # full read of a 10,000-member site takes seconds, during a mass move).
        members = await pbx.queue_status()
        live = {(q, f"PJSIP/{s.extension}") for s in await self.sessions.all() if s.site == site
                for q, _ in s.queues}
        removed = 0
        for m in members:
            if MEMBER_NAME.match(m.name) and (m.queue, m.interface) not in live:
                try:
                    await pbx.queue_remove(m.queue, m.interface)
                    removed += 1
                except PbxError as exc:
                    log.debug("reconcile %s: %s %s: %s", site, m.queue, m.interface, exc)
        if removed:
            log.info("site %s: removed %d queue members of agents no longer there", site, removed)
        return removed

    async def heartbeat(self, sid: str) -> bool:
        return await self.sessions.heartbeat(sid, self.clock.now())

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait for in-flight CTI work (tests, shutdown); past ``timeout_s``, cancel what is
        left (a stop must not hang on a saturated PBX: seen with thousands of tasks queued)."""
        for w in self.waves.values():
            await w.close()  # held adds go now
        try:
            async with asyncio.timeout(timeout_s):
                while self._cti_tasks:
                    await asyncio.gather(*list(self._cti_tasks), return_exceptions=True)
        except TimeoutError:
            left = list(self._cti_tasks)
            log.warning("stopping with %d CTI tasks unfinished; cancelled", len(left))
            for t in left:
                t.cancel()
            await asyncio.gather(*left, return_exceptions=True)

    def site_of(self, site_id: str) -> Site:
        return self.topology.site(site_id)
