from __future__ import annotations

import asyncio
import contextlib
import gc

from controlplane.runtime import gcpolicy
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


# -- the garbage collector's policy -------------------------------------------------------

def test_gc_policy_freezes_what_is_there_and_makes_full_collections_manual() -> None:
    before = gc.get_threshold()
    old = gcpolicy.install(gcpolicy.GcPolicy(young_threshold=12_345, middle_threshold=7))
    try:
        assert old == before
        assert gc.get_threshold() == (12_345, 7, gcpolicy.NEVER)
        assert gc.get_freeze_count() > 0
    finally:
        gcpolicy.restore(old)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


async def test_full_collections_run_on_schedule_put_off_while_busy_but_not_forever() -> None:
    clock = FakeClock()
    busy = [False]
    runs: list[float] = []

    def collect() -> int:
        runs.append(clock.now())
        return 0

    policy = gcpolicy.GcPolicy(full_interval_s=300, defer_max_s=60, busy_poll_s=1)
    task = asyncio.create_task(gcpolicy.full_collections(policy, clock, lambda: busy[0], collect))
    await asyncio.sleep(0)
    await clock.advance(299)
    assert runs == []
    await clock.advance(1)
    assert runs == [1300.0]  # idle: at once
    busy[0] = True
    await clock.advance(300)
    await clock.advance(10)
    assert runs == [1300.0]  # busy: put off
    busy[0] = False
    await clock.advance(1)
    assert runs == [1300.0, 1611.0]  # ... until idle
    busy[0] = True
    for _ in range(300 + 60):
        await clock.advance(1)
    assert runs[-1] == 1611.0 + 300 + 60  # busy all along: run anyway after defer_max_s
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
