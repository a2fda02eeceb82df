"""The login service's view of the inventory, in PostgreSQL (implements login.ports.Directory)."""

from __future__ import annotations

import time

import asyncpg

from controlplane.login.decide import AgentProfile, SwitchRule
from controlplane.login.ports import AgentRecord, Line, LoginView
from controlplane.runtime.batch import Batcher

_ALLOCATE = """
UPDATE virtual_agent_ids SET session_id = $1
WHERE id = (SELECT id FROM virtual_agent_ids WHERE session_id IS NULL
            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id
"""

# A login's ID and its history row, for the logins in flight, in one statement
# (controlplane.runtime.batch): in a storm the allocation's own UPDATE was 7 % of a service
# and the history INSERT its own round trip (py-spy, session 12). Rows another transaction
# holds are skipped, as above; a request left without a row (a short pool, or rows skipped)
# takes the one-at-a-time path, which tells "exhausted" from "busy". Row n goes to request n;
# the UNIQUE session_id still guards.
_OPEN_MANY = """
WITH req AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bpchar[], $5::text[], $6::text[])
             WITH ORDINALITY AS r(sid, account, site, mac, extension, reason, i)),
     free AS (SELECT id FROM virtual_agent_ids WHERE session_id IS NULL
              ORDER BY id LIMIT cardinality($1::text[]) FOR UPDATE SKIP LOCKED),
     pick AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM free),
     got AS (UPDATE virtual_agent_ids v SET session_id = req.sid
             FROM pick JOIN req ON req.i = pick.n
             WHERE v.id = pick.id
             RETURNING req.i, v.id, req.sid, req.account, req.site, req.mac, req.extension, req.reason),
     hist AS (INSERT INTO sessions (id, account, site, mac, extension, vaid, reason)
              SELECT sid, account, site, mac, extension, id, reason FROM got)
SELECT i, id FROM got
"""


# A login's whole read, one round trip: the agent and its skills, the device's line at every
# site, the agent's queues at every site. Three queries before (session 11, login storm).
# The logins in flight read together (controlplane.runtime.batch): in a storm each login's own
# round trip was 8 % of a service (py-spy), most of it the socket write. ``i`` keeps each row
# with its request; an unknown account has no row.
_LOGIN_VIEWS = """
SELECT r.i, a.account, a.password_hash, a.system, a.home_region,
       coalesce((SELECT array_agg(s.skill_group ORDER BY s.skill_group) FROM agent_skills s
                 WHERE s.account = a.account), '{}') AS groups,
       coalesce((SELECT array_agg(s.penalty ORDER BY s.skill_group) FROM agent_skills s
                 WHERE s.account = a.account), '{}') AS penalties,
       (SELECT array_agg(ARRAY[l.site, l.extension, l.sip_username, l.sip_password] ORDER BY l.site)
        FROM device_lines l WHERE l.mac = r.mac) AS lines,
       (SELECT array_agg(ARRAY[q.skill_group, q.site, q.queue] ORDER BY q.skill_group, q.site)
        FROM skill_group_queues q JOIN agent_skills s ON s.skill_group = q.skill_group
        WHERE s.account = a.account) AS queues
FROM unnest($1::text[], $2::bpchar[]) WITH ORDINALITY AS r(account, mac, i)
JOIN agents a ON a.account = r.account
"""

_STARTED = """
INSERT INTO sessions (id, account, site, mac, extension, vaid, reason)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bpchar[], $5::text[], $6::int[], $7::text[])
"""

# Moving sessions' lines at their new site and their agents' queues there: one round trip
# for a whole batch (controlplane.runtime.batch). ``i`` keeps each row with its request.
_MOVE_TARGETS = """
SELECT r.i, l.extension, l.sip_username, l.sip_password,
       coalesce(array_agg(q.queue ORDER BY q.queue) FILTER (WHERE q.queue IS NOT NULL), '{}') AS queues,
       coalesce(array_agg(s.penalty ORDER BY q.queue) FILTER (WHERE q.queue IS NOT NULL), '{}') AS penalties
FROM unnest($1::text[], $2::bpchar[], $3::text[]) WITH ORDINALITY AS r(account, mac, site, i)
JOIN device_lines l ON l.mac = r.mac AND l.site = r.site
LEFT JOIN agent_skills s ON s.account = r.account
LEFT JOIN skill_group_queues q ON q.skill_group = s.skill_group AND q.site = l.site
GROUP BY r.i, l.extension, l.sip_username, l.sip_password
"""

_MOVED = """
WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY
           AS r(session_id, from_site, to_site, extension, i)),
     m AS (INSERT INTO session_moves (session_id, from_site, to_site, extension)
           SELECT session_id, from_site, to_site, extension FROM r ORDER BY i)
UPDATE sessions s SET site = last.to_site, extension = last.extension
FROM (SELECT DISTINCT ON (session_id) session_id, to_site, extension FROM r ORDER BY session_id, i DESC) last
WHERE s.id = last.session_id
"""

MoveKey = tuple[str, str, str]  # (account, mac, site)
OpenKey = tuple[str, str, str, str, str, str]  # (session_id, account, site, mac, extension, reason)
MoveTarget = tuple[Line, list[tuple[str, int]]] | None


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
        self._views: Batcher[tuple[str, str], LoginView | None] = Batcher(self._login_views)
        self._targets: Batcher[MoveKey, MoveTarget] = Batcher(self._move_targets)
        self._moves: Batcher[tuple[str, str, str, str], None] = Batcher(self._sessions_moved)
        self._started: Batcher[tuple[str, str, str, str, str, int, str], None] = Batcher(self._sessions_started)
        self._opens: Batcher[OpenKey, int | None] = Batcher(self._open_many)

    async def login_view(self, account: str, mac: str) -> LoginView | None:
        return await self._views.call((account, mac))

    async def _login_views(self, keys: list[tuple[str, str]]) -> list[LoginView | None]:
        rows = await self.pool.fetch(_LOGIN_VIEWS, [k[0] for k in keys], [k[1] for k in keys])
        out: list[LoginView | None] = [None] * len(keys)
        for row in rows:
            groups = tuple(row["groups"])
            agent = AgentRecord(AgentProfile(row["account"], row["system"], row["home_region"], groups),
                                row["password_hash"], tuple(zip(groups, row["penalties"], strict=True)))
            lines = {site: Line(site, ext, user, pw) for site, ext, user, pw in row["lines"] or ()}
            queues = {(g, site): q for g, site, q in row["queues"] or ()}
            out[row["i"] - 1] = LoginView(agent, lines, queues)
        return out

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

    async def open_session(self, session_id: str, account: str, site: str, mac: str, extension: str,
                           reason: str) -> int | None:
        """Batched with the logins in flight; one left without an ID tries alone."""
        key = (session_id, account, site, mac, extension, reason)
        vid = await self._opens.call(key)
        if vid is not None:
            return vid
        vid = await self.allocate_vaid(session_id)
        if vid is not None:
            try:
                await self.session_started(session_id, account, site, mac, extension, vid, reason)
            except BaseException:
                await self.release_vaid(session_id)
                raise
        return vid

    async def _open_many(self, keys: list[OpenKey]) -> list[int | None]:
        out: list[int | None] = [None] * len(keys)
        for r in await self.pool.fetch(_OPEN_MANY, *([k[j] for k in keys] for j in range(6))):
            out[r["i"] - 1] = int(r["id"])
        return out

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
        """Batched: in a login storm the history rows of the logins in flight go in one INSERT."""
        await self._started.call((session_id, account, site, mac, extension, vaid, reason))

    async def _sessions_started(self, rows: list[tuple[str, str, str, str, str, int, str]]) -> list[None]:
        await self.pool.execute(_STARTED, *([r[k] for r in rows] for k in range(7)))
        return [None] * len(rows)

    async def session_ended(self, session_id: str, why: str) -> None:
        await self.pool.execute("UPDATE sessions SET ended_at = now(), end_reason = $2"
                                " WHERE id = $1 AND ended_at IS NULL", session_id, why)

    async def move_target(self, account: str, mac: str, site: str) -> MoveTarget:
        return await self._targets.call((account, mac, site))

    async def _move_targets(self, keys: list[MoveKey]) -> list[MoveTarget]:
        rows = await self.pool.fetch(_MOVE_TARGETS, [k[0] for k in keys], [k[1] for k in keys],
                                     [k[2] for k in keys])
        out: list[MoveTarget] = [None] * len(keys)
        for r in rows:
            site = keys[r["i"] - 1][2]
            out[r["i"] - 1] = (Line(site, r["extension"], r["sip_username"], r["sip_password"]),
                               list(zip(r["queues"], r["penalties"], strict=True)))
        return out

    async def session_moved(self, session_id: str, from_site: str, to_site: str, extension: str) -> None:
        await self._moves.call((session_id, from_site, to_site, extension))

    async def _sessions_moved(self, rows: list[tuple[str, str, str, str]]) -> list[None]:
        await self.pool.execute(_MOVED, *([r[k] for r in rows] for k in range(4)))
        return [None] * len(rows)
