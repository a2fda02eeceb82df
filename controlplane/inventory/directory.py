"""The login service's view of the inventory, in PostgreSQL (implements login.ports.Directory)."""

from __future__ import annotations

import time

import asyncpg

from controlplane.login.decide import AgentProfile, SwitchRule
from controlplane.login.ports import AgentRecord, Line

_ALLOCATE = """
UPDATE virtual_agent_ids SET session_id = $1
WHERE id = (SELECT id FROM virtual_agent_ids WHERE session_id IS NULL
            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id
"""


_AGENT = """
SELECT a.account, a.password_hash, a.system, a.home_region,
       coalesce(array_agg(s.skill_group ORDER BY s.skill_group) FILTER (WHERE s.skill_group IS NOT NULL), '{}')
           AS groups,
       coalesce(array_agg(s.penalty ORDER BY s.skill_group) FILTER (WHERE s.skill_group IS NOT NULL), '{}')
           AS penalties
FROM agents a LEFT JOIN agent_skills s ON s.account = a.account
WHERE a.account = $1
GROUP BY a.account
"""


# A moving session's line at the new site and its agent's queues there, in one round trip.
_MOVE_TARGET = """
SELECT l.extension, l.sip_username, l.sip_password,
       coalesce(array_agg(q.queue ORDER BY q.queue) FILTER (WHERE q.queue IS NOT NULL), '{}') AS queues,
       coalesce(array_agg(s.penalty ORDER BY q.queue) FILTER (WHERE q.queue IS NOT NULL), '{}') AS penalties
FROM device_lines l
LEFT JOIN agent_skills s ON s.account = $1
LEFT JOIN skill_group_queues q ON q.skill_group = s.skill_group AND q.site = l.site
WHERE l.mac = $2 AND l.site = $3
GROUP BY l.extension, l.sip_username, l.sip_password
"""

_MOVED = """
WITH m AS (INSERT INTO session_moves (session_id, from_site, to_site, extension) VALUES ($1, $2, $3, $4))
UPDATE sessions SET site = $3, extension = $4 WHERE id = $1
"""


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pool reset that sends nothing: the login path sets no session state (no LISTEN,
    no advisory locks, no SET), and asyncpg's default reset costs a round trip on every
    release, ~10 % of a login service's time in a login storm (py-spy)."""


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, reset=_keep_session)


class PgDirectory:
    RULES_TTL_S = 1.0  # a planned-switch rule takes effect within a second

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._rules: tuple[float, list[SwitchRule]] | None = None

    async def agent(self, account: str) -> AgentRecord | None:
        row = await self.pool.fetchrow(_AGENT, account)  # one round trip: the agent and its skills
        if row is None:
            return None
        groups = tuple(row["groups"])
        return AgentRecord(AgentProfile(row["account"], row["system"], row["home_region"], groups),
                           row["password_hash"], tuple(zip(groups, row["penalties"], strict=True)))

    async def line(self, mac: str, site: str) -> Line | None:
        row = await self.pool.fetchrow("SELECT extension, sip_username, sip_password FROM device_lines"
                                       " WHERE mac = $1 AND site = $2", mac, site)
        if row is None:
            return None
        return Line(site, row["extension"], row["sip_username"], row["sip_password"])

    async def queues(self, skill_groups: tuple[str, ...], site: str) -> dict[str, str]:
        rows = await self.pool.fetch("SELECT skill_group, queue FROM skill_group_queues"
                                     " WHERE site = $1 AND skill_group = ANY($2::text[])", site, list(skill_groups))
        return {r["skill_group"]: r["queue"] for r in rows}

    async def rules(self) -> list[SwitchRule]:
        now = time.monotonic()
        if self._rules is not None and now - self._rules[0] < self.RULES_TTL_S:
            return self._rules[1]
        rules = await self._read_rules()
        self._rules = (now, rules)
        return rules

    async def _read_rules(self) -> list[SwitchRule]:
        rows = await self.pool.fetch("SELECT id, scope, value, from_site, to_site, enabled"
                                     " FROM planned_switch_rules ORDER BY id")
        return [SwitchRule(r["scope"], r["value"], r["from_site"], r["to_site"], r["enabled"], r["id"])
                for r in rows]

    async def allocate_vaid(self, session_id: str) -> int | None:
        """Atomic: SKIP LOCKED hands concurrent callers different rows, and the UNIQUE
        session_id column makes a double allocation impossible even if that changed."""
        for _ in range(3):  # SKIP LOCKED may pass over rows other callers hold for a moment
            vid = await self.pool.fetchval(_ALLOCATE, session_id)
            if vid is not None:
                return int(vid)
            if not await self.pool.fetchval("SELECT EXISTS (SELECT 1 FROM virtual_agent_ids"
                                            " WHERE session_id IS NULL)"):
                return None
        return None

    async def release_vaid(self, session_id: str) -> None:
        await self.pool.execute("UPDATE virtual_agent_ids SET session_id = NULL WHERE session_id = $1", session_id)

    async def set_password_hash(self, account: str, old_hash: str, new_hash: str) -> None:
        await self.pool.execute("UPDATE agents SET password_hash = $3 WHERE account = $1 AND password_hash = $2",
                                account, old_hash, new_hash)

    async def session_started(self, session_id: str, account: str, site: str, mac: str, extension: str,
                              vaid: int, reason: str) -> None:
        await self.pool.execute("INSERT INTO sessions (id, account, site, mac, extension, vaid, reason)"
                                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                                session_id, account, site, mac, extension, vaid, reason)

    async def session_ended(self, session_id: str, why: str) -> None:
        await self.pool.execute("UPDATE sessions SET ended_at = now(), end_reason = $2"
                                " WHERE id = $1 AND ended_at IS NULL", session_id, why)

    async def move_target(self, account: str, mac: str, site: str) -> tuple[Line, list[tuple[str, int]]] | None:
        row = await self.pool.fetchrow(_MOVE_TARGET, account, mac, site)
        if row is None:
            return None
        line = Line(site, row["extension"], row["sip_username"], row["sip_password"])
        return line, list(zip(row["queues"], row["penalties"], strict=True))

    async def session_moved(self, session_id: str, from_site: str, to_site: str, extension: str) -> None:
        await self.pool.execute(_MOVED, session_id, from_site, to_site, extension)
