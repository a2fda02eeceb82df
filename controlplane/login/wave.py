"""A mass move's queue adds, held at the surviving site until its phones have registered.

app_queue scans every member of every queue for each device state change (shared notes,
"Queue membership"): a phone that registers after many members were added costs a scan of
all of them. A per-agent CTI registration adds each agent's members as soon as its own phone
registered, while thousands of others still register: O(N^2) scans. In the 10,000-agent
failover (session 14) Asterisk b's ``stasis/m:devicestate:all`` queue backed up to 4,251
messages and took a whole core for seconds after the registrations had ended, while app_queue
still showed members unavailable whose phones were registered. ``bench/bench_add_order.py``:
10,000 phones and members at b cost Asterisk 12.6-18.0 s of CPU added after each
registration, against 10.9-11.3 s registered first, then added.

So when many moved agents are awaited at a site (``min_agents``), their adds wait until the
wave of registrations has passed: fewer than ``min_agents`` still awaited, neither a
registration nor a new move for ``quiet_s`` (the rest are not coming soon), or ``max_hold_s``
since the hold began. Then
all go at once, pipelined. Logins never start a hold (a shift-start storm is spread over
minutes); a CTI registration at a site that holds waits with the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

from controlplane.runtime.clock import Clock
from controlplane.settings import MoveWave as WaveSettings

log = logging.getLogger(__name__)


class _State(enum.Enum):
    IDLE = "idle"  # fewer than min_agents awaited: adds go at once
    HOLDING = "holding"
    RELEASED = "released"  # held, then let go early (quiet, max hold): until the wave ends


class MoveWave:
    """Moved agents awaited at one site, and whether their queue adds must wait."""

    def __init__(self, site: str, settings: WaveSettings, clock: Clock) -> None:
        self.site = site
        self.settings = settings
        self.clock = clock
        self.awaited: set[str] = set()  # extensions of moved agents whose phone has not registered
        self.state = _State.IDLE
        self.holds = 0  # waves held (tests, metrics)
        self.released_by = ""  # why the last hold ended: "registered", "quiet", "max_hold"
        self._since = 0.0
        self._last_activity = 0.0  # the last move expected or registration seen
        self._open = asyncio.Event()
        self._open.set()
        self._watch: asyncio.Task[None] | None = None

    def expect(self, extension: str) -> None:
        """A moved agent's phone is to register here."""
        self.awaited.add(extension)
        # A growing wave is not a quiet one: at its start the moves come before any
        # registration does (10,000 agents: the first registrations reached the service
        # more than a second after the hold began, and a quiet_s counted from the hold let
        # the adds go with 1,116 phones still awaited).
        self._last_activity = self.clock.now()
        self._update()

    def registered(self, extension: str) -> None:
        if extension in self.awaited:
            self.awaited.discard(extension)
            self._last_activity = self.clock.now()
            self._update()

    def forget(self, extension: str) -> None:
        """The agent ended or went elsewhere: not awaited any more."""
        if extension in self.awaited:
            self.awaited.discard(extension)
            self._update()

    @property
    def holding(self) -> bool:
        return self.state is _State.HOLDING

    async def passage(self) -> None:
        """Return when queue adds at this site may go."""
        await self._open.wait()

    def _update(self) -> None:
        s = self.settings
        now = self.clock.now()
        if len(self.awaited) < s.min_agents:
            if self.state is _State.HOLDING:
                self._release("registered")
            self.state = _State.IDLE
            return
        if self.state is _State.IDLE:
            self.state = _State.HOLDING
            self.holds += 1
            self._since = now
            self._open.clear()
            # A warning: a mass move means a site failed or is being drained.
            log.warning("site %s: %d moved agents awaited; their queue adds wait for the registrations",
                        self.site, len(self.awaited))
            self._watch = asyncio.create_task(self._watcher(), name=f"move-wave-{self.site}")
            return
        if self.state is _State.HOLDING:
            if now - self._since >= s.max_hold_s:
                self._release("max_hold")
            elif now - self._last_activity >= s.quiet_s:
                self._release("quiet")

    def _release(self, why: str) -> None:
        log.warning("site %s: queue adds go (%s) after %.1f s; %d moved agents still awaited", self.site,
                    why, self.clock.now() - self._since, len(self.awaited))
        self.state = _State.RELEASED
        self.released_by = why
        self._open.set()
        watch, self._watch = self._watch, None
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()

    async def _watcher(self) -> None:
        """Ends a hold on time when nothing else happens (no registration, no move)."""
        s = self.settings
        while self.state is _State.HOLDING:
            due = min(self._since + s.max_hold_s, self._last_activity + s.quiet_s)
            await self.clock.sleep(max(0.0, due - self.clock.now()) + 1e-3)
            self._update()

    async def close(self) -> None:
        """Let every held add go (the service stops)."""
        watch, self._watch = self._watch, None
        if self.state is _State.HOLDING:
            self.state = _State.RELEASED
            self.released_by = "closed"
        self._open.set()
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
