"""The settings tree. Frozen dataclasses; defaults live here, in code."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from controlplane.errors import ConfigError

PbxKind = Literal["asterisk", "freeswitch"]


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: an environment variable or a file, never the settings file.

    ``repr`` and ``str`` name the reference, never the value, so a secret that
    reaches a log line or a traceback shows as ``<secret env:NAME>``.
    """

    env: str | None = None
    file: Path | None = None

    def describe(self) -> str:
        return f"env:{self.env}" if self.env is not None else f"file:{self.file}"

    def __repr__(self) -> str:
        return f"<secret {self.describe()}>"

    __str__ = __repr__

    def reveal(self, path: str = "secret") -> str:
        """Read the secret. Raises :class:`ConfigError` naming ``path`` if it is missing."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError([f"{path}: environment variable {self.env} is not set"])
            return value
        assert self.file is not None
        try:
            return self.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read {self.file}: {exc.strerror}"]) from None


@dataclass(frozen=True)
class AmiLink:
    host: str
    port: int = 5038
    username: str = "ccdr"
    secret: SecretRef = field(default_factory=lambda: SecretRef(env="CCDR_AMI_SECRET"))


@dataclass(frozen=True)
class EslLink:
    host: str
    port: int = 8021
    password: SecretRef = field(default_factory=lambda: SecretRef(env="CCDR_ESL_PASSWORD"))


@dataclass(frozen=True)
class SipRegistrar:
    host: str
    port: int = 5060
    transport: Literal["udp", "tcp", "tls"] = "udp"


@dataclass(frozen=True)
class Site:
    id: str
    region: str
    pbx: PbxKind
    sip: SipRegistrar
    login_url: str
    ami: AmiLink | None = None
    esl: EslLink | None = None


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``initial_s * factor**n``, capped at ``max_s``, +/- ``jitter``."""

    initial_s: float = 1.0
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.1

    def delay(self, attempt: int, rand: float = 0.5) -> float:
        """Delay before retry ``attempt`` (0-based). ``rand`` in [0, 1) drives the jitter."""
        base = min(self.max_s, self.initial_s * self.factor**attempt)
        return max(0.0, base * (1.0 + self.jitter * (2.0 * rand - 1.0)))


@dataclass(frozen=True)
class GcPolicy:
    """The cyclic garbage collector in the long-lived processes (controlplane/runtime/gcpolicy.py)."""

    #: allocations (net) before a young collection: ~10 ms at most on this machine
    young_threshold: int = 20_000
    #: young collections before a middle one
    middle_threshold: int = 20
    #: a full collection this often (cyclic garbage that survived lives until then) ...
    full_interval_s: float = 300.0
    #: ... unless the process is busy, for this long at most
    defer_max_s: float = 60.0
    busy_poll_s: float = 1.0


@dataclass(frozen=True)
class MoveWave:
    """A mass move's queue adds held at the surviving site until its phones have registered
    (controlplane/login/wave.py)."""

    #: moved agents awaited at one site that make a wave (fewer: each is added at once)
    min_agents: int = 100
    #: neither a registration at the site nor a new move for this long: the rest are not
    #: coming soon, add now
    quiet_s: float = 2.0
    #: a hold never lasts longer than this
    max_hold_s: float = 15.0


@dataclass(frozen=True)
class Timings:
    """Controller timings. The 2 s detection budget is probe_interval + probe_timeout."""

    probe_interval_s: float = 0.5
    probe_timeout_s: float = 1.0
    confirm_window_s: float = 2.0
    connect_timeout_s: float = 3.0
    # A link the PBX closed: how long a fresh connection may take to be refused. A killed
    # PBX's port refuses at once (that is certain: the process is gone); a live one that
    # closed our session accepts. Longer is neither, and only delays the PBX_DOWN event.
    refusal_check_s: float = 0.2
    command_timeout_s: float = 5.0
    # Re-reading a big PBX after a reconnect (every queue member, every contact) takes
    # seconds: PJSIPShowContacts needed 2.4 s for 1,000 contacts on an idle lab.
    reconcile_timeout_s: float = 60.0
    #: AMI actions in flight per link. Asterisk answers one session's actions in order, so
    #: more in flight only queue there, but they keep it busy while our loop is: at 16, a
    #: login service saturated by 10,000 moves released one QueueAdd per slot per loop
    #: turn, and Asterisk b idled for 3.5 s before adding at full speed.
    max_in_flight: int = 64
    reconnect: Backoff = field(default_factory=Backoff)
    #: A link that had been up this long is tried again at once when it drops, before the
    #: backoff: a Ping timeout is noticed a second into a network blip, when the network may
    #: be back already, and a reconnect one backoff later (its SYN lost in the next blip,
    #: retried by TCP a second later) kept the PBX "down" two seconds of every blip in the
    #: lab's 1 s on / 1 s off drill. A link that drops sooner waits the backoff: against a
    #: PBX that accepts and then closes, at most one reconnect (and state re-read) a second.
    reconnect_at_once_after_s: float = 1.0
    gc: GcPolicy = field(default_factory=GcPolicy)
    move_wave: MoveWave = field(default_factory=MoveWave)

    def retry_at_once(self, up_for_s: float | None) -> bool:
        """Whether a link that dropped after ``up_for_s`` up (None: it never came up) is
        tried again at once rather than after the backoff (``reconnect_at_once_after_s``)."""
        return up_for_s is not None and up_for_s >= self.reconnect_at_once_after_s


@dataclass(frozen=True)
class Topology:
    sites: tuple[Site, ...]
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/ccdr"
    redis_url: str = "redis://127.0.0.1:6379/0"
    timings: Timings = field(default_factory=Timings)

    def site(self, site_id: str) -> Site:
        for s in self.sites:
            if s.id == site_id:
                return s
        known = ", ".join(s.id for s in self.sites)
        raise ConfigError([f"sites: no site {site_id!r} (known: {known})"])

    def other_sites(self, site_id: str) -> tuple[Site, ...]:
        return tuple(s for s in self.sites if s.id != site_id)
