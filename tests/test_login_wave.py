"""A mass move's queue adds wait at the surviving site until its phones registered
(controlplane/login/wave.py); time is a fake clock."""

from __future__ import annotations

import asyncio

from controlplane.login.wave import MoveWave
from controlplane.runtime.clock import FakeClock
from controlplane.settings import MoveWave as WaveSettings

S = WaveSettings(min_agents=3, quiet_s=1.0, max_hold_s=5.0)


async def _passed(w: MoveWave) -> bool:
    t = asyncio.ensure_future(w.passage())
    for _ in range(3):
        await asyncio.sleep(0)
    done = t.done()
    t.cancel()
    return done


async def test_a_few_moved_agents_are_never_held() -> None:
    w = MoveWave("b", S, FakeClock())
    w.expect("3001")
    w.expect("3002")
    assert not w.holding and await _passed(w) and w.holds == 0
    await w.close()


async def test_a_wave_holds_until_fewer_than_min_agents_are_awaited() -> None:
    clock = FakeClock()
    w = MoveWave("b", S, clock)
    for e in ("3001", "3002", "3003", "3004"):
        w.expect(e)
    assert w.holding and not await _passed(w) and w.holds == 1
    await clock.advance(0.5)
    w.registered("3001")
    w.registered("3999")  # not a moved agent's phone: changes nothing
    assert w.holding and not await _passed(w)
    await clock.advance(0.5)
    w.registered("3002")  # two still awaited, fewer than three: the wave has passed
    assert not w.holding and await _passed(w) and w.released_by == "registered"
    await w.close()


async def test_a_wave_whose_phones_stop_registering_is_let_go_after_quiet_s() -> None:
    clock = FakeClock()
    w = MoveWave("b", S, clock)
    for e in ("3001", "3002", "3003", "3004", "3005"):
        w.expect(e)
    await clock.advance(0.6)
    w.registered("3001")  # the last registration: quiet from here
    await clock.advance(0.9)
    assert w.holding
    await clock.advance(0.2)
    assert not w.holding and await _passed(w) and w.released_by == "quiet"
    # Let go, it stays open while the same wave goes on (no hold flapping on each phone) ...
    w.registered("3002")
    w.expect("3006")
    assert not w.holding and await _passed(w)
    # ... and a new wave, after this one ended, is held again.
    for e in ("3003", "3004", "3005", "3006"):
        w.registered(e)
    for e in ("3101", "3102", "3103"):
        w.expect(e)
    assert w.holding and w.holds == 2
    await w.close()
    assert await _passed(w)


async def test_a_growing_wave_is_not_quiet_before_its_first_registration() -> None:
    """10,000 agents: the moves came for seconds before the first registration reached the
    service; a quiet_s counted from the hold's start let the adds go at once."""
    clock = FakeClock()
    w = MoveWave("b", S, clock)
    for i in range(8):  # a move every 0.5 s, no registration yet: 3.5 s > quiet_s
        w.expect(str(3000 + i))
        await clock.advance(0.5)
    assert w.holding
    await clock.advance(0.6)  # the moves stopped too: quiet now
    assert not w.holding and w.released_by == "quiet"
    await w.close()


async def test_a_hold_never_lasts_longer_than_max_hold_s() -> None:
    clock = FakeClock()
    w = MoveWave("b", S, clock)
    for i in range(20):
        w.expect(str(3000 + i))
    for i in range(9):  # a registration every 0.5 s: never quiet, the wave does not end
        await clock.advance(0.5)
        assert w.holding, i
        w.registered(str(3000 + i))
    await clock.advance(0.51)  # 5 s since the hold began
    assert not w.holding and w.released_by == "max_hold" and await _passed(w)
    await w.close()


async def test_forgotten_agents_are_not_awaited() -> None:
    w = MoveWave("b", S, FakeClock())
    for e in ("3001", "3002", "3003"):
        w.expect(e)
    assert w.holding
    w.forget("3001")  # logged out, or moved on elsewhere
    assert not w.holding and w.awaited == {"3002", "3003"}
    await w.close()


async def test_closing_lets_held_adds_go() -> None:
    w = MoveWave("b", S, FakeClock())
    for e in ("3001", "3002", "3003"):
        w.expect(e)
    assert w.holding and not await _passed(w)
    await w.close()  # the service stops: nothing waits on a wave any more
    assert not w.holding and w.released_by == "closed" and await _passed(w)
