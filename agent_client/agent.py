"""The agent's client: log in, register the phone line, wait for CTI, watch, and move.

The reference design's client half, step for step:

1. Log in at the local login service; if it does not answer (or answers 5xx), at the
   next one in ``login_urls``.
2. Register the phone line at the registrar the login reply names, open the session
   channel (WebSocket) and wait for CTI registration ("cti registered" push). If either
   fails, log in again at another login service.
3. While ready, watch four signals: the login service's pushes of the site's PBX state,
   the session channel itself, a SIP OPTIONS probe to the registrar, and the line's
   registration refreshes. One failing signal only makes the agent *suspect*; a failure
   is *confirmed* when two different signals have been failing together for
   ``confirm_hold_s`` (one lost packet, or a one-second network blip, moves nobody), or
   at once when one of them is certain: the login service found the PBX's port refusing
   connections (the process is gone; a blip or a freeze never shows that).
4. On a confirmed failure: if the session channel still works (the site's PBX died, its
   login service did not), ask over it to move the live session away from the site (same
   session, token and virtual ID, no password; the channel stays). Otherwise, or if that
   is refused, ask another site's login service (``POST /v1/move``); if it no longer
   knows the session, log in there afresh, which replaces the old session. Then register
   the line at the new site and wait for CTI as at login, and un-register the line at
   the old registrar where it still answers (in the background, 2 s at most).

Every transition is an :class:`AgentEvent` with a monotonic timestamp. Timings are data
(:class:`AgentTimings`); the login reply's ``timings`` override the heartbeat interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .sip.transport import SipTimeout, SipTransport
from .sip.ua import Gate, LineEvent, LineEventKind, LineState, PhoneLine

log = logging.getLogger(__name__)


_HEARTBEAT = json.dumps({"type": "heartbeat"})  # serialized once: 1,000 a second from 10,000 agents


async def _set_or_timer(event: asyncio.Event, delay: float) -> None:
    """Until ``event`` is set, by someone or by a timer after ``delay`` (the caller checks
    what changed). A timer, not asyncio.timeout: when it fires no cancellation is thrown
    through the task; py-spy put a tenth of a 10,000-agent simulator's first seconds in
    the timeout machinery."""
    timer = asyncio.get_running_loop().call_later(delay, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()


def _registered_at(line: PhoneLine, registrar: tuple[str, int]) -> bool:
    """Registered at ``registrar`` already (a backup line): nothing to send."""
    return line.state is LineState.REGISTERED and line.registrar == registrar


class Signal(enum.Enum):
    PBX_STATE = "pbx_state"  # the login service says the site's PBX is down
    SESSION_CHANNEL = "session_channel"  # the WebSocket to the login service is gone
    LOGIN_SERVICE = "login_service"  # the login service does not accept a new connection
    SIP_PROBE = "sip_probe"  # OPTIONS to the registrar unanswered
    REGISTRATION = "registration"  # a registration refresh failed


class AgentState(enum.Enum):
    IDLE = "idle"
    LOGGING_IN = "logging_in"
    REGISTERING = "registering"
    AWAITING_CTI = "awaiting_cti"
    READY = "ready"
    SUSPECT = "suspect"
    MOVING = "moving"
    REFUSED = "refused"  # bad credentials or unknown MAC: retrying would not help
    LOGGED_OUT = "logged_out"


@dataclass(frozen=True)
class AgentTimings:
    #: a mass move queues logins at the surviving service: a short timeout here only adds a
    #: second wave of logins elsewhere (seen with 1,000 agents at 3 s)
    login_timeout_s: float = 10.0
    #: a move asked over a live session channel waits while the channel shows life (any
    #: message within heartbeat_misses intervals), up to this long. A fixed 10 s sent
    #: thousands of agents whose busy service was still working through their moves to ask
    #: the other site too, and then again: a retry storm (10,000 agents, none moved in 200 s).
    move_timeout_s: float = 30.0
    #: CTI registration is waited for while the session channel shows life (the service
    #: holds the session and pushes the outcome, registered or failed), up to this long. A
    #: fixed 20 s sent thousands of agents, whose members a slow survivor was still adding,
    #: to move again (10,000 agents on a slower machine: 5,000 moved twice or more, the last
    #: ready after 111 s instead of 18 s).
    cti_timeout_s: float = 90.0
    #: OPTIONS to the registrar while all is well, jittered (x0.5..1), a desk phone's usual
    #: keep-alive. It only starts a suspicion nothing else reported: a dead PBX's push, a
    #: failed refresh or a lost channel starts the fast burst below at once. At 5 s, 5,000
    #: idle agents kept Asterisk 45 % busy answering OPTIONS (1,300 a second).
    sip_probe_interval_s: float = 30.0
    #: a newly failing signal: probe at once, then this often (the active confirmation) ...
    suspect_probe_interval_s: float = 0.25
    #: ... for this long; then back to the steady interval even if the signal keeps failing.
    #: Unbounded, 1,000 agents suspecting a busy registrar sent it 4,000 OPTIONS a second and
    #: kept it too busy to answer them (a drill's login phase that never settled).
    suspect_burst_s: float = 2.0
    sip_probe_timeout_s: float = 0.5
    #: once the probe is failing, the next ones only look for the registrar's return, and
    #: wait this long: with one probe at a time and the full timeout, a probe lost in the last
    #: moment of a 1.05 s cut kept the signal failing a whole 1.0 s (from the first timeout
    #: to the first answer), exactly the hold, and half the agents of a 20-blip drill moved
    #: (2 of 5 CI runs). Shorter than the suspect interval, so each scheduled probe finds the
    #: last one done: at most the cut minus the probe timeout plus one interval, 0.8 s.
    sip_recovery_probe_timeout_s: float = 0.2
    #: two different signals failing together this long confirm a failure. Longer than a
    #: one-second network blip leaves the SIP probe failing (above: 0.8 s in theory); 20
    #: such blips must move nobody. At 1.0 s, a CI run of the blip drill (after the other
    #: drills) moved 37 of 200 agents: their probes went unanswered for over a second after
    #: the heal while Asterisk a took back both services' AMI links, whose PBX-down signal
    #: lasts the reconnect (~2 s per blip); the others' longest overlap was 0.81 s (drill
    #: report's near_miss; 0.51-0.57 s on a quiet lab). A killed PBX (certain) is not held.
    #: At 1.5 s, a CI run on a machine 1.5x slower (session 17) moved 35 of 200: their probes
    #: went unanswered for 1.5 s starting ~1 s after a cut had healed, while the services'
    #: AMI links to a were still reconnecting (near miss of the others 1.43 s): the probes
    #: were those of the next cut, sent because the PBX-down signal lasted 2 s of every blip
    #: (the services' reconnect a backoff after the Ping timeout met the next cut). Since
    #: the services retry a long-lived link at once (Timings.reconnect_at_once_after_s), the
    #: drill's near miss is 0.00-0.05 s on a quiet lab (0.51 s before); the hold stays 2.0 s
    #: until CI runs show that margin (a cut or a freeze is confirmed ~3.5 s after it began).
    confirm_hold_s: float = 2.0
    #: the expiry asked for each line's registration (refreshed at 60-80 % of it). Desk
    #: phones default to 3,600 s, and `ccdr provision` leaves that alone; the probes, not the
    #: refreshes, find a dead registrar. At 120 s, 10,000 dual-line agents refreshed 240
    #: lines a second (two transactions each, digest auth): a tenth of the simulator's core
    #: and load on both Asterisks before any fault.
    register_expires: int = 600
    #: keep the device's line at every other site registered too: a dual-line desk phone, as
    #: ``ccdr provision`` configures them (account 1 at the home site, account 2 at the
    #: backup site). A failover then needs no registration at the survivor, only the move
    #: and its queue adds (the shared notes: 1,000 agents in 0.2 s with the phones already
    #: registered, against 0.7-0.9 s re-registering). False: a single-line softphone,
    #: which registers at the new site when it moves.
    backup_lines: bool = True
    #: a backup line whose registration failed (its site is down) tries again after this
    #: long, jittered (x0.5..1), each attempt giving up after backup_register_limit_s: a
    #: full 32 s transaction per line kept retransmitting into a dead site
    backup_retry_s: float = 60.0
    backup_register_limit_s: float = 4.0
    #: pause before trying the login services again when none answered; it doubles with
    #: each failure in a row up to retry_max_s, jittered (x0.5..1), and resets once ready.
    #: A fixed 1 s retry turned a slow start of 5,000 agents into a retry storm that kept
    #: both login services past the clients' timeouts for minutes.
    retry_s: float = 1.0
    retry_max_s: float = 30.0
    #: the session channel's server heartbeats may be this many intervals late
    heartbeat_misses: float = 2.5


@dataclass(frozen=True)
class AgentEvent:
    at: float
    state: AgentState
    site: str | None = None
    detail: str = ""


class FailureDetector:
    """Confirmation by two different signals: each signal is failing or not; a failure is
    confirmed once at least two different ones have been failing together for ``hold_s``.

    The hold is for failures that may pass (a lost packet, a blip). A signal failing with
    certainty (a killed PBX: its port refuses connections) needs none: two different
    signals failing, one of them certain, confirm at once. Still two: the agent's own
    SIP probe must agree with the login service's view."""

    def __init__(self, hold_s: float, now: Callable[[], float],
                 on_change: Callable[[], None] | None = None) -> None:
        self.hold_s = hold_s
        self.now = now
        self.on_change = on_change  # the agent's watch loop sleeps until something changes
        self.failing: dict[Signal, float] = {}
        self.certain: set[Signal] = set()  # failing signals that leave no doubt
        self._two_since: float | None = None
        #: the longest time two signals failed together without confirming, and which: how
        #: close a blip came to moving the agent (drill reports; reset() keeps it)
        self.near_miss_s = 0.0
        self.near_miss_signals: tuple[str, ...] = ()

    def fail(self, sig: Signal, certain: bool = False, notify: bool = True) -> None:
        """``sig`` is failing. ``notify=False``: without calling ``on_change`` (the caller
        wakes whoever acts on it later)."""
        on_change = self.on_change if notify else None
        if certain and sig not in self.certain:
            self.certain.add(sig)
            if sig in self.failing and on_change is not None:
                on_change()  # confirm_at may have moved earlier
        elif not certain and sig in self.certain:
            self.certain.discard(sig)  # e.g. the PBX answers connections again, still down
        if sig in self.failing:
            return
        self.failing[sig] = self.now()
        if len(self.failing) >= 2 and self._two_since is None:
            self._two_since = self.now()
        if on_change is not None:
            on_change()

    def ok(self, sig: Signal) -> None:
        self.certain.discard(sig)
        if sig not in self.failing:
            return
        if len(self.failing) == 2 and self._two_since is not None:
            span = self.now() - self._two_since
            if span > self.near_miss_s:
                self.near_miss_s = span
                self.near_miss_signals = tuple(sorted(s.value for s in self.failing))
        del self.failing[sig]
        if len(self.failing) < 2:
            self._two_since = None
        if self.on_change is not None:
            self.on_change()

    def confirm_at(self) -> float:
        """When the failure will be confirmed if nothing changes (inf: not on course)."""
        if self._two_since is None:
            return float("inf")
        return self._two_since + (0.0 if self.certain else self.hold_s)

    @property
    def suspect(self) -> bool:
        return bool(self.failing)

    def confirmed(self) -> bool:
        return self.now() >= self.confirm_at()

    def reset(self) -> None:
        self.failing.clear()
        self.certain.clear()
        self._two_since = None


class ProbeSchedule:
    """When to send the next SIP OPTIONS probe to the registrar.

    Steady: every ``sip_probe_interval_s`` x (0.5..1), jittered so 10,000 agents spread out.
    A signal that starts failing starts a burst: a probe at once, then every
    ``suspect_probe_interval_s`` for ``suspect_burst_s`` (the active confirmation of the
    first signal by a second one). After the burst the steady interval applies again, even
    while the signal keeps failing: a slow registrar is not made slower by its agents."""

    def __init__(self, timings: AgentTimings, rng: random.Random, now: float) -> None:
        self.t = timings
        self.rng = rng
        # Not at once: the registration that just succeeded showed the registrar answers,
        # and 1,000 agents ready together would all probe the survivor in its busiest second.
        self.next = now + self._steady()
        self._burst_until = float("-inf")
        self._failing: frozenset[Signal] = frozenset()

    def failing(self, signals: frozenset[Signal], now: float) -> None:
        if signals - self._failing:  # a new failing signal (not one that cleared)
            self._burst_until = now + self.t.suspect_burst_s
            self.next = now
        self._failing = signals

    def take(self, now: float) -> bool:
        """True if a probe is due now (and schedules the one after it)."""
        if now < self.next:
            return False
        if self._failing and now < self._burst_until:
            self.next = now + self.t.suspect_probe_interval_s
        else:
            self.next = now + self._steady()
        return True

    def _steady(self) -> float:
        return self.t.sip_probe_interval_s * (0.5 + 0.5 * self.rng.random())


class Backoff:
    """Exponential backoff with jitter: ``next()`` is the pause before the next attempt."""

    def __init__(self, base_s: float, max_s: float, rng: random.Random) -> None:
        self.base_s, self.max_s, self.rng = base_s, max_s, rng
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return min(self.max_s, self.base_s * 2.0 ** (self.failures - 1)) * (0.5 + 0.5 * self.rng.random())

    def reset(self) -> None:
        self.failures = 0


class _Refused(Exception):
    pass


@dataclass
class _PreRegistration:
    line: PhoneLine
    registrar: tuple[str, int]
    task: asyncio.Future[LineEvent]  # a task, or done already (a registered backup line)
    left: tuple[str, int] | None  # the registrar the line was at before


@dataclass
class _Session:
    url: str
    body: dict[str, Any]
    ws: aiohttp.ClientWebSocketResponse | None = None
    cti: asyncio.Event = field(default_factory=asyncio.Event)
    move_reply: asyncio.Future[dict[str, Any]] | None = None  # a move asked over the channel
    pushed_at: float = 0.0  # when the service last pushed the session's deadline for us
    how: str = "login"  # how it came to this site: "login", "move request", "move in channel"
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    cti_failed: asyncio.Event = field(default_factory=asyncio.Event)
    #: set by the channel's reader when cti, cti_failed or ended is, and when the channel
    #: closes: what the CTI wait sleeps on
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    last_server_hb: float = 0.0

    @property
    def site(self) -> str:
        return str(self.body["site"])

    @property
    def heartbeat_s(self) -> float:
        """The service's heartbeat interval, as its login or move reply set it."""
        return float(self.body.get("timings", {}).get("heartbeat_s", 10.0))


class Agent:
    def __init__(
        self,
        account: str,
        password: str,
        mac: str,
        login_urls: Sequence[str],
        transport: SipTransport,
        http: aiohttp.ClientSession,
        *,
        timings: AgentTimings | None = None,
        gate: Gate | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[Agent, AgentEvent], None] | None = None,
    ) -> None:
        if not login_urls:
            raise ValueError("login_urls: at least one login service")
        self.account = account
        self._password = password  # never logged
        self.mac = mac
        self.login_urls = [u.rstrip("/") for u in login_urls]
        self.transport = transport
        self.http = http
        self.timings = timings or AgentTimings()
        self.gate = gate
        self.clock = clock
        self.on_event = on_event
        self.state = AgentState.IDLE
        self.site: str | None = None
        self.events: list[AgentEvent] = []
        self.line: PhoneLine | None = None
        #: the device's line at each site, as the login and move replies named them (a
        #: dual-line phone's lines): where to register at once when the site fails
        self.lines: dict[str, dict[str, Any]] = {}
        self._pre: _PreRegistration | None = None
        #: (backup_lines) the device's line at each site other than the current one,
        #: registered or trying to be; the sites with a retry under way
        self.backups: dict[str, PhoneLine] = {}
        self._backing: set[str] = set()
        self.session: _Session | None = None
        self._wake = asyncio.Event()
        self.detector = FailureDetector(self.timings.confirm_hold_s, clock, on_change=self._signals_changed)
        self._watching = False  # the watch loop runs (READY/SUSPECT are its states)
        self._confirmed = ""  # why, if a signal confirmed the failure while it ran
        self._stopping = False
        self._probe_sent = self._probe_seen = 0
        self._probing = False
        self._wake_on_probe = False
        self._rng = random.Random(account)
        self._bg: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"Agent({self.account!r}, {self.state.value}, site={self.site})"

    # -- events ------------------------------------------------------------------
    def _to(self, state: AgentState, detail: str = "") -> None:
        self.state = state
        ev = AgentEvent(self.clock(), state, self.site, detail)
        self.events.append(ev)
        if self.on_event is not None:
            self.on_event(self, ev)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        t: asyncio.Task[Any] = asyncio.ensure_future(coro)
        t.set_name(name)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)
        return t

    def _learn(self, body: dict[str, Any]) -> None:
        """Remember the lines a login or move reply names (its own and the other sites')."""
        self.lines[str(body["site"])] = {k: body[k] for k in ("site", "extension", "registrar", "sip")}
        for other in body.get("other_lines") or ():
            self.lines.setdefault(str(other["site"]), other)

    def _preregister(self, sess: _Session) -> None:
        """A confirmed failure: register the line at the next site now, while the move is
        being asked for (the move names the site; in a mass move its answer comes from a
        busy service, and the registration, which needs only the survivor's registrar,
        need not wait for it). An unused pre-registration is undone by the next _establish."""
        guess = next((info for site, info in self.lines.items() if site != sess.site), None)
        if guess is None:
            return
        ext, password = str(guess["extension"]), str(guess["sip"]["password"])
        registrar = _registrar(guess)
        line = self.line
        left = line.registrar if line is not None else None
        if self.timings.backup_lines:
            line = self._line_at(str(guess["site"]), ext, password, registrar)
        elif line is None or line.ext != ext:
            line = self._new_line(ext, password, registrar)
        task: asyncio.Future[LineEvent]
        if _registered_at(line, registrar):
            # A backup line, registered there already: no task (10,000 agents confirm within
            # a second or two, and each task is one more pass through a crowded loop).
            task = asyncio.get_running_loop().create_future()
            task.set_result(self._registered_already(registrar))
        else:
            task = self._spawn(self._register_line(line, registrar), f"pre-register-{self.account}")
        self._pre = _PreRegistration(line, registrar, task, left)

    def _line_at(self, site: str, ext: str, password: str, registrar: tuple[str, int]) -> PhoneLine:
        """(backup_lines) The device's line at ``site``: its backup line there, registered
        all along, or a new one if it has none for ``ext``."""
        backup = self.backups.pop(site, None)
        if backup is not None and backup.ext == ext:
            return backup
        if backup is not None:
            backup.close()
        return self._new_line(ext, password, registrar)

    def _new_line(self, ext: str, password: str, registrar: tuple[str, int]) -> PhoneLine:
        # A dual-line phone's lines may share the extension (the lab numbers both sites
        # alike): each is bound to its own registrar's requests.
        line = PhoneLine(self.transport, ext, password, gate=self.gate,
                         peer=registrar[0] if self.timings.backup_lines else None)
        line.listeners.append(self._on_line)
        return line

    async def _register_line(self, line: PhoneLine, registrar: tuple[str, int]) -> LineEvent:
        """Register ``line`` at ``registrar``, unless it is registered there already (a
        backup line): then its registration stands, and no REGISTER is sent."""
        if _registered_at(line, registrar):
            return self._registered_already(registrar)
        return await line.register(registrar, self.timings.register_expires)

    def _registered_already(self, registrar: tuple[str, int]) -> LineEvent:
        return LineEvent(LineEventKind.REGISTERED, self.transport.clock.time(), registrar,
                         "registered there already (backup line)")

    def _shelve(self, line: PhoneLine, failed: bool) -> None:
        """The line of a site the agent leaves: closed, or (backup_lines) kept as that site's
        backup line. Leaving a failed site, its next registration there waits a retry
        interval (no REGISTERs into a dead site during the failover)."""
        site = next((s for s, info in self.lines.items() if _registrar(info)[0] == line.peer), None)
        if not self.timings.backup_lines or site is None or site == self.site or site in self.backups:
            line.close()
            return
        self.backups[site] = line
        if failed:
            line.hold()
            self._start_backup(site, line, self._retry_delay())

    def _retry_delay(self) -> float:
        return self.timings.backup_retry_s * (0.5 + 0.5 * self._rng.random())

    def _keep_backups(self) -> None:
        """Ready at a site (backup_lines): register the device's line at every other site."""
        if not self.timings.backup_lines:
            return
        for site, info in self.lines.items():
            if site == self.site or site in self.backups:
                continue
            line = self.backups[site] = self._new_line(str(info["extension"]), str(info["sip"]["password"]),
                                                       _registrar(info))
            self._start_backup(site, line, 0.0)

    def _start_backup(self, site: str, line: PhoneLine, delay: float) -> None:
        """Start keeping a backup line registered, unless that is under way for its site."""
        if site in self._backing or self._stopping:
            return
        self._backing.add(site)
        self._spawn(self._keep_backup(site, line, delay), f"backup-{self.account}-{site}")

    async def _keep_backup(self, site: str, line: PhoneLine, delay: float) -> None:
        """Register a backup line, and try again every retry interval while it fails (its
        site is down), as a desk phone does; once registered, the line refreshes itself."""
        try:
            while not self._stopping and self.backups.get(site) is line:
                if delay > 0:
                    await asyncio.sleep(delay)
                    if self._stopping or self.backups.get(site) is not line:
                        return
                ev = await line.register(_registrar(self.lines[site]), self.timings.register_expires,
                                         limit_s=self.timings.backup_register_limit_s)
                if ev.kind is LineEventKind.REGISTERED:
                    return
                delay = self._retry_delay()
        finally:
            self._backing.discard(site)

    def lines_registered(self) -> bool:
        """The current line registered and (backup_lines) the device's line at every other
        site too: the steady state a drill starts its faults from."""
        if self.line is None or self.line.state is not LineState.REGISTERED:
            return False
        if not self.timings.backup_lines:
            return True
        return all((b := self.backups.get(s)) is not None and b.state is LineState.REGISTERED
                   for s in self.lines if s != self.site)

    # -- the main loop -------------------------------------------------------------
    async def run(self) -> None:
        """Log in and stay logged in somewhere until :meth:`stop`. Run it as a task."""
        order = list(self.login_urls)
        resume: dict[str, Any] | None = None  # the live session to move, if any
        moved: _Session | None = None  # moved over its channel: establish it, no login
        backoff = Backoff(self.timings.retry_s, self.timings.retry_max_s, self._rng)
        try:
            while not self._stopping:
                if moved is not None:
                    sess, moved = moved, None
                else:
                    try:
                        got = await self._login(order, resume)
                    except _Refused as exc:
                        self._to(AgentState.REFUSED, str(exc))
                        return
                    if got is None:
                        await asyncio.sleep(backoff.next())
                        continue
                    sess = got
                resume = sess.body
                if not await self._establish(sess):
                    order = self._others_first(sess.url)
                    if sess.ended.is_set():
                        resume = None
                    await self._leave(sess, "not established")
                    # The first failure tries the other site at once; more in a row wait.
                    if backoff.failures:
                        await asyncio.sleep(backoff.next())
                    else:
                        backoff.failures = 1
                    continue
                backoff.reset()
                why = await self._watch(sess)
                if self._stopping:
                    return
                if self.state is not AgentState.MOVING:  # else MOVING since _signals_changed
                    self._to(AgentState.MOVING, why)
                self._preregister(sess)
                if await self._move_in_channel(sess):
                    moved = sess
                    continue
                order = self._others_first(sess.url)
                if sess.ended.is_set():
                    resume = None
                await self._leave(sess, why)
        finally:
            if self.session is not None and self.session.ws is not None:
                await self.session.ws.close()

    def _others_first(self, url: str) -> list[str]:
        return [u for u in self.login_urls if u != url] + [url]

    async def _login(self, order: list[str], resume: dict[str, Any] | None = None) -> _Session | None:
        """Log in at the first service in ``order`` that takes it. With ``resume`` (a live
        session's reply), ask each service to move that session first (``POST /v1/move``:
        no password, the same virtual ID); a service that no longer knows it gets a full
        login instead."""
        self._to(AgentState.LOGGING_IN, "move" if resume else "")
        for url in order:
            if resume is not None:
                status, body = await self._post(url, "/v1/move", {
                    "session_id": resume["session_id"], "token": resume["token"]})
                if status == 200:
                    self.site = str(body["site"])
                    self._learn(body)
                    return _Session(url, body, how="move request", pushed_at=self.clock())
                if status is None or status >= 500:
                    continue  # that site is no better: try the next service, still moving
                resume = None  # bad_session (ended meanwhile) or refused: log in afresh
            status, body = await self._post(url, "/v1/login", {
                "account": self.account, "password": self._password, "mac": self.mac})
            if status == 200:
                self.site = str(body["site"])
                self._learn(body)
                return _Session(url, body, pushed_at=self.clock())
            code = body.get("error", {}).get("code", "") if isinstance(body, dict) else ""
            if code in ("bad_credentials", "unknown_mac", "bad_request"):
                raise _Refused(f"{url}: {code}")
        return None

    async def _move_in_channel(self, sess: _Session) -> bool:
        """Ask the login service holding the session channel to move the session away from
        its site (``{"type": "move"}``): when only the site's PBX died, its service still
        answers, and the move needs neither a request nor a new channel at the survivor
        (in a 1,000-agent move those were most of both sides' work). True if moved:
        ``sess`` then describes the new site. False, and the client moves by
        ``POST /v1/move`` at another service, if the channel is failing or the answer is a
        refusal or late."""
        ws = sess.ws
        if (ws is None or ws.closed or sess.ended.is_set()
                or {Signal.SESSION_CHANNEL, Signal.LOGIN_SERVICE} & self.detector.failing.keys()):
            return False
        self._to(AgentState.LOGGING_IN, "move in channel")
        sess.move_reply = reply_fut = asyncio.get_running_loop().create_future()
        try:
            await ws.send_str(_move_away(sess.site))
            reply = await self._channel_answer(sess, reply_fut)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            self._to(AgentState.LOGGING_IN, f"move in channel: {type(exc).__name__}")
            return False
        finally:
            sess.move_reply = None
        if reply.get("type") != "moved":
            self._to(AgentState.LOGGING_IN, f"move in channel: {reply.get('code', 'refused')}")
            return False
        return True  # sess was updated by the channel's reader (_moved)

    async def _channel_answer(self, sess: _Session, fut: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        """The answer to a request over the session channel, waited for while the channel
        shows life (see ``move_timeout_s``); TimeoutError once it falls silent or the
        limit passes, ConnectionError if it closes."""
        asked = self.clock()
        deadline = asked + self.timings.move_timeout_s
        while True:
            left = self._alive_until(sess, asked, deadline) - self.clock()
            if left <= 0:
                raise TimeoutError
            # asyncio.wait, not timeout+shield: a wait that runs out raises nothing through
            # the task (10,000 agents waiting at once, in the simulator's busiest seconds).
            await asyncio.wait((fut,), timeout=left)
            if fut.done():
                return fut.result()
            # else a message came meanwhile (the channel lives): wait on

    def _moved(self, sess: _Session, body: dict[str, Any]) -> None:
        """The move's answer, applied by the channel's reader before it reads on: the new
        site's CTI push can follow in the same read, and must find the session there
        (applied later, by the mover, that push was dropped as the old site's: seen as 1 %
        of a 1,000-agent move waiting out the CTI timeout)."""
        sess.body = body
        sess.how = "move in channel"
        sess.cti.clear()
        sess.cti_failed.clear()
        sess.pushed_at = self.clock()
        self._learn(body)
        self.site = sess.site

    async def _post(self, url: str, path: str, payload: dict[str, Any]) -> tuple[int | None, Any]:
        """(status, JSON body); (None, None) if the service did not answer in time."""
        try:
            async with asyncio.timeout(self.timings.login_timeout_s):
                async with self.http.post(f"{url}{path}", json=payload) as r:
                    body = await r.json(content_type=None)
                    status = r.status
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            self._to(AgentState.LOGGING_IN, f"{url}{path}: {type(exc).__name__}")
            return None, None
        if status != 200:
            code = body.get("error", {}).get("code", "") if isinstance(body, dict) else ""
            self._to(AgentState.LOGGING_IN, f"{url}{path}: {status} {code}")
        return status, body

    async def _establish(self, sess: _Session) -> bool:
        """Register the line and wait for CTI registration; False if either fails."""
        self.session = sess
        # Leaving a registrar that stopped answering probes: no un-registration there (its
        # retransmissions, for 2 s, were a large part of a 1,000-agent simulator's load).
        old_answers = Signal.SIP_PROBE not in self.detector.failing
        self.detector.reset()
        b = sess.body
        ext, sip = str(b["extension"]), b["sip"]
        registrar = (str(b["registrar"]["host"]), int(b["registrar"]["port"]))
        pre, self._pre = self._pre, None
        if pre is not None and (pre.line.ext, pre.registrar) != (ext, registrar):
            pre.task.cancel()  # guessed wrong (or a login elsewhere): registered as below
            if pre.line is not self.line:
                self._shelve(pre.line, failed=False)
            pre = None
        old = self.line.registrar if self.line is not None else None
        if pre is not None:
            old = pre.left
            if self.line is not None and self.line is not pre.line:
                self._shelve(self.line, failed=not old_answers)
            self.line = pre.line
        elif self.timings.backup_lines and (self.line is None
                                            or (self.line.ext, self.line.peer) != (ext, registrar[0])):
            if self.line is not None:
                self._shelve(self.line, failed=not old_answers)
            self.line = self._line_at(sess.site, ext, str(sip["password"]), registrar)
        elif not self.timings.backup_lines and (self.line is None or self.line.ext != ext):
            if self.line is not None:
                self.line.close()
            self.line = self._new_line(ext, str(sip["password"]), registrar)
        line = self.line
        assert line is not None  # every branch above leaves a line
        self._to(AgentState.REGISTERING, f"{registrar[0]}:{registrar[1]}" + (" (since the move)" if pre else ""))
        if old is not None and old != registrar and old_answers and not self.timings.backup_lines:
            # The contact at the site we left: removed where that site still answers.
            self._spawn(line.unregister_from(old), f"unregister-{self.account}")
        # The session channel and the registration at once: neither needs the other, and
        # in a mass move each waits on a different busy server.
        t0 = self.clock()
        channel = asyncio.ensure_future(self._open_channel(sess))
        try:
            ev = await (pre.task if pre is not None else self._register_line(line, registrar))
            t_line = self.clock() - t0
        finally:
            try:
                await channel
                channel_error = ""
            except (aiohttp.ClientError, TimeoutError) as exc:
                channel_error = type(exc).__name__
        t_channel = self.clock() - t0
        if channel_error:
            self._to(AgentState.REGISTERING, f"session channel: {channel_error}")
            return False
        if ev.kind is not LineEventKind.REGISTERED:
            self._to(AgentState.REGISTERING, f"registration failed: {ev.detail}")
            return False
        self._to(AgentState.AWAITING_CTI, f"line {t_line:.2f} s, channel {t_channel:.2f} s")
        await self._await_cti(sess)
        if not sess.cti.is_set():
            why = ("session ended" if sess.ended.is_set() else "CTI registration failed" if sess.cti_failed.is_set()
                   else "no CTI registration")
            self._to(AgentState.AWAITING_CTI, why)
            return False
        self._to(AgentState.READY, sess.how)
        self._keep_backups()
        return True

    def _alive_until(self, sess: _Session, asked: float, deadline: float) -> float:
        """Until when a request's answer is waited for: while the channel shows life (a
        message within ``heartbeat_misses`` intervals, counted from the request at the
        earliest: the channel was alive enough to be asked), and not past ``deadline``."""
        return min(deadline, max(asked, sess.last_server_hb) + self.timings.heartbeat_misses * sess.heartbeat_s)

    async def _heartbeat(self, sess: _Session, ws: aiohttp.ClientWebSocketResponse, now: float) -> None:
        """One client heartbeat: it pushes the session's deadline at the service."""
        sess.pushed_at = now
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(_HEARTBEAT)

    async def _await_cti(self, sess: _Session) -> None:
        """Until the CTI registration is pushed, or fails, or the session ends (a login this
        client gave up on can still complete at a busy service and replace this one: seen
        in a 1,000-agent failover), or the channel falls silent for ``heartbeat_misses``
        intervals or closes, or ``cti_timeout_s`` passes. Heartbeats go out meanwhile, as
        when ready: the session's deadline at the service runs from the last one (a wait
        without them outlived the session: "session ended" after 35 s, and a login again)."""
        hb = sess.heartbeat_s
        asked = self.clock()
        deadline = asked + self.timings.cti_timeout_s
        while not (sess.cti.is_set() or sess.ended.is_set() or sess.cti_failed.is_set()):
            if sess.ws is None or sess.ws.closed:
                return
            now = self.clock()
            if now >= sess.pushed_at + hb:
                await self._heartbeat(sess, sess.ws, now)
                continue  # the outcome may have come meanwhile
            left = self._alive_until(sess, asked, deadline) - now
            if left <= 0:
                return
            # Wakes for the next heartbeat at the latest: a closed channel is seen then. One
            # event, not a task per outcome: three tasks per agent were most of a
            # 5,000-agent simulator's CTI wait (py-spy).
            sess.changed.clear()
            await _set_or_timer(sess.changed, min(left, sess.pushed_at + hb - now))

    async def _open_channel(self, sess: _Session) -> None:
        if sess.ws is not None and not sess.ws.closed:
            return  # kept through a move in the channel
        b = sess.body
        async with asyncio.timeout(self.timings.login_timeout_s):
            sess.ws = await self.http.ws_connect(f"{sess.url}/v1/session/{b['session_id']}/ws?token={b['token']}",
                                                 heartbeat=None)
        sess.last_server_hb = self.clock()
        self._spawn(self._read_channel(sess, sess.ws), f"ws-{self.account}")

    async def _read_channel(self, sess: _Session, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            kind = data.get("type")
            sess.last_server_hb = self.clock()
            if self.session is sess and Signal.SESSION_CHANNEL in self.detector.failing:
                # heartbeats late (a busy service), now flowing again: the channel is fine
                self.detector.ok(Signal.SESSION_CHANNEL)
            if kind == "hello" and data.get("cti") == "cti_registered":
                sess.cti.set()
            elif kind == "cti" and data.get("state") == "registered" and data.get("site", sess.site) == sess.site:
                sess.cti.set()
            elif kind == "cti" and data.get("state") == "failed" and data.get("site", sess.site) == sess.site:
                sess.cti_failed.set()
            elif kind in ("moved", "move_refused"):
                if sess.move_reply is not None and not sess.move_reply.done():
                    if kind == "moved" and not isinstance(data.get("session"), dict):
                        data = {"type": "move_refused", "code": "bad_reply"}
                    elif kind == "moved":
                        self._moved(sess, data["session"])
                    sess.move_reply.set_result(data)
            elif kind == "pbx" and data.get("site") == sess.site:
                if data.get("state") == "up":
                    self.detector.ok(Signal.PBX_STATE)
                else:
                    self._pbx_down(sess, certain=bool(data.get("refused")))
            elif kind == "hello":
                if (data.get("pbx") or {}).get(sess.site, "up") != "up":
                    self.detector.fail(Signal.PBX_STATE)
            elif kind == "session" and data.get("state") == "ended":
                sess.ended.set()
                self._wake.set()
            if kind in ("hello", "cti", "session"):
                sess.changed.set()  # what the CTI wait looks for may have changed
        sess.changed.set()  # closed
        if sess.move_reply is not None and not sess.move_reply.done():
            sess.move_reply.set_exception(ConnectionError("session channel closed"))
        if self.session is sess:
            self.detector.fail(Signal.SESSION_CHANNEL)

    def _signals_changed(self) -> None:
        """The detector's ``on_change``. A change that confirms the failure (the second
        signal, one of them certain) moves the agent from here: MOVING at once, stamped by
        the signal that confirmed; the watch loop, woken, ends at its next pass and the move
        begins. Waiting for that pass to say so put the simulator's saturated loop (a pass
        over 10,000 agents) between the confirmation and its record. A hold still running
        is the watch loop's to end (its timer)."""
        if self._watching and self.state in (AgentState.READY, AgentState.SUSPECT) and self.detector.confirmed():
            self._confirmed = self._confirmation()
            self._to(AgentState.MOVING, self._confirmed)
        self._wake.set()

    def _failing(self) -> str:
        """The failing signals, as SUSPECT and MOVING events name them."""
        return ", ".join(s.value for s in self.detector.failing)

    def _confirmation(self) -> str:
        return "confirmed: " + self._failing()

    def _pbx_down(self, sess: _Session, certain: bool) -> None:
        """The session's site says its PBX is down. The second, different signal is asked
        for now (a SIP probe), not when the watch loop next runs, and the loop is not woken
        for the first signal alone: the probe's outcome wakes it (``_probed``). With 10,000
        agents told at once, each pass through the loop between the push and the probe's
        answer is a pass over all of them: a tenth of the simulator's core then (py-spy)."""
        watching = self.session is sess and self.state in (AgentState.READY, AgentState.SUSPECT)
        if not watching or not self._probe():
            self.detector.fail(Signal.PBX_STATE, certain=certain)
            return
        self.detector.fail(Signal.PBX_STATE, certain=certain, notify=False)
        if self.detector.confirmed():
            self._wake.set()  # with a signal already failing (a certain report after a silent one)
            return
        self._wake_on_probe = True
        if self.state is AgentState.READY:
            self._to(AgentState.SUSPECT, self._failing())

    def _on_line(self, ev: LineEvent) -> None:
        if ev.kind is LineEventKind.REGISTRATION_FAILED:
            # A backup line's refresh failed (its site went down): it tries again later.
            for site, backup in self.backups.items():
                if backup.registrar == ev.registrar:
                    self._start_backup(site, backup, self._retry_delay())
        if self.state not in (AgentState.READY, AgentState.SUSPECT):
            return
        if self.line is None or ev.registrar != self.line.registrar:
            return  # about a registrar the line has left
        if ev.kind is LineEventKind.REGISTRATION_FAILED:
            self.detector.fail(Signal.REGISTRATION)
        elif ev.kind is LineEventKind.REGISTERED:
            self.detector.ok(Signal.REGISTRATION)

    async def _watch(self, sess: _Session) -> str:
        """Until a confirmed failure (its description) or the session ends.

        Sleeps until the next thing is due (a probe, a heartbeat, a heartbeat deadline, the
        end of a confirmation hold) or something changes (a signal, the session channel):
        10,000 agents polling every 50 ms cost a core by themselves."""
        t = self.timings
        hb = sess.heartbeat_s
        probes = ProbeSchedule(t, self._rng, self.clock())
        # The first heartbeat an interval after the login, move or heartbeat that last pushed
        # the session's deadline (a thousand agents ready at once need not all say so again
        # at once), or now if that was long ago (a long wait for CTI).
        next_hb = sess.pushed_at + hb * (0.5 + 0.5 * self._rng.random())
        reconnecting: asyncio.Task[None] | None = None
        self._watching, self._confirmed = True, ""
        try:
            while not self._stopping:
                self._wake.clear()
                now = self.clock()
                if self._confirmed:  # by a signal, MOVING already (_signals_changed)
                    return self._confirmed
                if sess.ended.is_set():
                    return "session ended by the login service"
                if self.detector.confirmed():
                    return self._confirmation()
                failing = frozenset(self.detector.failing)
                want = AgentState.SUSPECT if failing else AgentState.READY
                if want is not self.state:
                    self._to(want, self._failing())
                probes.failing(failing, now)
                if probes.take(now):
                    self._probe()
                ws = sess.ws
                due = [probes.next, self.detector.confirm_at()]
                if ws is not None and not ws.closed:
                    if now >= next_hb:
                        next_hb = now + hb
                        await self._heartbeat(sess, ws, now)
                    late_at = sess.last_server_hb + t.heartbeat_misses * hb
                    if now > late_at:
                        self.detector.fail(Signal.SESSION_CHANNEL)
                    due += [next_hb, late_at]
                elif reconnecting is None or reconnecting.done():
                    self.detector.fail(Signal.SESSION_CHANNEL)
                    reconnecting = asyncio.create_task(self._reconnect(sess))
                    reconnecting.add_done_callback(lambda _: self._wake.set())
                delay = min(due) - self.clock()
                if delay > 0 and not self._wake.is_set():
                    await _set_or_timer(self._wake, delay + 0.001)
                else:
                    await asyncio.sleep(0)
            return "stopped"
        finally:
            self._watching = False
            if reconnecting is not None:
                reconnecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reconnecting

    def probe_timeout(self) -> float:
        """The full timeout to find a registrar gone; a short one to find it back."""
        t = self.timings
        return t.sip_recovery_probe_timeout_s if Signal.SIP_PROBE in self.detector.failing else t.sip_probe_timeout_s

    def _probe(self) -> bool:
        """Send one SIP probe; :meth:`_probed` reads its outcome. A callback, not a task:
        each of 10,000 agents probes at once in a failover's first second, and a task per
        probe (its creation and two more passes through the loop) was a tenth of the
        simulator's time then (py-spy). True if a probe is under way (sent now or before)."""
        if self._probing:
            # One probe at a time: during a suspicion burst (every 0.25 s, each waiting up
            # to 0.5 s) overlapping probes doubled the OPTIONS sent to a dead registrar and
            # the timers a 1,000-agent simulator had to run, for no earlier answer.
            return True
        line = self.line
        if line is None or line.registrar is None:
            return False
        self._probe_sent += 1
        seq = self._probe_sent
        self._probing = True
        try:
            # Read where the transport settles it (an answer, an ICMP error, the timer), not
            # in a done-callback one loop pass later (see SipTransport.request).
            line.send_probe(self.probe_timeout(), on_done=lambda f: self._probed(seq, line, f))
        except SipTimeout:  # the transport is closed: the agent is stopping
            self._probing = False
            return False
        return True

    def _probed(self, seq: int, line: PhoneLine, fut: asyncio.Future[Any]) -> None:
        self._probing = False
        if self._wake_on_probe:  # a change the watch loop has not seen yet (_pbx_down)
            self._wake_on_probe = False
            self._wake.set()
        if fut.cancelled() or line is not self.line:
            return  # a probe of the line the agent left (its timeout came after the move)
        exc = fut.exception()
        if exc is not None and not isinstance(exc, SipTimeout):
            return
        ok = exc is None
        # Probes overlap (one every interval, each waiting up to its timeout): a late
        # timeout of an older probe must not undo what a newer one already showed.
        if seq < self._probe_seen:
            return
        self._probe_seen = seq
        if ok:
            self.detector.ok(Signal.SIP_PROBE)
        else:
            self.detector.fail(Signal.SIP_PROBE)

    async def _reconnect(self, sess: _Session) -> None:
        """The session channel dropped: the login service accepting a new one clears both
        channel signals; refusing it is the second, different signal."""
        try:
            await self._open_channel(sess)
        except (aiohttp.ClientError, TimeoutError):
            self.detector.fail(Signal.LOGIN_SERVICE)
            await asyncio.sleep(0.5)
            return
        self.detector.ok(Signal.LOGIN_SERVICE)
        self.detector.ok(Signal.SESSION_CHANNEL)

    async def _leave(self, sess: _Session, why: str, logout: bool = False) -> None:
        """Close the channel. On a move there is no separate logout: the login at the other
        site replaces this session, and the service ends it there as a logout would
        (members removed where the PBX answers, virtual ID released, history "replaced"),
        which spared the old service a thousand logouts in a thousand-agent move."""
        if sess.ws is not None:
            await sess.ws.close()
        if self.session is sess:
            self.session = None
        if not logout:
            return
        b = sess.body

        async def post_logout() -> None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(self.timings.login_timeout_s):
                    async with self.http.post(f"{sess.url}/v1/logout", json={
                            "session_id": b["session_id"], "token": b["token"]}) as r:
                        await r.read()
        self._spawn(post_logout(), f"logout-{self.account}")

    # -- stop --------------------------------------------------------------------
    async def stop(self, logout: bool = True) -> None:
        """Log out (if asked and possible), un-register the line, end background work."""
        self._stopping = True
        self._wake.set()
        sess = self.session
        if logout and sess is not None:
            await self._leave(sess, "logout", logout=True)
        lines = [ln for ln in self.backups.values() if ln.state is LineState.REGISTERED]
        if self.line is not None and self.line.registrar is not None:
            lines.append(self.line)
        if lines:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await asyncio.gather(*(ln.unregister() for ln in lines), return_exceptions=True)
        for t in list(self._bg):
            if not t.get_name().startswith("logout-"):
                t.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        if self.line is not None:
            self.line.close()
        for backup in self.backups.values():
            backup.close()
        self.backups.clear()
        self._to(AgentState.LOGGED_OUT)


@functools.lru_cache(maxsize=64)
def _move_away(site: str) -> str:
    """The move message, serialized once per site: 10,000 agents ask for it in the same
    second, and ``json.dumps`` of each was 6 % of the simulator's core then (py-spy)."""
    return json.dumps({"type": "move", "away_from": site})


def _registrar(line_info: dict[str, Any]) -> tuple[str, int]:
    """The registrar of a line as a login or move reply describes it."""
    return str(line_info["registrar"]["host"]), int(line_info["registrar"]["port"])
