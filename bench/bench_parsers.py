"""AMI and ESL frames parsed per second on one core.

The stream is built by repeating real recorded frames (tests/fixtures), fed in
64 KiB reads as a socket would deliver them. Run: python bench/bench_parsers.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controlplane.protocols.ami import AmiParser
from controlplane.protocols.esl import EslParser, decode_event_plain

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def run(parser_factory, data: bytes, reps: int) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    best = float("inf")
    frames = 0
    for _ in range(reps):
        p = parser_factory()
        t = time.perf_counter()
        n = 0
        for i in range(0, len(data), 65536):
            n += len(p.feed(data[i : i + 65536]))
        best = min(best, time.perf_counter() - t)
        frames = n
    return frames, best


def main() -> None:
    ami_src = (FIX / "ami" / "tests__fixtures__originate_with_events.yaml").read_bytes()
    ami = (ami_src.rstrip(b"\n") + b"\n\n") * 200  # ~150,000 frames of real Originate traffic
    n, t = run(lambda: AmiParser(expect_banner=False), ami, 3)
    mb = len(ami) / 1e6
    print(f"AMI: {n} frames, {mb:.1f} MB in {t:.3f} s: {n / t:,.0f} frames/s, {mb / t:.1f} MB/s")

    esl_src = (FIX / "esl" / "cgrates-fsock__test_data.txt").read_bytes()
    esl = esl_src * 100
    n, t = run(EslParser, esl, 3)
    print(f"ESL: {n} messages, {len(esl) / 1e6:.1f} MB in {t:.3f} s: {n / t:,.0f} messages/s")
    frames = EslParser().feed(esl)
    t0 = time.perf_counter()
    ev = [decode_event_plain(f) for f in frames if f.get("Content-Type") == "text/event-plain"]
    t1 = time.perf_counter() - t0
    print(f"ESL event-plain decode (URL-decoding ~60 headers each): {len(ev) / t1:,.0f} events/s")


if __name__ == "__main__":
    main()
