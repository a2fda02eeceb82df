"""Several processes serving one port: a site's login service on more than one core.

The parent forks ``n`` workers before any event loop or thread exists, restarts a worker
that dies (after ``restart_backoff_s``), and on SIGINT/SIGTERM passes the signal on and
waits for every worker's orderly stop. Workers share nothing in memory: live state is in
Redis and PostgreSQL, and each has its own PBX connections.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies, even by SIGKILL (no orphaned
    workers serving a port against a store that is gone; seen in a drill's teardown)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's signal handling still applies
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_workers(n: int, target: Callable[[int], None], restart_backoff_s: float = 1.0) -> int:
    """Run ``target(index)`` in ``n`` forked processes until a signal stops them; the exit
    code is 0 after an orderly stop."""
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(i: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _die_with_parent()
            code = 0
            try:
                target(i)
            except BaseException:  # anything at all: the parent restarts us
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        children[pid] = i

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for i in range(n):
        spawn(i)
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        i = children.pop(pid, -1)
        if i < 0:
            continue
        if stopping:
            failed |= os.waitstatus_to_exitcode(status) != 0
            continue
        log.warning("worker %d (pid %d) exited (%d); restarting it in %.1f s", i, pid,
                    os.waitstatus_to_exitcode(status), restart_backoff_s)
        time.sleep(restart_backoff_s)
        if not stopping:
            spawn(i)
    return 1 if failed else 0
