"""Failover drills on the lab's real Asterisk: 200 agents, real login services, real
phones, the agent client noticing and moving on its own (fails in CI without the lab)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lab.drill.runner import run_drill
from lab.drill.scenario import load_scenario

pytestmark = pytest.mark.lab
DRILLS = Path(__file__).resolve().parent.parent / "lab" / "drills"


async def _drill(name: str, lab_topology: Any) -> dict[str, Any]:
    rep = await run_drill(load_scenario(DRILLS / f"{name}.yaml"))
    failed = [c for c in rep["expectations"] if not c["ok"]]
    if failed:  # whole stories in the captured output: the assertion's repr cuts them short
        print("near miss:", rep["near_miss"])
        for a in rep["slowest_agents"][:2] + rep["unverified_agents"][:2]:
            print(a["account"], *(f"\n  {e}" for e in a["events"]))
    assert rep["passed"], (failed, rep["slowest_agents"][:1], rep["unverified_agents"][:2])
    return rep


@pytest.mark.parametrize("name", ["kill-a", "kill-a-single-line", "freeze-a", "cut-a", "stop-login-a"])
async def test_site_fault_moves_every_agent_to_b(name: str, lab_topology: Any) -> None:
    rep = await _drill(name, lab_topology)
    # Every agent at b, verified through AMI (phone registered, queue member); none lost,
    # none a member at both sites once a is back.
    assert rep["final_sites"] == {"a": 0, "b": 200}
    assert rep["lost_agents"] == 0 and rep["agents_at_both_sites"] == 0 and rep["moved_agents"] == 200
    # Where a's login service lives on, each agent asks it over its session channel to move
    # it; where it stopped, each asks b's service (POST /v1/move).
    how = "move request" if name == "stop-login-a" else "move in channel"
    assert rep["moved_by"] == {how: 200}


async def test_twenty_one_second_blips_move_nobody(lab_topology: Any) -> None:
    rep = await _drill("blips-a", lab_topology)
    print("near miss:", rep["near_miss"])  # the margin the blips left (shown if this fails)
    assert [f["action"] for f in rep["faults"]].count("cut") == 20
    assert rep["moved_agents"] == 0 and rep["final_sites"] == {"a": 200, "b": 0}


async def test_login_service_down_at_login_time_clients_log_in_at_the_other(lab_topology: Any) -> None:
    rep = await _drill("login-down-at-login", lab_topology)
    assert rep["final_sites"] == {"a": 0, "b": 200} and rep["lost_agents"] == 0
