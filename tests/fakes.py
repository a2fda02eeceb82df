"""Test doubles for the PBX side only (PostgreSQL and Redis are always real)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from controlplane.errors import PbxCommandError
from controlplane.login.decide import AgentProfile, SwitchRule
from controlplane.login.ports import AgentRecord, Line, LoginView
from controlplane.pbx.base import Contact, EventKind, LinkState, PbxClient, PbxEvent, QueueMember, Subscription
from controlplane.protocols.frame import Frame


class FakePbx(PbxClient):
    """Records every command; queue membership kept like app_queue would."""

    def __init__(self, site: str, up: bool = True) -> None:
        self.site = site
        self._state = LinkState.UP if up else LinkState.UNREACHABLE
        self.calls: list[tuple[Any, ...]] = []
        self.members: dict[str, dict[str, QueueMember]] = {}
        self.contact_list: list[str] = []  # what contacts() answers
        self.fail_adds: Exception | None = None  # raised by queue_add (a link dropping mid-way)
        self._subs: list[asyncio.Queue[PbxEvent]] = []

    @property
    def state(self) -> LinkState:
        return self._state

    def set_state(self, st: LinkState) -> None:
        self._state = st

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def events(self) -> Subscription:
        return Subscription(self._subs)

    def emit(self, kind: EventKind, **data: Any) -> PbxEvent:
        ev = PbxEvent(kind, self.site, time.monotonic(), data)
        for q in self._subs:
            q.put_nowait(ev)
        return ev

    async def ping(self) -> float:
        return 0.001

    async def queue_add(self, queue: str, interface: str, name: str = "", penalty: int = 0,
                        paused: bool = False) -> None:
        self.calls.append(("QueueAdd", queue, interface, name, penalty))
        if self.fail_adds is not None:
            raise self.fail_adds
        q = self.members.setdefault(queue, {})
        if interface in q:
            raise PbxCommandError("Unable to add interface: Already there")
        q[interface] = QueueMember(queue, interface, name, penalty, paused)

    async def queue_remove(self, queue: str, interface: str) -> None:
        self.calls.append(("QueueRemove", queue, interface))
        if self.members.get(queue, {}).pop(interface, None) is None:
            raise PbxCommandError("Unable to remove interface: Not there")

    async def queue_pause(self, queue: str, interface: str, paused: bool, reason: str = "") -> None:
        self.calls.append(("QueuePause", queue, interface, paused))

    async def queue_status(self, queue: str | None = None, member: str | None = None) -> list[QueueMember]:
        self.calls.append(("QueueStatus", queue, member))
        qs = [queue] if queue else list(self.members)
        return [m for q in qs for m in self.members.get(q, {}).values() if member in (None, m.interface)]

    async def contacts(self) -> list[Contact]:
        self.calls.append(("PJSIPShowContacts",))
        return [Contact(e, f"sip:{e}@10.0.0.1:5060", "Reachable") for e in self.contact_list]

    async def reload(self, module: str | None = None) -> None: ...

    async def originate(self, channel: str, context: str, exten: str, priority: int = 1,
                        variables: dict[str, str] | None = None, timeout_s: float = 30.0) -> Frame:
        raise NotImplementedError


class MemoryDirectory:
    """An in-memory Directory for manager unit tests; the PostgreSQL store is tested separately."""

    def __init__(self, hasher: Any, pool: int = 100) -> None:
        self.agents: dict[str, AgentRecord] = {}
        self.lines: dict[tuple[str, str], Line] = {}
        self.queue_map: dict[tuple[str, str], str] = {}
        self.rule_list: list[SwitchRule] = []
        self.free = list(range(1, pool + 1))
        self.held: dict[str, int] = {}
        self.hasher = hasher
        self.history: dict[str, dict[str, Any]] = {}
        self.moves: list[tuple[str, str, str, str]] = []

    def add_agent(self, account: str, password: str, system: str = "cards", region: str = "east",
                  skills: tuple[tuple[str, int], ...] = (("sales", 0),)) -> None:
        prof = AgentProfile(account, system, region, tuple(g for g, _ in skills))
        self.agents[account] = AgentRecord(prof, self.hasher.hash(password), skills)

    async def agent(self, account: str) -> AgentRecord | None:
        return self.agents.get(account)

    async def login_view(self, account: str, mac: str) -> LoginView | None:
        rec = self.agents.get(account)
        if rec is None:
            return None
        groups = {g for g, _ in rec.skill_penalties}
        return LoginView(rec, await self.device_lines(mac),
                         {(g, site): q for (g, site), q in self.queue_map.items() if g in groups})

    async def device_lines(self, mac: str) -> dict[str, Line]:
        return {site: line for (m, site), line in self.lines.items() if m == mac}

    async def queues(self, skill_groups: tuple[str, ...], site: str) -> dict[str, str]:
        return {g: self.queue_map[(g, site)] for g in skill_groups if (g, site) in self.queue_map}

    async def rules(self) -> list[SwitchRule]:
        return list(self.rule_list)

    async def open_session(self, session_id: str, account: str, site: str, mac: str, extension: str,
                           reason: str) -> int | None:
        if not self.free:
            return None
        v = self.free.pop(0)
        self.held[session_id] = v
        self.history[session_id] = {"account": account, "site": site, "mac": mac, "extension": extension,
                                    "vaid": v, "reason": reason, "end_reason": None}
        return v

    async def release_vaid(self, session_id: str) -> None:
        v = self.held.pop(session_id, None)
        if v is not None:
            self.free.append(v)

    async def set_password_hash(self, account: str, old_hash: str, new_hash: str) -> None:
        rec = self.agents[account]
        if rec.password_hash == old_hash:
            self.agents[account] = AgentRecord(rec.profile, new_hash, rec.skill_penalties)

    async def move_target(self, account: str, mac: str, site: str) -> tuple[Line, list[tuple[str, int]]] | None:
        line = self.lines.get((mac, site))
        rec = self.agents.get(account)
        if line is None or rec is None:
            return None
        qs = await self.queues(tuple(g for g, _ in rec.skill_penalties), site)
        pen = dict(rec.skill_penalties)
        return line, sorted((q, pen[g]) for g, q in qs.items())

    async def session_moved(self, session_id: str, from_site: str, to_site: str, extension: str) -> None:
        self.moves.append((session_id, from_site, to_site, extension))
        h = self.history.get(session_id)
        if h is not None:
            h["site"], h["extension"] = to_site, extension

    async def session_ended(self, session_id: str, why: str) -> None:
        h = self.history.get(session_id)
        if h is not None and h["end_reason"] is None:
            h["end_reason"] = why
