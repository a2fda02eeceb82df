"""Login rate limiting in Redis, shared by every login service.

Failed logins are counted per account and per source address in fixed windows.
An account over its limit is refused (even with the right password, until the
window ends): that is what stops guessing. A source address gets a much higher
limit, so one agent's typos on a shared NAT address do not lock out the floor.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from controlplane.login.reads import KeyReads


@dataclass(frozen=True)
class RateLimits:
    window_s: int = 60
    per_account: int = 5
    per_source: int = 100


class LoginRateLimiter:
    def __init__(self, redis: Redis, prefix: str, limits: RateLimits | None = None,
                 reads: KeyReads | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.limits = limits or RateLimits()
        # Every login reads its counters: in a storm the logins in flight read theirs in one
        # MGET (4 % of a service was this read's own round trip, session 12's py-spy), with
        # the verification cache's reads when the service shares ``reads`` between them.
        self.reads = reads or KeyReads(redis)

    def _keys(self, account: str, source: str) -> tuple[str, str]:
        return f"{self.prefix}rl:acct:{account}", f"{self.prefix}rl:src:{source}"

    async def blocked(self, account: str, source: str) -> bool:
        a, s = await self.reads.get(*self._keys(account, source))
        return int(a or 0) >= self.limits.per_account or int(s or 0) >= self.limits.per_source

    async def failed(self, account: str, source: str) -> None:
        ka, ks = self._keys(account, source)
        async with self.redis.pipeline(transaction=False) as p:
            p.incr(ka)
            p.expire(ka, self.limits.window_s, nx=True)
            p.incr(ks)
            p.expire(ks, self.limits.window_s, nx=True)
            await p.execute()
