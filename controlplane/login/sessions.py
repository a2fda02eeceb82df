"""Live login sessions in Redis, shared by the login services of every site.

A session is a hash ``sess:<id>`` plus its deadline in the sorted set
``sess:deadlines``. Heartbeats push the deadline forward. A reaper (any login
service) claims expired sessions with ZREM, which succeeds for exactly one
claimant, so a dead client's queue memberships are removed once, by one
service, even with several services reaping at the same time. Key expiry
notifications were not used: Redis does not guarantee their delivery.

Time is passed in (``now``), never read here, so tests drive it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis

from controlplane.runtime.batch import Batcher

# Re-home a live session in place: only if it is still live (in the deadline set).
_MOVE = ("if redis.call('zscore', KEYS[2], ARGV[2]) == false then return 0 end"
         " redis.call('zadd', KEYS[2], ARGV[1], ARGV[2])"
         " for i = 3, #ARGV, 2 do redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1]) end return 1")
# Set a session's state only while it is at the given site.
_STATE_AT = ("if redis.call('hget', KEYS[1], 'site') == ARGV[1] then"
             " redis.call('hset', KEYS[1], 'state', ARGV[2]) return 1 end return 0")


@dataclass
class LiveSession:
    id: str
    account: str
    site: str
    extension: str
    vaid: int
    mac: str
    queues: list[tuple[str, int]] = field(default_factory=list)  # (queue, penalty)
    state: str = "awaiting_phone"  # -> cti_registered -> (logged out / reaped)
    created_at: float = 0.0

    def to_redis(self) -> dict[Any, Any]:  # redis-py types keys invariantly
        d = asdict(self)
        d["queues"] = json.dumps(self.queues)
        return {k: str(v) for k, v in d.items()}

    @classmethod
    def from_redis(cls, h: Mapping[Any, Any]) -> LiveSession:
        d = {_text(k): _text(v) for k, v in h.items()}
        return cls(
            id=d["id"], account=d["account"], site=d["site"], extension=d["extension"],
            vaid=int(d["vaid"]), mac=d["mac"],
            queues=[(q, int(p)) for q, p in json.loads(d["queues"])],
            state=d["state"], created_at=float(d["created_at"]),
        )


def _text(x: object) -> str:
    """redis-py returns bytes (or str with decode_responses); accept both."""
    return x.decode() if isinstance(x, bytes) else str(x)


class SessionStore:
    def __init__(self, redis: Redis, prefix: str = "ccdr:", ttl_s: float = 30.0) -> None:
        self.redis = redis
        self.p = prefix
        self.ttl_s = ttl_s
        # The calls of a mass move, batched into pipelines: one round trip per call was
        # most of a login service's CPU while 1,000 agents moved (redis-py's per-command
        # connection checkout and socket write, not Redis itself).
        self._gets: Batcher[str, LiveSession | None] = Batcher(self._get_many)
        self._with_tokens: Batcher[str, tuple[LiveSession | None, str | None]] = Batcher(self._with_token_many)
        self._moves: Batcher[tuple[LiveSession, float], bool] = Batcher(self._move_many)
        self._states_at: Batcher[tuple[str, str, str], bool] = Batcher(self._set_state_at_many)
        self._heartbeats: Batcher[tuple[str, float], bool] = Batcher(self._heartbeat_many)
        self._puts: Batcher[tuple[LiveSession, float, str | None], str | None] = Batcher(self._put_many)

    def _k(self, sid: str) -> str:
        return f"{self.p}sess:{sid}"

    @property
    def _deadlines(self) -> str:
        return f"{self.p}sess:deadlines"

    def _acct(self, account: str) -> str:
        return f"{self.p}sess:acct:{account}"

    async def put(self, s: LiveSession, now: float, token: str | None = None) -> str | None:
        """Store ``s`` (and its channel ``token``, in the same round trip); returns the id of
        a session it replaces for the same account, if any. The logins in flight store theirs
        in one MULTI (each as if alone: two logins of one account in a batch, the later one
        replaces the earlier)."""
        return await self._puts.call((s, now, token))

    async def _put_many(self, calls: list[tuple[LiveSession, float, str | None]]) -> list[str | None]:
        firsts: list[int] = []  # where each session's GETSET answer is among the replies
        async with self.redis.pipeline(transaction=True) as p:
            n = 0
            for s, now, token in calls:
                firsts.append(n)
                p.getset(self._acct(s.account), s.id)
                p.hset(self._k(s.id), mapping=s.to_redis())
                p.zadd(self._deadlines, {s.id: now + self.ttl_s})
                n += 3
                if token is not None:
                    p.set(self.token_key(s.id), token)
                    n += 1
            replies = await p.execute()
        out: list[str | None] = []
        for (s, _, _), i in zip(calls, firsts, strict=True):
            prev = _text(replies[i]) if replies[i] else None
            out.append(prev if prev != s.id else None)
        return out

    async def current(self, account: str) -> str | None:
        """The id of the account's live session, if any (the newest login wins)."""
        v = await self.redis.get(self._acct(account))
        return _text(v) if v else None

    async def get(self, sid: str) -> LiveSession | None:
        return await self._gets.call(sid)

    async def _get_many(self, sids: list[str]) -> list[LiveSession | None]:
        async with self.redis.pipeline(transaction=False) as p:
            for sid in sids:
                p.hgetall(self._k(sid))
            rows = await p.execute()
        return [LiveSession.from_redis(h) if h else None for h in rows]

    async def set_state(self, sid: str, state: str, site: str | None = None) -> bool:
        """Set the state; with ``site``, only while the session is still at that site (a CTI
        registration finishing at the old site after the session moved must not mark it)."""
        if site is None:
            await self.redis.hset(self._k(sid), "state", state)
            return True
        return await self._states_at.call((sid, state, site))

    async def _set_state_at_many(self, calls: list[tuple[str, str, str]]) -> list[bool]:
        async with self.redis.pipeline(transaction=False) as p:
            for sid, state, site in calls:
                p.eval(_STATE_AT, 1, self._k(sid), site, state)
            return [bool(x) for x in await p.execute()]

    async def with_token(self, sid: str) -> tuple[LiveSession | None, str | None]:
        """The session and its token."""
        return await self._with_tokens.call(sid)

    async def _with_token_many(self, sids: list[str]) -> list[tuple[LiveSession | None, str | None]]:
        async with self.redis.pipeline(transaction=False) as p:
            for sid in sids:
                p.hgetall(self._k(sid))
                p.get(self.token_key(sid))
            rows = await p.execute()
        return [((LiveSession.from_redis(h) if h else None), (_text(tok) if tok is not None else None))
                for h, tok in zip(rows[::2], rows[1::2], strict=True)]

    def token_key(self, sid: str) -> str:
        return f"{self.p}sess:token:{sid}"

    async def check_token(self, sid: str, token: str) -> bool:
        stored = await self.redis.get(self.token_key(sid))
        return stored is not None and secrets.compare_digest(_text(stored), token)

    async def drop_token(self, sid: str) -> None:
        await self.redis.delete(self.token_key(sid))

    async def move(self, s: LiveSession, now: float) -> bool:
        """Re-home a live session in place (same id, token and virtual ID): its site,
        extension and queues change, it waits for its phone again, its deadline is pushed.
        False if it ended meanwhile (nothing written then)."""
        return await self._moves.call((s, now))

    async def _move_many(self, calls: list[tuple[LiveSession, float]]) -> list[bool]:
        async with self.redis.pipeline(transaction=False) as p:
            for s, now in calls:
                fields = s.to_redis()
                args: list[str] = []
                for k in ("site", "extension", "queues", "state"):
                    args += [k, fields[k]]
                p.eval(_MOVE, 2, self._k(s.id), self._deadlines, str(now + self.ttl_s), s.id, *args)
            return [bool(x) for x in await p.execute()]

    async def heartbeat(self, sid: str, now: float) -> bool:
        """Push the deadline; False if the session is gone (reaped or logged out). Batched:
        10,000 agents heartbeat 1,000 times a second."""
        return await self._heartbeats.call((sid, now))

    async def _heartbeat_many(self, calls: list[tuple[str, float]]) -> list[bool]:
        async with self.redis.pipeline(transaction=False) as p:
            for sid, now in calls:
                p.zadd(self._deadlines, {sid: now + self.ttl_s}, xx=True)  # only a live one
                p.zscore(self._deadlines, sid)
            rows = await p.execute()
        return [score is not None for score in rows[1::2]]

    async def claim(self, sid: str) -> LiveSession | None:
        """Take a session out of the live set; only one caller gets it."""
        if not await self.redis.zrem(self._deadlines, sid):
            return None
        return await self._drop(sid)

    async def _drop(self, sid: str) -> LiveSession | None:
        s = await self.get(sid)
        async with self.redis.pipeline(transaction=True) as p:
            p.delete(self._k(sid))
            if s is not None:
                # Only clear the account pointer if it still points at this session.
                p.eval(
                    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
                    1, self._acct(s.account), sid,
                )
            await p.execute()
        return s

    async def claim_expired(self, now: float, limit: int = 500) -> list[LiveSession]:
        """Claim up to ``limit`` sessions whose deadline passed."""
        ids = await self.redis.zrangebyscore(self._deadlines, "-inf", now, start=0, num=limit)
        out = []
        for raw in ids:
            s = await self.claim(_text(raw))
            if s is not None:
                out.append(s)
        return out

    async def all(self) -> list[LiveSession]:
        """Every live session, read in pipelined batches: one HGETALL round trip per session
        took seconds for 10,000 sessions and starved the service's event loop."""
        ids = [_text(x) for x in await self.redis.zrange(self._deadlines, 0, -1)]
        out = []
        for i in range(0, len(ids), 1000):
            async with self.redis.pipeline(transaction=False) as p:
                for sid in ids[i:i + 1000]:
                    p.hgetall(self._k(sid))
                rows = await p.execute()
            out += [LiveSession.from_redis(h) for h in rows if h]
        return out

    async def count(self) -> int:
        return int(await self.redis.zcard(self._deadlines))
