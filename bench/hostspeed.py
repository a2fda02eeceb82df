"""How fast this machine's CPU ran during a benchmark.

The machine is a virtual one whose speed changes under us: a fixed Python loop took 0.34 s
and 0.62 s two seconds apart, the machine otherwise idle, with no steal time reported. The
login storm ran at 1,210 logins/s in one run and 563 in the next with the same code. So the
benches print the speed they ran at beside their numbers.

A separate process times a fixed loop of ~5 ms (CPU time of its own thread, so waiting for
a core on a busy machine does not count) every half second; ``ns/iter`` is the median, and
lower is faster. On this 2-core machine the fastest seen is ~68 ns/iter.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from types import TracebackType

LOOP = 50_000  # iterations per sample (~3-6 ms)
PERIOD_S = 0.5

_PROBE = f"""
import sys, time
while True:
    t = time.thread_time_ns()
    x = 0
    for i in range({LOOP}):
        x += i
    print((time.thread_time_ns() - t) / {LOOP}, flush=True)
    time.sleep({PERIOD_S})
"""


class HostSpeed:
    """``with HostSpeed() as hs: ...`` then ``hs.summary()``."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HostSpeed:
        self._proc = subprocess.Popen([sys.executable, "-c", _PROBE], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=5)
        self.samples = [float(x) for x in out.split()]

    def summary(self) -> str:
        if not self.samples:
            return "host speed: no samples"
        s = sorted(self.samples)
        return (f"host speed: median {statistics.median(s):.0f} ns/iter"
                f" (fastest {s[0]:.0f}, slowest {s[-1]:.0f}; {len(s)} samples; lower is faster)")


if __name__ == "__main__":
    with HostSpeed() as hs:
        time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 10)
    print(hs.summary())
