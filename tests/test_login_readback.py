"""Read-back of queue membership: batched, and member by member when the batch is small."""

from __future__ import annotations

import asyncio

from controlplane.login.readback import ReadBack
from tests.fakes import FakePbx


async def test_a_first_batch_reads_the_queue_once() -> None:
    pbx = FakePbx("a")
    for i in range(3):
        await pbx.queue_add("sales", f"PJSIP/{i}")
    rb = ReadBack(pbx)
    got = await asyncio.gather(rb.has("sales", "PJSIP/0"), rb.has("sales", "PJSIP/1"), rb.has("sales", "PJSIP/9"))
    assert got == [True, True, False]
    assert [c for c in pbx.calls if c[0] == "QueueStatus"] == [("QueueStatus", "sales", None)]


async def test_a_small_batch_in_a_big_queue_reads_its_members_only() -> None:
    pbx = FakePbx("a")
    for i in range(300):
        await pbx.queue_add("sales", f"PJSIP/{i}")
    rb = ReadBack(pbx)
    assert await rb.has("sales", "PJSIP/0")  # learns the queue's size: one full read
    pbx.calls.clear()
    got = await asyncio.gather(rb.has("sales", "PJSIP/5"), rb.has("sales", "PJSIP/999"))
    assert got == [True, False]
    # Two one-member reads, not 300 member frames again (a 1,000-agent login spent 40 %
    # of the service's event loop parsing full reads of growing queues).
    assert sorted(c for c in pbx.calls if c[0] == "QueueStatus") == [
        ("QueueStatus", "sales", "PJSIP/5"), ("QueueStatus", "sales", "PJSIP/999")]
    pbx.calls.clear()
    await asyncio.gather(*(rb.has("sales", f"PJSIP/{i}") for i in range(200)))  # most of the queue
    assert [c for c in pbx.calls if c[0] == "QueueStatus"] == [("QueueStatus", "sales", None)]
