"""Natural batching for a store under a burst: one batch in flight per operation; the
calls that arrive while it runs form the next one.

At low load a call goes out at once, alone (no added latency: no timer). Under a burst
the batches grow by themselves to what arrived during one round trip. A thousand agents
moving at once cost the surviving site's login service a thousand PostgreSQL round trips
for their lines and a thousand for their history; batched, a few dozen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Batcher(Generic[K, V]):
    """``await b.call(key)`` returns ``fn([..., key, ...])[i]``; ``fn`` gets at most
    ``max_size`` keys at once and returns one value per key, in order."""

    def __init__(self, fn: Callable[[list[K]], Awaitable[Sequence[V]]], max_size: int = 500) -> None:
        self.fn = fn
        self.max_size = max_size
        self._queue: list[tuple[K, asyncio.Future[V]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.batches = 0  # calls of fn (tests, metrics)

    async def call(self, key: K) -> V:
        fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._queue.append((key, fut))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="batcher")
        return await fut

    async def _run(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:self.max_size], self._queue[self.max_size:]
                self.batches += 1
                try:
                    values = await self.fn([k for k, _ in batch])
                    if len(values) != len(batch):
                        raise RuntimeError(f"batch function returned {len(values)} values for {len(batch)} keys")
                except BaseException as exc:  # every caller of this batch gets the error
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, f), v in zip(batch, values, strict=True):
                    if not f.done():
                        f.set_result(v)
        finally:
            self._runner = None
