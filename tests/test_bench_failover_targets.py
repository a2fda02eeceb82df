"""The failover benchmark's verdict on the issue's targets (bench/failover/bench_failover.py):
a run that misses one must say so and exit 1."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "failover" / "bench_failover.py"
    spec = importlib.util.spec_from_file_location("bench_failover", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rep(lost: int = 0, max_s: float = 9.0) -> dict[str, Any]:
    return {"lost_agents": lost, "recovery_s": {"max": max_s}}


def test_a_run_that_meets_every_target() -> None:
    checks = _bench().targets(10000, _rep(), [0.4, 1.38], 1.28)
    assert [ok for _, ok in checks] == [True, True, True, True]


def test_each_missed_target_is_named() -> None:
    b = _bench()
    def missed(n: int, rep: dict[str, Any], confirm: list[float], speed: float) -> list[str]:
        return [what for what, ok in b.targets(n, rep, confirm, speed) if not ok]
    assert missed(10000, _rep(lost=3), [1.0], 1.0) == ["lost 0 (got 3)"]
    assert missed(10000, _rep(), [1.0, 2.01], 1.0) == ["confirmation max <= 2 s (got 2.01)"]
    assert missed(10000, _rep(), [1.0], 0.79) == ["re-homing >= 80% of raw speed (got 79%)"]
    assert missed(10000, _rep(max_s=20.5), [1.0], 1.0) == ["recovery max <= 20 s (got 20.50)"]
    assert missed(1000, _rep(max_s=3.1), [1.0], 1.0) == ["recovery max <= 3 s (got 3.10)"]
    # 5,000 has no recovery target of its own; no agent confirmed is a miss, not a pass
    assert missed(5000, _rep(max_s=60.0), [], 1.0) == ["confirmation max <= 2 s (got nan)"]
