"""Drill scenarios, reports and the client's failure confirmation, without the lab."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent_client.agent import AgentEvent, AgentState, FailureDetector, Signal
from controlplane.errors import ConfigError
from lab.drill.report import write
from lab.drill.runner import Drill
from lab.drill.scenario import Scenario, load_scenario, parse_scenario

DRILLS = Path(__file__).resolve().parent.parent / "lab" / "drills"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_one_signal_never_confirms() -> None:
    c = Clock()
    d = FailureDetector(0.5, c)
    d.fail(Signal.SIP_PROBE)
    c.t += 60
    assert d.suspect and not d.confirmed()


def test_two_different_signals_confirm_after_the_hold() -> None:
    c = Clock()
    d = FailureDetector(0.5, c)
    d.fail(Signal.PBX_STATE)
    d.fail(Signal.PBX_STATE)  # the same signal twice is still one signal
    c.t += 0.4
    d.fail(Signal.SIP_PROBE)
    c.t += 0.49
    assert not d.confirmed()
    c.t += 0.02
    assert d.confirmed()


def test_a_blip_that_clears_within_the_hold_confirms_nothing() -> None:
    c = Clock()
    d = FailureDetector(0.5, c)
    d.fail(Signal.PBX_STATE)
    d.fail(Signal.SIP_PROBE)
    c.t += 0.3
    d.ok(Signal.SIP_PROBE)  # the network came back
    c.t += 1.0
    assert not d.confirmed()
    # How close it came, for the drill report: 0.3 s of the 0.5 s hold, and by which signals.
    assert abs(d.near_miss_s - 0.3) < 1e-9 and d.near_miss_signals == ("pbx_state", "sip_probe")
    d.fail(Signal.SIP_PROBE)
    c.t += 0.1
    d.ok(Signal.PBX_STATE)  # a shorter overlap leaves the longest one
    assert abs(d.near_miss_s - 0.3) < 1e-9
    d.fail(Signal.PBX_STATE)
    c.t += 0.6
    assert d.confirmed()
    d.reset()  # a confirmed failure is not a near miss
    assert abs(d.near_miss_s - 0.3) < 1e-9
    d.fail(Signal.SIP_PROBE)  # a new blip starts the hold again
    c.t += 0.3
    assert not d.confirmed()


def test_shipped_scenarios_load_one_per_fault_kind() -> None:
    kinds = set()
    for f in sorted(DRILLS.glob("*.yaml")):
        sc = load_scenario(f)
        kinds |= {x.action for x in sc.faults + sc.before_login}
    assert {"kill", "freeze", "cut", "stop_login"} <= kinds


def test_blip_expands_into_cut_heal_pairs() -> None:
    sc = parse_scenario({"name": "b", "agents": 3, "faults": [
        {"at": 1, "action": "blip", "site": "a", "seconds": 1, "count": 3, "every": 2}]})
    assert [(f.at, f.action) for f in sc.faults] == [
        (1, "cut"), (2, "heal"), (3, "cut"), (4, "heal"), (5, "cut"), (6, "heal")]


def test_bad_scenario_reports_every_field_by_path() -> None:
    with pytest.raises(ConfigError) as e:
        parse_scenario({"name": "", "agents": 0, "home": "c", "colour": 1, "observe_s": -1,
                        "faults": [{"at": -1, "action": "explode", "site": "z"},
                                   {"action": "blip", "site": "a", "seconds": 2, "every": 1}],
                        "expect": {"moved": "some", "speed": 1}, "phones": "triple"}, "s.yaml")
    text = str(e.value)
    for part in ("s.yaml: name:", "s.yaml: agents:", "s.yaml: home:", "s.yaml: colour: unknown field",
                 "s.yaml: observe_s:", "faults[0].action:", "faults[0].site:", "faults[0].at:",
                 "faults[1].every: must be longer", "expect.moved:", "expect.speed: unknown",
                 "s.yaml: phones: must be one of dual, single, got 'triple'"):
        assert part in text, part


def test_a_scenario_names_its_phones_and_the_drill_gives_its_agents_those() -> None:
    dual = parse_scenario({"name": "d", "agents": 2})
    single = parse_scenario({"name": "s", "agents": 2, "phones": "single"})
    assert (dual.phones, single.phones) == ("dual", "single")
    drills = [Drill(dual), Drill(single)]
    for d in drills:
        shutil.rmtree(d.tmp)
    assert drills[0].timings.backup_lines and not drills[1].timings.backup_lines


def _report(passed: bool) -> dict[str, object]:
    return {"scenario": "kill-a", "agents": 4, "lost_agents": 0, "agents_at_both_sites": 0, "moved_agents": 4,
            "moved_by": {"move in channel": 3, "move <request>": 1},
            "recovery_s": {"p50": 1.2, "p95": 1.9, "max": 2.0, "mean": 1.3},
            "recovery_times": [1.0, 1.2, 1.5, 2.0], "faults": [{"at": 0.0, "action": "kill", "site": "a"}],
            "timeline": [{"t": i / 10, "ready": {"a": 4 if i < 10 else 0, "b": 0 if i < 15 else 4}}
                         for i in range(30)],
            "expectations": [{"name": "lost_agents", "expected": "<= 0", "actual": 0, "ok": passed}],
            "passed": passed}


def test_report_files_json_html_png(tmp_path: Path) -> None:
    write(_report(False), tmp_path / "r")
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {"agents", "lost_agents", "agents_at_both_sites", "recovery_s", "passed"} <= set(doc)
    assert set(doc["recovery_s"]) >= {"p50", "p95", "max"}
    page = (tmp_path / "r" / "report.html").read_text()
    assert "FAILED" in page and "timeline.png" in page
    assert "4 moved (1 by move &lt;request&gt;, 3 by move in channel)" in page
    png = (tmp_path / "r" / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])
    idat = png[png.index(b"IDAT") + 4:png.index(b"IEND") - 8]
    raw = zlib.decompress(idat)
    assert len(raw) == h * (1 + 3 * w)
    blue = bytes((31, 119, 180))
    assert blue in raw and bytes((44, 160, 44)) in raw  # both sites' lines are drawn
    assert not list(tmp_path.glob("r/.*.tmp"))


async def test_teardown_stops_the_login_services_even_when_a_site_cannot_be_swept() -> None:
    """A 10,000-agent drill's teardown could not list site b's members in time; the error
    escaped before the login services were stopped, and they kept the drill's ports."""
    import subprocess
    from types import SimpleNamespace
    from typing import Any

    import aiohttp

    from controlplane.errors import PbxUnreachable
    from controlplane.pbx.base import LinkState
    from lab.drill.runner import Drill
    from lab.drill.scenario import Fault, Scenario

    class Unreadable:
        site, state = "b", LinkState.UP

        async def queue_status(self, *args: Any, **kw: Any) -> list[Any]:
            raise PbxUnreachable("site b: no answer to QueueStatus in 60 s")

        async def close(self) -> None:
            pass

    d = Drill(Scenario(name="t", agents=1, home="a", faults=(Fault(0, "kill", "a"),), observe_s=1, expect={}))

    async def clients() -> dict[str, Any]:
        return {"b": Unreadable()}

    d._clients = clients  # type: ignore[method-assign]
    d.broken = {"a": set(), "b": set()}
    service = subprocess.Popen(["sleep", "60"], start_new_session=True)  # noqa: ASYNC220 (the drill does so too)
    d.services = {"a": service}
    await d.teardown(SimpleNamespace(close=lambda: None), aiohttp.ClientSession())  # type: ignore[arg-type]
    assert service.poll() is not None  # stopped, not left serving


async def test_a_drill_will_not_share_its_login_port_with_a_service_left_running() -> None:
    """With SO_REUSEPORT a leftover service would silently take half the drill's agents."""
    import asyncio

    from lab.drill.runner import LOGIN_PORTS, Drill
    from lab.drill.scenario import Fault, Scenario

    squatter = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", LOGIN_PORTS["a"])
    try:
        d = Drill(Scenario(name="t", agents=1, home="a", faults=(Fault(0, "kill", "a"),), observe_s=1, expect={}))
        with pytest.raises(RuntimeError, match=r"already serves 127\.0\.0\.1:18281"):
            await d.start_login("a")
        assert d.services == {}
    finally:
        squatter.close()
        await squatter.wait_closed()


def test_overriding_the_number_of_agents_scales_every_agent_expectations(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("name: k\nagents: 200\nfaults: [{at: 0, action: kill, site: a}]\n"
                 "expect: {lost_agents: 0, moved: 200, ready_at: {a: 0, b: 200}}\n")
    sc = load_scenario(f).with_agents(1000)
    assert sc.agents == 1000
    assert sc.expect == {"lost_agents": 0, "moved": 1000, "ready_at": {"a": 0, "b": 1000}}


def test_the_drill_counts_agents_ready_per_site_from_their_events() -> None:
    d = Drill(Scenario(name="t", agents=2, home="a"))
    try:
        u1, u2 = SimpleNamespace(account="u1"), SimpleNamespace(account="u2")
        seq = [(u1, AgentState.READY, "a"), (u2, AgentState.READY, "a"), (u1, AgentState.SUSPECT, "a"),
               (u1, AgentState.MOVING, "a"), (u2, AgentState.READY, "a")]
        for who, st, site in seq:
            d._on_event(who, AgentEvent(0.0, st, site))  # type: ignore[arg-type]
        assert d.ready == {"a": 1, "b": 0}  # u1 left a (moving); u2 counted once
        d._on_event(u1, AgentEvent(0.0, AgentState.READY, "b"))  # type: ignore[arg-type]
        d._on_event(u2, AgentEvent(0.0, AgentState.LOGGED_OUT, "a"))  # type: ignore[arg-type]
        assert d.ready == {"a": 0, "b": 1}
    finally:
        shutil.rmtree(d.tmp, ignore_errors=True)


async def test_the_fault_waits_for_a_steady_loop() -> None:
    """After the GC policy's one full collection (a second's pause with 10,000 agents) the
    fault waits until the loop's short sleeps come back on time three times in a row."""
    import asyncio
    import time

    from lab.drill.runner import _steady_loop

    loop = asyncio.get_running_loop()
    loop.call_later(0.07, time.sleep, 0.2)  # a pause in the middle of the second sleep
    waited = await _steady_loop()
    assert waited >= 0.07 + 0.2 + 3 * 0.05  # three on-time sleeps after the pause


def test_the_healed_site_is_given_the_services_longest_reconnect_wait_and_time_per_agent() -> None:
    """A 10,000-agent drill's services wait 30 s (+10 %) between reconnects to a site long
    dead: the check for agents left at both sites must outlast that, then the clean-up."""
    from controlplane.settings import Backoff
    from lab.drill.runner import settle_s

    assert settle_s(Backoff(max_s=30.0, jitter=0.1), 200) == pytest.approx(33.0 + 20 + 0.4)
    assert settle_s(Backoff(max_s=30.0, jitter=0.1), 10_000) == pytest.approx(33.0 + 20 + 20)
    assert settle_s(Backoff(max_s=5.0, jitter=0.0), 0) == pytest.approx(25.0)


def test_a_drill_that_starts_with_a_phone_line_unregistered_says_so_and_fails() -> None:
    """The login phase's deadline can pass with a backup line still waiting to retry: the
    report counts the agents whose lines were all registered, and that is a check."""
    d = Drill(Scenario(name="t", agents=2, home="a", expect={"lost_agents": 0}))
    try:
        agents = [SimpleNamespace(account=f"u{i}", events=[], state=AgentState.READY, site="b",
                                  detector=FailureDetector(1.5, lambda: 0.0)) for i in (1, 2)]
        d.agents = agents  # type: ignore[assignment]
        d.lines_before = 1
        rep = d.report({"u1": "a", "u2": "a"}, 2, [], {"u1", "u2"}, 0)
        assert rep["lines_registered_before_fault"] == 1
        check = next(c for c in rep["expectations"] if c["name"] == "phone lines registered before the first fault")
        assert check == {"name": "phone lines registered before the first fault", "expected": 2, "actual": 1,
                         "ok": False}
        assert rep["passed"] is False
        d.lines_before = 2
        assert d.report({"u1": "a", "u2": "a"}, 2, [], {"u1", "u2"}, 0)["passed"] is True
    finally:
        shutil.rmtree(d.tmp, ignore_errors=True)
