"""The one async interface every PBX adapter implements, and its normalized events."""

from __future__ import annotations

import abc
import asyncio
import enum
from dataclasses import dataclass, field
from typing import Any

from controlplane.protocols.frame import Frame


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    UNREACHABLE = "unreachable"  # refused, timed out, frozen (SIGSTOP) or cut off
    AUTH_FAILED = "auth_failed"  # a distinct state: we do not retry bad credentials in silence
    CLOSED = "closed"  # closed by us


class EventKind(enum.Enum):
    PBX_UP = "pbx_up"
    PBX_DOWN = "pbx_down"
    PBX_AUTH_FAILED = "pbx_auth_failed"
    PHONE_REGISTERED = "phone_registered"
    PHONE_UNREGISTERED = "phone_unregistered"
    QUEUE_MEMBER_ADDED = "queue_member_added"
    QUEUE_MEMBER_REMOVED = "queue_member_removed"
    QUEUE_MEMBER_PAUSED = "queue_member_paused"
    QUEUE_MEMBER_STATUS = "queue_member_status"
    TRUNK_REGISTRATION = "trunk_registration"
    DEVICE_STATE = "device_state"


@dataclass(frozen=True)
class PbxEvent:
    """A normalized event. ``data`` holds the normalized fields; ``raw`` the frame as sent."""

    kind: EventKind
    site: str
    at: float  # monotonic seconds
    data: dict[str, Any] = field(default_factory=dict)
    raw: Frame | None = None


class Subscription:
    """An event subscription, registered the moment it is created (an async
    generator would only subscribe at its first iteration, losing what came before)."""

    def __init__(self, subs: list[asyncio.Queue[PbxEvent]]) -> None:
        self._subs = subs
        self.queue: asyncio.Queue[PbxEvent] = asyncio.Queue()
        subs.append(self.queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> PbxEvent:
        if self.queue not in self._subs:
            raise StopAsyncIteration
        return await self.queue.get()

    async def aclose(self) -> None:
        if self.queue in self._subs:
            self._subs.remove(self.queue)


@dataclass(frozen=True)
class QueueMember:
    queue: str
    interface: str  # e.g. PJSIP/1001 (Asterisk) or agent name (FreeSWITCH)
    name: str = ""
    penalty: int = 0
    paused: bool = False
    status: str = ""  # device status as the PBX reports it


@dataclass(frozen=True)
class Contact:
    """A registered phone contact."""

    endpoint: str  # AOR/endpoint (Asterisk) or user@domain (FreeSWITCH)
    uri: str
    status: str = ""


class PbxClient(abc.ABC):
    """A link to one site's PBX.

    Commands may be pipelined (many in flight, bounded by settings). A command in
    flight when the link drops raises :class:`controlplane.errors.LinkLost`; it is
    re-sent only if idempotent.
    """

    site: str
    #: the PBX closed the link and its management port now refuses connections: the
    #: process is gone (killed, crashed, stopped), which a frozen PBX (accepts and says
    #: nothing) or a cut-off one (connections hang) never shows. Certain where a missed
    #: Ping is not: clients may act on it without waiting out a transient blip. Carried in
    #: PBX_DOWN's ``data["refused"]``; a PBX_DOWN is published again when it turns true.
    refused: bool = False

    @property
    @abc.abstractmethod
    def state(self) -> LinkState: ...

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the supervised connection task; returns once the first attempt ended."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every task of this client and close the link."""

    @abc.abstractmethod
    def events(self) -> Subscription:
        """A new subscription to normalized events (each subscriber gets every event)."""

    @abc.abstractmethod
    async def ping(self) -> float:
        """Round-trip time of one liveness probe, in seconds."""

    @abc.abstractmethod
    async def queue_add(
        self, queue: str, interface: str, name: str = "", penalty: int = 0, paused: bool = False
    ) -> None: ...

    @abc.abstractmethod
    async def queue_remove(self, queue: str, interface: str) -> None: ...

    @abc.abstractmethod
    async def queue_pause(self, queue: str, interface: str, paused: bool, reason: str = "") -> None: ...

    @abc.abstractmethod
    async def queue_status(self, queue: str | None = None, member: str | None = None) -> list[QueueMember]:
        """Members of ``queue`` (all queues if None), only ``member`` if given."""

    @abc.abstractmethod
    async def contacts(self) -> list[Contact]: ...

    def known_contacts(self) -> set[str]:
        """Endpoints (extensions) this client believes registered, from its events and its
        last re-read; no PBX round trip. Empty when the adapter keeps no such picture."""
        return set()

    @abc.abstractmethod
    async def reload(self, module: str | None = None) -> None: ...

    @abc.abstractmethod
    async def originate(self, channel: str, context: str, exten: str, priority: int = 1,
                        variables: dict[str, str] | None = None, timeout_s: float = 30.0) -> Frame: ...
