from __future__ import annotations

import asyncio

from controlplane.runtime.clock import FakeClock
from controlplane.runtime.supervisor import Supervisor
from controlplane.settings import Backoff


async def test_fake_clock_wakes_sleepers_in_order() -> None:
    clock = FakeClock(0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper("late", 5)), asyncio.create_task(sleeper("early", 1))]
    await asyncio.sleep(0)
    await clock.advance(2)
    assert woke == [("early", 1)]
    await clock.advance(10)
    assert woke == [("early", 1), ("late", 5)]
    assert clock.now() == 12
    await asyncio.gather(*tasks)


async def test_supervisor_restarts_crashed_loop_with_backoff_and_stops_in_order() -> None:
    clock = FakeClock(0)
    sup = Supervisor(Backoff(initial_s=1, max_s=4, factor=2, jitter=0), clock)
    runs: list[float] = []
    cleaned = asyncio.Event()

    async def flaky() -> None:
        runs.append(clock.now())
        if len(runs) < 4:
            raise RuntimeError("boom")
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    info = sup.spawn("flaky", flaky)
    await asyncio.sleep(0)  # let it start at t=0
    for _ in range(10):
        await clock.advance(1)
    assert runs == [0, 1, 3, 7]  # backoff 1, 2, 4
    assert info.restarts == 3 and info.last_error == "RuntimeError: boom"
    assert sup.status()["flaky"]["running"] is True
    await sup.stop()
    assert cleaned.is_set() and not info.running
