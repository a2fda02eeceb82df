"""Named, supervised asyncio tasks with restart backoff and orderly shutdown (after kopf).

Every long-lived loop of a ccdr service runs under a :class:`Supervisor`: it has
a name (visible in logs and /status), a crash is logged and the loop restarted
after a backoff taken from settings, and ``stop()`` cancels every task and waits
for each to finish its cleanup.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from controlplane.runtime.clock import Clock, RealClock
from controlplane.settings import Backoff

log = logging.getLogger(__name__)


@dataclass
class TaskInfo:
    name: str
    restarts: int = 0
    last_error: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


class Supervisor:
    def __init__(self, backoff: Backoff | None = None, clock: Clock | None = None) -> None:
        self.backoff = backoff or Backoff()
        self.clock = clock or RealClock()
        self.tasks: dict[str, TaskInfo] = {}
        self._stopping = False

    def spawn(self, name: str, loop: Callable[[], Awaitable[None]]) -> TaskInfo:
        """Run ``loop()`` as task ``name``; restart it with backoff whenever it raises."""
        if name in self.tasks and self.tasks[name].running:
            raise RuntimeError(f"task {name!r} is already running")
        info = TaskInfo(name)
        info.task = asyncio.create_task(self._guard(info, loop), name=name)
        self.tasks[name] = info
        return info

    async def _guard(self, info: TaskInfo, loop: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await loop()
                return  # a loop that returns has finished its job
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the supervisor must survive anything a loop raises
                info.restarts += 1
                info.last_error = f"{type(exc).__name__}: {exc}"
                delay = self.backoff.delay(attempt, random.random())
                log.error("task %s crashed (%s); restarting in %.2f s", info.name, info.last_error, delay)
                attempt += 1
                await self.clock.sleep(delay)

    def status(self) -> dict[str, dict[str, object]]:
        return {
            n: {"running": t.running, "restarts": t.restarts, "last_error": t.last_error}
            for n, t in self.tasks.items()
        }

    async def stop(self, grace_s: float = 10.0) -> None:
        """Cancel every task and wait for each to finish its cleanup."""
        self._stopping = True
        pending = {t.task for t in self.tasks.values() if t.task is not None and not t.task.done()}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        # Cancel until done: a library may swallow one cancellation (asyncio.wait_for on
        # 3.11 does when the inner call finishes at the same moment).
        while pending and loop.time() < deadline:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=min(0.5, max(0.01, deadline - loop.time())))
