"""The cyclic garbage collector kept out of a busy process's way.

CPython's default thresholds (700, 10, 10) run a full collection, which scans every object
the process holds, whenever enough new objects survived. In a login service that is every
session channel, its task and buffers, and the PBX picture (members, contacts). Measured
with ``gc.callbacks`` in the drill's login services while 3,000 agents moved: 13 full
collections per worker in a minute, pauses up to 0.8 s (3 s in all), each one a moment the
service answered nobody; the drill's simulator paused 5 s in 11 of them. That is also a
login storm's p99.

The policy: objects alive once a process is set up are frozen (never scanned again, as
Instagram does for its forked workers); young collections run rarely and stay cheap; full
collections are not left to the allocation counters but run on a schedule
(``full_interval_s``), put off while the process is busy (for ``defer_max_s`` at most).
The numbers are the topology's ``timings.gc`` (``controlplane.settings.GcPolicy``).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

from controlplane.runtime.clock import Clock
from controlplane.settings.model import GcPolicy

__all__ = ["NEVER", "GcPolicy", "full_collections", "install", "restore"]

log = logging.getLogger(__name__)

NEVER = 2**31 - 1  # a threshold the counters never reach: no automatic full collection


def install(policy: GcPolicy) -> tuple[int, int, int]:
    """Freeze what the process holds now and set the thresholds; the previous thresholds."""
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(policy.young_threshold, policy.middle_threshold, NEVER)
    return old


def restore(old: tuple[int, int, int]) -> None:
    """Back to before :func:`install` (a drill's measured phase is over): what was frozen
    is scanned again, and collected by the usual thresholds."""
    gc.unfreeze()
    gc.set_threshold(*old)


async def full_collections(policy: GcPolicy, clock: Clock, busy: Callable[[], bool],
                           collect: Callable[[], int] = gc.collect) -> None:
    """The scheduled full collection (a supervised loop of a process under :func:`install`)."""
    while True:
        await clock.sleep(policy.full_interval_s)
        waited = 0.0
        while busy() and waited < policy.defer_max_s:
            await clock.sleep(policy.busy_poll_s)
            waited += policy.busy_poll_s
        t0 = time.perf_counter()
        found = collect()
        log.info("full garbage collection: %d unreachable, %.0f ms%s", found, (time.perf_counter() - t0) * 1000,
                 f" (put off {waited:.0f} s: busy)" if waited else "")
