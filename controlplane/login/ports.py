"""What the login service needs from the rest of ccdr, as narrow interfaces.

The inventory store (PostgreSQL) implements :class:`Directory`; PBX adapters
implement :class:`controlplane.pbx.base.PbxClient`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from controlplane.login.decide import AgentProfile, SwitchRule


@dataclass(frozen=True)
class AgentRecord:
    profile: AgentProfile
    password_hash: str  # argon2; "" when an external authenticator decides
    skill_penalties: tuple[tuple[str, int], ...]  # (skill group, penalty)


@dataclass(frozen=True)
class Line:
    """A device's line at one site."""

    site: str
    extension: str
    sip_username: str
    sip_password: str  # secret: never logged, only returned to the client over the login reply


@dataclass(frozen=True)
class LoginView:
    """Everything a login reads from the inventory, whatever site it lands on."""

    agent: AgentRecord
    lines: dict[str, Line]  # site -> the device's line there
    queues: dict[tuple[str, str], str]  # (skill group, site) -> queue, for the agent's groups

    def queues_at(self, site: str) -> dict[str, str]:
        """Skill group -> queue name at ``site`` (groups without a queue there are left out)."""
        return {g: q for (g, s), q in self.queues.items() if s == site}


class Directory(Protocol):
    async def login_view(self, account: str, mac: str) -> LoginView | None:
        """The agent, the device's lines at every site and the agent's queues at every site,
        in one round trip; None if there is no such agent."""
        ...

    async def rules(self) -> list[SwitchRule]: ...

    async def open_session(self, session_id: str, account: str, site: str, mac: str, extension: str,
                           reason: str) -> int | None:
        """Atomically take a free virtual agent ID for ``session_id`` and record the session
        in the history with it (the live session is in Redis); None if the pool is
        exhausted (then nothing is recorded)."""
        ...

    async def release_vaid(self, session_id: str) -> None: ...

    async def set_password_hash(self, account: str, old_hash: str, new_hash: str) -> None:
        """Replace ``old_hash`` (only if it is still the stored one: a concurrent rehash wins once)."""
        ...

    async def session_ended(self, session_id: str, why: str) -> None: ...

    async def move_target(self, account: str, mac: str, site: str) -> tuple[Line, list[tuple[str, int]]] | None:
        """For a session moving to ``site``: the device's line there and the agent's queues
        there with their penalties (one round trip); None if the device has no line there."""
        ...

    async def session_moved(self, session_id: str, from_site: str, to_site: str, extension: str) -> None:
        """Record a move in the history (the session keeps its id and virtual agent ID)."""
        ...
