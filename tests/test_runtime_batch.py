"""Natural batching: alone at low load, grouped under a burst, errors to their callers."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.runtime.batch import Batcher


async def test_a_lone_call_goes_at_once_and_a_burst_is_batched() -> None:
    seen: list[list[int]] = []

    async def double(keys: list[int]) -> list[int]:
        seen.append(list(keys))
        await asyncio.sleep(0.01)  # one round trip
        return [k * 2 for k in keys]

    b = Batcher(double, max_size=40)
    assert await b.call(1) == 2 and seen == [[1]]
    got = await asyncio.gather(*(b.call(i) for i in range(100)))
    assert got == [i * 2 for i in range(100)]
    # The first call of the burst went alone; the rest queued behind it, 40 at most a batch.
    assert [len(x) for x in seen[1:]] == [40, 40, 20]


async def test_an_error_reaches_every_caller_of_its_batch_and_no_other() -> None:
    async def fail_on_13(keys: list[int]) -> list[int]:
        await asyncio.sleep(0)
        if 13 in keys:
            raise ValueError("13")
        return keys

    b = Batcher(fail_on_13, max_size=10)
    res = await asyncio.gather(*(b.call(i) for i in range(25)), return_exceptions=True)
    bad = [i for i, r in enumerate(res) if isinstance(r, ValueError)]
    assert 13 in bad and len(bad) == 10  # the batch holding 13, all of it
    assert all(r == i for i, r in enumerate(res) if i not in bad)
    assert await b.call(99) == 99  # and the batcher goes on


async def test_a_function_returning_the_wrong_count_is_an_error() -> None:
    async def short(keys: list[int]) -> list[int]:
        return keys[:-1]

    with pytest.raises(RuntimeError, match="returned 0 values for 1 keys"):
        await Batcher(short).call(1)
