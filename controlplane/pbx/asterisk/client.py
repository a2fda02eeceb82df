"""The Asterisk adapter: one AMI link to one site, supervised.

Link lifecycle (task ``ami-<site>``): connect -> Login -> UP -> reconcile
(QueueStatus, PJSIPShowContacts) -> liveness (Ping every probe_interval_s,
answer within probe_timeout_s) -> on any loss: UNREACHABLE, PBX_DOWN, pending
commands fail with LinkLost, reconnect after our backoff. One AMI session carries the
events, the commands and the Pings (Asterisk wakes every session's thread for every event
it publishes, subscribed or not: bench/bench_ami_sessions.py); actions that keep a session
silent for seconds (SIDE_SESSION) run on a session of their own, opened for them. A link
Asterisk closed is checked first: a port that refuses a new connection means the process
is gone (``refused``, in PBX_DOWN's data). A refused Login is AUTH_FAILED: reported once
(event, log, exception from ``start``), not retried.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from panoramisk.actions import Action
from panoramisk.message import Message

from controlplane.errors import (
    LinkLost,
    PbxAuthError,
    PbxCommandError,
    PbxError,
    PbxUnreachable,
    ProtocolError,
)
from controlplane.pbx.asterisk.normalize import contact_from, member_from, normalize
from controlplane.pbx.asterisk.protocol import CcdrAmiProtocol
from controlplane.pbx.base import (
    Contact,
    EventKind,
    LinkState,
    PbxClient,
    PbxEvent,
    QueueMember,
    Subscription,
)
from controlplane.protocols.frame import Frame
from controlplane.runtime.clock import Clock, RealClock
from controlplane.settings import AmiLink, Timings

log = logging.getLogger(__name__)

# A transport factory, as loop.create_connection: tests plug in their own.
Connector = Callable[[Callable[[], asyncio.Protocol], str, int], Awaitable[tuple[asyncio.BaseTransport, Any]]]

IDEMPOTENT = frozenset({"Ping", "QueueStatus", "PJSIPShowContacts", "Reload"})
# Actions that keep their session silent while they run: Asterisk builds
# PJSIPShowContacts' list before sending any of it (2.4 s for 1,000 contacts on Asterisk
# 22), a res_pjsip reload takes 6.3 s at 22,000 endpoints (shared notes), a CLI command may
# take anything. A session answers its actions in order and sends its events between them,
# so on the link's own session they would hold up its Pings and events and make a busy PBX
# look dead: each runs on a short-lived session of its own (Events: off), opened and
# closed around it.
SIDE_SESSION = frozenset({"PJSIPShowContacts", "Reload", "Command"})
# Events the controller needs; "Events: on" would also bring ~5 test and security
# events per REGISTER (shared notes, "Registration").
DEFAULT_EVENT_MASK = "system,agent"
UNUSED_EVENTS = ("PeerStatus",)  # in the mask's classes, read by nothing in ccdr (normalize.py)
SLOW_PING_GRACE = 5  # probe timeouts without a Pong tolerated while events still arrive
SUBSCRIBER_BACKLOG = 100_000


class _Knock(asyncio.Protocol):
    """A connection that only waits for Asterisk's banner: ``greeted`` is True once any byte
    arrives, False if the connection closes first."""

    def __init__(self) -> None:
        self.greeted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.greeted.done():
            self.greeted.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.greeted.done():
            self.greeted.set_result(False)


class AsteriskClient(PbxClient):
    def __init__(
        self,
        site: str,
        link: AmiLink,
        timings: Timings | None = None,
        *,
        secret: str | None = None,
        event_mask: str = DEFAULT_EVENT_MASK,
        connector: Connector | None = None,
        clock: Clock | None = None,
        tap: Callable[[bytes], None] | None = None,
    ) -> None:
        self.site = site
        self.link = link
        self.timings = timings or Timings()
        self._secret = secret
        self.event_mask = event_mask
        self._connector = connector
        self._tap = tap  # sees every byte received, as received (ccdr events record)
        self.clock = clock or RealClock()
        self._state = LinkState.CONNECTING
        self._proto: CcdrAmiProtocol | None = None
        self._last_pong = time.monotonic()
        self.slow_pings = 0  # Pings answered late while events kept flowing (see _probe)
        self.side_sessions = 0  # sessions opened for one SIDE_SESSION action (tests, metrics)
        self._lost: asyncio.Event = asyncio.Event()
        self._up: asyncio.Event = asyncio.Event()
        self.refused = False
        self._down_reported = False  # PBX_DOWN published since the link was last up
        self._first_attempt: asyncio.Event = asyncio.Event()
        self._sem = asyncio.Semaphore(self.timings.max_in_flight)
        self._subs: list[asyncio.Queue[PbxEvent]] = []
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.bad_frames = 0
        self.dropped_events = 0
        self.reconnects = 0
        self.last_error: str | None = None
        # The PBX's picture as we know it: re-read after every (re)connect.
        self.members: dict[str, dict[str, QueueMember]] = {}
        self.registered: dict[str, Contact] = {}
        # Contact URIs Asterisk reported removed, until they are created again: a status
        # event it publishes late (NonQualified, from another taskprocessor) about a contact
        # already removed must not bring it back (test_ami_lab, twice in CI).
        self._removed: dict[str, str] = {}  # endpoint -> URI
        self._during_reconcile: list[Frame] | None = None
        self._booted = asyncio.Event()
        # FullyBooted is a "system" event: without it in the mask there is nothing to wait for.
        self._waits_for_boot = event_mask == "on" or "system" in event_mask.split(",")

    def __repr__(self) -> str:  # never shows the secret
        return f"AsteriskClient(site={self.site!r}, {self.link.host}:{self.link.port}, {self._state.value})"

    @property
    def state(self) -> LinkState:
        return self._state

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start the link task; return after the first attempt (raise PbxAuthError if refused)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"ami-{self.site}")
        await self._first_attempt.wait()
        if self._state is LinkState.AUTH_FAILED:
            raise PbxAuthError(f"site {self.site}: AMI login refused for user {self.link.username!r}")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait([self._task], timeout=0.5)
        self._drop()
        self._set_state(LinkState.CLOSED)

    async def wait_up(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._up.wait()
        except TimeoutError:
            raise PbxUnreachable(f"site {self.site}: AMI not up within {timeout_s} s") from None

    def _set_state(self, st: LinkState) -> None:
        if st is self._state:
            return
        prev, self._state = self._state, st
        if st is LinkState.UP:
            self._up.set()
            self.refused = self._down_reported = False
        else:
            self._up.clear()
        kind = {LinkState.UP: EventKind.PBX_UP, LinkState.AUTH_FAILED: EventKind.PBX_AUTH_FAILED}.get(st)
        if kind is None and prev is LinkState.UP:
            kind = EventKind.PBX_DOWN
            self._down_reported = True
        if kind is not None:
            self._publish_state(kind)

    def _publish_state(self, kind: EventKind) -> None:
        self._publish(PbxEvent(kind, self.site, self.clock.now(),
                               {"state": self._state.value, "error": self.last_error, "refused": self.refused}))

    def _note_refused(self, refused: bool) -> None:
        """Whether the last attempt found the AMI port refusing; a PBX already reported
        down is reported again when that becomes certain (a freeze, then a kill)."""
        was, self.refused = self.refused, refused
        if refused and not was and self._down_reported:
            self._publish_state(EventKind.PBX_DOWN)

    async def _refuses(self) -> bool:
        """Whether the AMI port refuses a new connection now. Asked when Asterisk closed
        the link: killed, its port refuses at once (the kernel answers the SYN with a reset,
        ~1 ms in the lab); alive (it closed a slow session, or restarts), it accepts and
        greets. A killed Asterisk's listener can outlive its sessions by a few milliseconds
        (lab, session 13: 2 kills in 5 accepted a connection at once, then refused 5 ms
        later): a connection closed before Asterisk's banner counts as refused. No banner
        within ``refusal_check_s`` (frozen, or very slow) is not certain either way."""
        connect = self._connector or asyncio.get_running_loop().create_connection
        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(self.timings.refusal_check_s):
                transport, knock = await connect(_Knock, self.link.host, self.link.port)
                return not await knock.greeted
        except ConnectionRefusedError:
            return True
        except (OSError, TimeoutError):
            return False
        finally:
            if transport is not None:
                transport.close()

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            closed_by_pbx = refused = False
            up_since: float | None = None
            try:
                await self._connect_and_login()
                attempt = 0
                self._set_state(LinkState.UP)
                up_since = self.clock.now()
                if self.reconnects:
                    log.info("site %s: AMI link up (reconnect %d)", self.site, self.reconnects)
                self._first_attempt.set()
                # Liveness starts with the link: a reconcile in flight when the PBX
                # freezes must not stretch detection to a command timeout.
                reconcile = asyncio.create_task(self._reconcile(), name=f"ami-reconcile-{self.site}")
                try:
                    await self._liveness(reconcile)
                finally:
                    reconcile.cancel()
                    await asyncio.gather(reconcile, return_exceptions=True)
            except PbxAuthError as exc:
                self.last_error = str(exc)
                log.error("site %s: %s; not retrying until reconfigured", self.site, exc)
                self._drop()
                self._set_state(LinkState.AUTH_FAILED)
                self._first_attempt.set()
                return
            except (OSError, TimeoutError, PbxError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("site %s: AMI link down: %s", self.site, self.last_error)
                closed_by_pbx = isinstance(exc, LinkLost) and self._state is LinkState.UP
                refused = isinstance(exc, ConnectionRefusedError)
            self._drop()
            if closed_by_pbx:
                # Before PBX_DOWN goes out, so that one event says whether the PBX is gone.
                refused = await self._refuses()
            self._note_refused(refused)
            self._set_state(LinkState.UNREACHABLE)
            self._first_attempt.set()
            if self.timings.retry_at_once(None if up_since is None else self.clock.now() - up_since):
                delay = 0.0
            else:
                delay = self.timings.reconnect.delay(attempt, random.random())
                attempt += 1
            self.reconnects += 1
            await self.clock.sleep(delay)

    def _drop(self) -> None:
        if self._proto is not None:
            self._proto.close()  # pending commands fail with LinkLost
        self._proto = None

    async def _open(self, events: str, lost: asyncio.Event) -> CcdrAmiProtocol:
        """Connect and log in one AMI session."""

        def factory() -> CcdrAmiProtocol:
            # Only the link's own session feeds events and the raw tap.
            if events == "off":
                return CcdrAmiProtocol(lambda f: None, lambda exc: lost.set(), self._on_bad_frame)
            return CcdrAmiProtocol(self._on_frame, lambda exc: lost.set(), self._on_bad_frame, self._tap)

        connect = self._connector or asyncio.get_running_loop().create_connection
        async with asyncio.timeout(self.timings.connect_timeout_s):
            _, proto = await connect(factory, self.link.host, self.link.port)
        secret = self._secret if self._secret is not None else self.link.secret.reveal("ami.secret")
        try:
            resp = await self._send("Login", [("Username", self.link.username), ("Secret", secret),
                                              ("Events", events)], timeout_s=self.timings.connect_timeout_s,
                                    proto=proto)
        except BaseException:
            proto.close()
            raise
        if resp.get("Response", "").lower() != "success":
            proto.close()
            raise PbxAuthError(f"site {self.site}: AMI login refused: {resp.get('Message', '')}")
        if events != "off":
            try:
                await self._drop_unused_events(proto)
            except BaseException:  # a link that fails here is retried whole, this one closed
                proto.close()
                raise
        return proto

    async def _drop_unused_events(self, proto: CcdrAmiProtocol) -> None:
        """Ask Asterisk not to send the session events ccdr never reads (UNUSED_EVENTS).
        Every registration sends PeerStatus beside ContactStatus; in a 5,000-agent move
        Asterisk's manager queue backed up past 3,000 tasks formatting events for four
        login-service processes ("stasis/m:manager:core ... reached 3000"), and each
        process parsed them all. The advanced form (Asterisk 21+) matches by name without
        a regex; older ones take the legacy regex. An AMI user without the system
        permission may not filter at all: then everything still arrives, as before."""
        for name in UNUSED_EVENTS:
            for fields in ([("Operation", "Add"), ("MatchCriteria", f"action(exclude),name({name})")],
                           [("Operation", "Add"), ("Filter", f"!Event: {name}")]):
                resp = await self._send("Filter", fields, timeout_s=self.timings.connect_timeout_s, proto=proto)
                if resp.get("Response", "").lower() == "success":
                    break
            else:
                log.info("site %s: AMI event filter refused (%s); %s events still arrive", self.site,
                         resp.get("Message", ""), name)
                return

    async def _connect_and_login(self) -> None:
        """One session: events, commands and Pings.

        Until session 13 the Pings had a session of their own, so that a Ping was never
        queued behind a long action. That second session cost Asterisk as much as the event
        session (each is a thread woken for every event: bench/bench_ami_sessions.py, 2,000
        registrations took 2.2-2.8 s of Asterisk's CPU with one session, 4.3-5.2 s with eight
        more that asked for no events). The long silent actions now run on side sessions
        (SIDE_SESSION); what stays here answers or streams within a probe timeout on a
        healthy PBX, and _probe tells a busy one from a dead one.
        """
        if self._state is not LinkState.UP:
            self._set_state(LinkState.CONNECTING)
        lost = asyncio.Event()
        self._lost = lost
        self._booted.clear()
        self._proto = await self._open(self.event_mask, lost)
        self._last_pong = time.monotonic()
        # A restarting Asterisk accepts AMI logins before its modules are loaded
        # ("Invalid/unknown command: QueueStatus" right after `ccdr lab start`): the
        # link is up only once FullyBooted says so (sent at login when already booted).
        if self._waits_for_boot:
            try:
                async with asyncio.timeout(self.timings.reconcile_timeout_s):
                    await self._booted.wait()
            except TimeoutError:
                raise PbxUnreachable(f"site {self.site}: Asterisk not fully booted after "
                                     f"{self.timings.reconcile_timeout_s} s") from None

    async def _liveness(self, reconcile: asyncio.Task[None]) -> None:
        """Ping every interval; no answer within the timeout means the PBX is gone,
        even though TCP is still open (SIGSTOP, cut link). A failed reconcile ends the link too."""
        t = self.timings
        while True:
            lost = asyncio.ensure_future(self._lost.wait())
            sleeper = asyncio.ensure_future(self.clock.sleep(t.probe_interval_s))
            waiters: set[asyncio.Future[Any]] = {lost, sleeper}
            if not reconcile.done():
                waiters.add(reconcile)
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for f in (lost, sleeper):
                if f not in done:
                    f.cancel()
            if lost in done:
                raise LinkLost(f"site {self.site}: AMI connection closed")
            if reconcile.done() and not reconcile.cancelled() and reconcile.exception() is not None:
                raise reconcile.exception()  # type: ignore[misc]
            await self._probe()

    async def _probe(self) -> None:
        """One Ping; no answer within probe_timeout_s: the PBX is gone.

        Unless the session is still streaming: in a registration storm (10,000 phones at
        ~1,800 REGISTER/s on this 2-core lab) Asterisk answered Ping after more than a
        second while sending thousands of events a second (a session's thread sends the
        events queued for it before it reads the next action), and dropping the link then
        failed every CTI registration in flight. A frozen, killed or cut-off Asterisk sends
        nothing, so this does not slow their detection. The grace is bounded: no Pong for
        SLOW_PING_GRACE probe timeouts ends the link anyway."""
        t = self.timings
        proto = self._proto
        if proto is None or proto.closed:
            raise LinkLost(f"site {self.site}: AMI connection closed")
        fut = self._submit("Ping", [], as_list=False, proto=proto)
        try:
            async with asyncio.timeout(t.probe_timeout_s):
                await fut
            self._last_pong = time.monotonic()
        except TimeoutError:
            now = time.monotonic()
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # The Pong was read in the loop turn the timer fired in: our own event loop
                # was too busy (a login storm) to hand it over in time. Not the PBX's fault.
                self._last_pong = now
                self.slow_pings += 1
                return
            streaming = now - proto.last_rx < t.probe_timeout_s
            if streaming and now - self._last_pong < SLOW_PING_GRACE * t.probe_timeout_s:
                self.slow_pings += 1
                log.info("site %s: Ping slower than %.1f s while events still flow; not dropping the link",
                         self.site, t.probe_timeout_s)
                return
            raise PbxUnreachable(f"site {self.site}: no answer to Ping in {t.probe_timeout_s} s") from None

    async def _reconcile(self) -> None:
        """Re-read what the PBX holds. A part that cannot be read (an Error reply from a
        PBX without app_queue or PJSIP, or a list slower than reconcile_timeout_s) stays
        as it was and is logged; it does not drop a link the Pings find alive."""
        t = self.timings.reconcile_timeout_s
        # Events that arrive while a list is read are newer than the list: they are
        # re-applied on top of it, or a phone registering during the read would vanish.
        self._during_reconcile = []
        try:
            try:
                members: dict[str, dict[str, QueueMember]] = {}
                for m in await self.queue_status(timeout_s=t):
                    members.setdefault(m.queue, {})[m.interface] = m
                self.members = members
            except (PbxCommandError, PbxUnreachable) as exc:
                log.warning("site %s: cannot re-read queue members: %s", self.site, exc)
            try:
                self.registered = {c.endpoint: c for c in await self.contacts(timeout_s=t)}
                self._removed.clear()  # a fresh picture
            except (PbxCommandError, PbxUnreachable) as exc:
                log.warning("site %s: cannot re-read contacts: %s", self.site, exc)
        finally:
            late, self._during_reconcile = self._during_reconcile, None
            for frame in late or ():
                self._apply(frame)

    # --- events ----------------------------------------------------------------

    def _on_bad_frame(self, err: ProtocolError) -> None:
        self.bad_frames += 1
        log.warning("site %s: %s", self.site, err)

    def _on_frame(self, frame: Frame) -> None:
        # Runs inside data_received: only quick bookkeeping, never user code.
        if frame.get("Event") == "FullyBooted":
            self._booted.set()
        ev = self._apply(frame)
        if ev is None:
            return
        if self._during_reconcile is not None and ev.kind is not EventKind.DEVICE_STATE:
            self._during_reconcile.append(frame)
        self._publish(ev)

    def _apply(self, frame: Frame) -> PbxEvent | None:
        """Update the picture from one event frame; return its normalized event."""
        ev = normalize(self.site, frame, self.clock.now())
        if ev is None:
            return None
        d = ev.data
        status = str(d.get("status", "")).lower()
        if ev.kind is EventKind.PHONE_REGISTERED:
            if status == "created":
                self._removed.pop(d["endpoint"], None)
            elif d["uri"] and self._removed.get(d["endpoint"]) == d["uri"]:
                return ev  # a late status of a contact already removed
            self.registered[d["endpoint"]] = Contact(d["endpoint"], d["uri"], d["status"])
        elif ev.kind is EventKind.PHONE_UNREGISTERED:
            if status == "removed" and d["uri"]:
                self._removed[d["endpoint"]] = d["uri"]
            # With remove_existing, a re-REGISTER from a new address reports the new contact
            # first and the old one's removal after: only drop the contact that went.
            known = self.registered.get(d["endpoint"])
            if known is not None and (not d["uri"] or known.uri == d["uri"]):
                del self.registered[d["endpoint"]]
        elif ev.kind in (EventKind.QUEUE_MEMBER_ADDED, EventKind.QUEUE_MEMBER_PAUSED,
                         EventKind.QUEUE_MEMBER_STATUS):
            self.members.setdefault(d["queue"], {})[d["interface"]] = member_from(frame)
        elif ev.kind is EventKind.QUEUE_MEMBER_REMOVED:
            self.members.get(d["queue"], {}).pop(d["interface"], None)
        return ev

    def _publish(self, ev: PbxEvent) -> None:
        for q in self._subs:
            if q.qsize() >= SUBSCRIBER_BACKLOG:
                q.get_nowait()  # a stalled subscriber loses its oldest, never stalls the reader
                self.dropped_events += 1
            q.put_nowait(ev)

    def events(self) -> Subscription:
        return Subscription(self._subs)

    # --- commands --------------------------------------------------------------

    def _submit(self, name: str, fields: list[tuple[str, str]], *, as_list: bool,
                proto: CcdrAmiProtocol | None) -> asyncio.Future[Any]:
        proto = proto or self._proto
        if proto is None or proto.closed:
            raise LinkLost(f"site {self.site}: AMI connection closed")
        data: dict[str, Any] = {"Action": name, "ActionID": f"ccdr-{self.site}-{next(self._ids)}"}
        for k, v in fields:  # a repeated field (Variable) becomes a list
            if k in data:
                data[k] = [*data[k], v] if isinstance(data[k], list) else [data[k], v]
            else:
                data[k] = v
        return proto.send(Action(data, as_list=as_list), as_list=as_list)

    async def _send(self, name: str, fields: list[tuple[str, str]], *, as_list: bool = False,
                    timeout_s: float | None = None, proto: CcdrAmiProtocol | None = None) -> Any:
        fut = self._submit(name, fields, as_list=as_list, proto=proto)
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
        # that lands as the reply arrives, and close() would then wait forever.
        async with asyncio.timeout(timeout_s or self.timings.command_timeout_s):
            return await fut

    async def _send_aside(self, name: str, fields: list[tuple[str, str]], *, as_list: bool,
                          timeout_s: float | None) -> Any:
        """One action on a session of its own (SIDE_SESSION), closed after it."""
        try:
            proto = await self._open("off", asyncio.Event())
        except (OSError, TimeoutError) as exc:
            raise PbxUnreachable(f"site {self.site}: cannot open an AMI session for {name}: "
                                 f"{type(exc).__name__}: {exc}") from None
        self.side_sessions += 1
        try:
            return await self._send(name, fields, as_list=as_list, timeout_s=timeout_s, proto=proto)
        finally:
            proto.close()

    async def command(self, name: str, fields: list[tuple[str, str]] | None = None, *,
                      as_list: bool = False, timeout_s: float | None = None) -> Any:
        """Send an action with bounded pipelining; raise PbxCommandError on an Error reply.

        An idempotent action that loses its link is tried once more after the
        link is back; any other fails fast with LinkLost.
        """
        for attempt in (0, 1):
            if self._state is not LinkState.UP:
                if attempt == 0 or name not in IDEMPOTENT:
                    raise PbxUnreachable(f"site {self.site}: AMI link is {self._state.value}")
                await self.wait_up(self.timings.command_timeout_s)
            async with self._sem:
                try:
                    if name in SIDE_SESSION:
                        res = await self._send_aside(name, fields or [], as_list=as_list, timeout_s=timeout_s)
                    else:
                        res = await self._send(name, fields or [], as_list=as_list, timeout_s=timeout_s)
                except LinkLost:
                    if name in IDEMPOTENT and attempt == 0:
                        self._up.clear()  # this link is gone even if the link task has not noticed yet
                        await self.wait_up(self.timings.command_timeout_s)
                        continue
                    raise
                except TimeoutError:
                    raise PbxUnreachable(f"site {self.site}: no answer to {name} in "
                                         f"{timeout_s or self.timings.command_timeout_s} s") from None
            first = res[0] if isinstance(res, list) else res
            if isinstance(first, Message) and first.get("Response", "").lower() in ("error", "failure", "fail"):
                raise PbxCommandError(f"site {self.site}: {name}: {first.get('Message', 'error')}")
            return res
        raise AssertionError("unreachable")

    async def ping(self) -> float:
        t0 = self.clock.now()
        await self.command("Ping")
        return self.clock.now() - t0

    async def queue_add(self, queue: str, interface: str, name: str = "", penalty: int = 0,
                        paused: bool = False) -> None:
        fields = [("Queue", queue), ("Interface", interface)]
        if name:
            fields.append(("MemberName", name))
        fields += [("Penalty", str(penalty)), ("Paused", "true" if paused else "false")]
        await self.command("QueueAdd", fields, as_list=False)  # as_list=False: see module docstring

    async def queue_remove(self, queue: str, interface: str) -> None:
        await self.command("QueueRemove", [("Queue", queue), ("Interface", interface)], as_list=False)

    async def queue_pause(self, queue: str, interface: str, paused: bool, reason: str = "") -> None:
        fields = [("Queue", queue), ("Interface", interface), ("Paused", "true" if paused else "false")]
        if reason:
            fields.append(("Reason", reason))
        await self.command("QueuePause", fields, as_list=False)

    async def queue_status(self, queue: str | None = None, member: str | None = None, *,
                           timeout_s: float | None = None) -> list[QueueMember]:
        fields = [("Queue", queue)] if queue else []
        if member:
            fields.append(("Member", member))
        msgs = await self.command("QueueStatus", fields, as_list=True, timeout_s=timeout_s)
        return [member_from(m.frame) for m in msgs if m.get("Event", "") == "QueueMember"]

    async def contacts(self, *, timeout_s: float | None = None) -> list[Contact]:
        try:
            msgs = await self.command("PJSIPShowContacts", as_list=True, timeout_s=timeout_s)
        except PbxCommandError as exc:
            # Asterisk 22 answers an empty list with "Response: Error / No Contacts found".
            if "No Contacts found" in str(exc):
                return []
            raise
        return [contact_from(m.frame) for m in msgs if m.get("Event", "") == "ContactList"]

    def known_contacts(self) -> set[str]:
        return set(self.registered)

    async def reload(self, module: str | None = None) -> None:
        await self.command("Reload", [("Module", module)] if module else [], as_list=False)

    async def originate(self, channel: str, context: str, exten: str, priority: int = 1,
                        variables: dict[str, str] | None = None, timeout_s: float = 30.0) -> Frame:
        fields = [("Channel", channel), ("Context", context), ("Exten", exten), ("Priority", str(priority)),
                  ("Async", "true"), ("Timeout", str(int(timeout_s * 1000)))]
        fields += [("Variable", f"{k}={v}") for k, v in sorted((variables or {}).items())]
        # Returns once Asterisk queued the call: OriginateResponse is a "call" class
        # event, outside the default event mask.
        msg = await self.command("Originate", fields, as_list=False)
        frame: Frame = msg.frame
        return frame
