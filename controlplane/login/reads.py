"""Redis reads of the logins in flight, batched into one MGET.

Every login reads its rate-limit counters and, with the verification cache on, its cached
verification; each its own round trip was a share of a login service's time in a storm (on
this machine a loopback write that wakes Redis costs more than the read). Callers that ask in
the same loop iteration share an MGET (controlplane.runtime.batch).
"""

from __future__ import annotations

from redis.asyncio import Redis

from controlplane.runtime.batch import Batcher


class KeyReads:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._batch: Batcher[tuple[str, ...], tuple[bytes | None, ...]] = Batcher(self._mget)

    async def get(self, *keys: str) -> tuple[bytes | None, ...]:
        """The values of ``keys`` (None where missing), in order."""
        return await self._batch.call(keys)

    @property
    def batches(self) -> int:
        return self._batch.batches

    async def _mget(self, calls: list[tuple[str, ...]]) -> list[tuple[bytes | None, ...]]:
        got = await self.redis.mget([k for keys in calls for k in keys])
        vals = [v.encode() if isinstance(v, str) else v for v in got]
        out, i = [], 0
        for keys in calls:
            out.append(tuple(vals[i:i + len(keys)]))
            i += len(keys)
        return out
