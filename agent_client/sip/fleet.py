"""A fleet of phone lines on one socket: rate-limited registration and fleet moves.

A mass move (site failover) must not storm the registrar: Asterisk 22 completes
~2,000 REGISTER/s and beyond ~2,500/s offered, UDP retransmissions pile up
(/work/shared/notes/asterisk-at-scale.md). Every REGISTER of the fleet - first
registration, refresh, move - passes one token bucket; refreshes are also spread
by the lines' jittered refresh timers.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .transport import Addr, SipTimers, SipTransport
from .ua import LineEvent, LineEventKind, PhoneLine, RefreshPolicy


@dataclass(frozen=True)
class FleetSettings:
    #: REGISTER requests per second offered by the whole fleet (below Asterisk's ~2,000/s).
    register_rate: float = 1500.0
    #: requests that may go at once before the rate applies
    burst: int = 50
    expires: int = 300
    refresh: RefreshPolicy = field(default_factory=RefreshPolicy)
    timers: SipTimers = field(default_factory=SipTimers)


class TokenBucket:
    """Reservation token bucket: each caller books the next free slot, FIFO, O(1)."""

    def __init__(self, rate: float, burst: int, time: Callable[[], float]) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate, self.burst, self._time = rate, burst, time
        self._next = 0.0

    def reserve(self) -> float:
        """Book a token; returns how long the caller must wait before using it."""
        now = self._time()
        horizon = now - self.burst / self.rate  # an idle bucket holds `burst` tokens
        self._next = max(self._next, horizon) + 1.0 / self.rate
        return max(0.0, self._next - now)

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass
class FleetReport:
    phones: int
    registered: int
    failures: int
    seconds: float
    latencies: list[float]
    failure_details: list[str]
    retransmissions: int

    @property
    def rate(self) -> float:
        return self.registered / self.seconds if self.seconds > 0 else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]

    def summary(self) -> str:
        mx = max(self.latencies, default=0.0)
        return (
            f"{self.registered}/{self.phones} registered in {self.seconds:.2f} s ({self.rate:.0f}/s), "
            f"latency p50 {self.pct(50) * 1000:.1f} ms p95 {self.pct(95) * 1000:.1f} ms max {mx * 1000:.1f} ms, "
            f"failures {self.failures}, retransmissions {self.retransmissions}"
        )


class PhoneFleet:
    def __init__(
        self, transport: SipTransport, exts: Iterable[str], password: Callable[[str], str], settings: FleetSettings
    ) -> None:
        self.transport = transport
        self.settings = settings
        self.bucket = TokenBucket(settings.register_rate, settings.burst, transport.clock.time)
        self.lines = [
            PhoneLine(transport, e, password(e), refresh=settings.refresh, gate=self.bucket.acquire) for e in exts
        ]

    @classmethod
    async def open(
        cls,
        exts: Iterable[str],
        *,
        password: Callable[[str], str],
        host: str = "0.0.0.0",
        port: int = 0,
        settings: FleetSettings | None = None,
    ) -> PhoneFleet:
        s = settings or FleetSettings()
        t = await SipTransport.open(host, port, timers=s.timers)
        return cls(t, exts, password, s)

    async def _run(self, registrar: Addr, expires: int) -> FleetReport:
        t0 = self.transport.clock.time()
        rtx0 = self.transport.stats.retransmissions
        events: list[LineEvent] = await asyncio.gather(*(ln.register(registrar, expires) for ln in self.lines))
        secs = self.transport.clock.time() - t0
        ok = [e for e in events if e.kind is LineEventKind.REGISTERED]
        bad = [
            f"{ln.ext}: {e.detail}"
            for ln, e in zip(self.lines, events, strict=True)
            if e.kind is not LineEventKind.REGISTERED
        ]
        return FleetReport(
            phones=len(self.lines),
            registered=len(ok),
            failures=len(bad),
            seconds=secs,
            latencies=sorted(e.latency for e in ok),
            failure_details=bad[:20],
            retransmissions=self.transport.stats.retransmissions - rtx0,
        )

    async def register_all(self, registrar: Addr) -> FleetReport:
        return await self._run(registrar, self.settings.expires)

    async def re_register_all(self, new_registrar: Addr) -> FleetReport:
        """Move the whole fleet to ``new_registrar`` (the failover move), through the same rate limit."""
        return await self._run(new_registrar, self.settings.expires)

    async def unregister_all(self) -> None:
        await asyncio.gather(*(ln.unregister() for ln in self.lines if ln.registrar is not None))

    def close(self) -> None:
        for ln in self.lines:
            ln.close()
        self.transport.close()
