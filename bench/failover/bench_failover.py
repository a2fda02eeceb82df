"""Failover, end to end: from `kill -9` of site a's Asterisk to the last agent verified at
site b (phone registered and queue member, read back through AMI), for N agents; and, in
the same run, the lab's raw limit: a plain script that re-registers the same phones at b
and adds the same queue members there, with no ccdr in between.

Per N it prints: detection (fault to first suspicion), confirmation (fault to first move),
per-agent recovery p50/p95/max, the re-homing phase (first move to last agent ready) and
the raw limit's time for the same work, and their ratio.

Run as root with the lab up:  python bench/failover/bench_failover.py [--single] 1000 5000 10000
Each run ends with the issue's targets that apply to it, met or not; the exit status is 1
when one was missed.
(--single: single-line phones, which register at b when they move; by default dual-line
phones, whose line at b is registered before the fault, as `ccdr provision` sets them up.)
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from agent_client.agent import AgentState
from agent_client.sip.fleet import FleetSettings, PhoneFleet
from bench.hostspeed import HostSpeed
from controlplane.pbx.asterisk import AsteriskClient
from controlplane.settings import load_topology
from lab import manager
from lab.drill.runner import QUEUES, Drill, queue_of
from lab.drill.scenario import Fault, Scenario
from lab.layout import FIRST_EXTENSION, HOST_ADDRESS, phone_password


async def raw_limit(n: int) -> tuple[float, float, float]:
    """Register phones 1..n at b and add their members there, as fast as the lab takes
    it (same REGISTER rate limit as the agents' fleet), then remove everything."""
    topo = load_topology(manager.TOPOLOGY_FILE)
    b = topo.site("b")
    assert b.ami is not None
    exts = [str(FIRST_EXTENSION + i) for i in range(n)]
    fleet = await PhoneFleet.open(exts, password=lambda e: phone_password(int(e)), host=HOST_ADDRESS,
                                  settings=FleetSettings(register_rate=1500, burst=50, expires=120))
    ami = AsteriskClient("b", b.ami, topo.timings)
    await ami.start()
    try:
        ours = {f"PJSIP/{e}" for e in exts}
        for m in await ami.queue_status():  # a clean slate: nothing of ours at b
            if m.interface in ours:
                await ami.queue_remove(m.queue, m.interface)
        t0 = time.perf_counter()
        rep = await fleet.register_all((b.sip.host, b.sip.port))
        t_reg = time.perf_counter() - t0
        t1 = time.perf_counter()
        await asyncio.gather(*(ami.queue_add(queue_of(i), f"PJSIP/{e}", name=f"raw/{i}") for i, e in enumerate(exts)))
        members = {m.interface for q in QUEUES for m in await ami.queue_status(q)}
        t_add = time.perf_counter() - t1
        assert rep.registered == n and all(f"PJSIP/{e}" in members for e in exts), "raw limit incomplete"
        total = time.perf_counter() - t0
        # Measured: a clean-up that fails (a busy b dropped the link) costs no result; the
        # next raw limit starts by removing what is left.
        done = await asyncio.gather(*(ami.queue_remove(queue_of(i), f"PJSIP/{e}") for i, e in enumerate(exts)),
                                    return_exceptions=True)
        if failed := sum(isinstance(x, Exception) for x in done):
            print(f"  raw limit clean-up: {failed} members not removed at b", flush=True)
        await fleet.unregister_all()
        return t_reg, t_add, total
    finally:
        await ami.close()
        fleet.close()


def phases(d: Drill) -> dict[str, list[float]]:
    """Each moved agent's recovery split at its events: the fault noticed (first SUSPECT, from
    the fault), confirmed (MOVING, from the fault: stamped by the signal that confirmed since
    session 17, by the watch loop's next pass before), acting (the move asked: the first
    event after MOVING, from the fault), moved (the move answered: REGISTERING, from MOVING),
    line registered and channel open (AWAITING_CTI), CTI (READY)."""
    cols: dict[str, list[float]] = {"suspect": [], "confirm": [], "act": [], "move": [], "line": [], "cti": []}
    for a in d.agents:
        ev = [e for e in a.events if e.at >= d.t0]
        m = max((i for i, e in enumerate(ev) if e.state is AgentState.MOVING), default=None)
        if m is None:
            continue
        at = [next((e.at for e in ev[m:] if e.state is s), None)
              for s in (AgentState.REGISTERING, AgentState.AWAITING_CTI, AgentState.READY)]
        t_reg, t_cti, t_ready = at
        if t_reg is None or t_cti is None or t_ready is None:
            continue
        # Before the move: a suspicion at b long after (a probe b was slow to answer) is not
        # when this fault was noticed (a 10,000-agent run printed a 171 s maximum).
        cols["suspect"].append(next((e.at for e in ev[:m] if e.state is AgentState.SUSPECT), ev[m].at) - d.t0)
        cols["confirm"].append(ev[m].at - d.t0)
        cols["act"].append((ev[m + 1].at if m + 1 < len(ev) else ev[m].at) - d.t0)
        cols["move"].append(t_reg - ev[m].at)
        cols["line"].append(t_cti - t_reg)
        cols["cti"].append(t_ready - t_cti)

    return cols


def _q(xs: list[float], p: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def format_phases(cols: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} {_q(v, .5):.2f}/{_q(v, .95):.2f}/{max(v, default=float('nan')):.2f}"
                     for k, v in cols.items())


#: The issue's targets on this machine (issue 6): the last agent verified at b within this
#: long, by N; detection plus confirmation within 2 s; the re-homing phase at 80 % of the raw
#: limit's speed; nobody lost.
RECOVERY_TARGET_S = {1000: 3.0, 10000: 20.0}
CONFIRM_TARGET_S = 2.0
RAW_SPEED_TARGET = 0.80


def targets(n: int, rep: dict[str, Any], confirm: list[float], speed: float) -> list[tuple[str, bool]]:
    """Each target that applies to ``n`` agents, and whether this run met it."""
    out = [(f"lost 0 (got {rep['lost_agents']})", rep["lost_agents"] == 0),
           (f"confirmation max <= {CONFIRM_TARGET_S:.0f} s (got {max(confirm, default=float('nan')):.2f})",
            bool(confirm) and max(confirm) <= CONFIRM_TARGET_S),
           (f"re-homing >= {RAW_SPEED_TARGET:.0%} of raw speed (got {speed:.0%})", speed >= RAW_SPEED_TARGET)]
    if n in RECOVERY_TARGET_S:
        limit, got = RECOVERY_TARGET_S[n], rep["recovery_s"]["max"]
        out.append((f"recovery max <= {limit:.0f} s (got {got:.2f})", got <= limit))
    return out


def _story(events: list[list[Any]]) -> str:
    """An agent's events as the drill report lists them, on one line."""
    return "; ".join(f"{t:.2f} {st} {site or ''} {detail}".rstrip() for t, st, site, detail in events)


async def one(n: int, phones: str) -> bool:
    sc = Scenario(name=f"bench-kill-a-{n}", agents=n, home="a", faults=(Fault(0, "kill", "a"),),
                  observe_s=max(30.0, n / 50), expect={"lost_agents": 0}, phones=phones)
    d = Drill(sc)
    with HostSpeed() as drill_speed:
        rep = await d.run()
    moves = [next((e.at for e in a.events if e.at >= d.t0 and e.state is AgentState.MOVING), None) for a in d.agents]
    moves_ = [m - d.t0 for m in moves if m is not None]
    first_move = min(moves_) if moves_ else float("nan")
    last_ready = rep["recovery_s"]["max"]
    rehoming = last_ready - first_move
    print(f"drill done: {rep['ready_before_fault']} of {n} ready before the fault"
          f" ({rep['lines_registered_before_fault']} with every line registered); {rep['recovery_s']},"
          f" first move {first_move:.2f} s, moved by {rep['moved_by']}", flush=True)
    cols = phases(d)
    print("  per-agent phases after the fault, p50/p95/max s: " + format_phases(cols), flush=True)
    for a in rep["slowest_agents"][:1]:
        print(f"  slowest agent, {a['account']}: {_story(a['events'])}", flush=True)
    for a in rep["unverified_agents"]:  # lost: their own story
        print(f"  not verified, {a['account']} ({a['state']} at {a['site']}): {_story(a['events'])}", flush=True)
    if d.transport is not None:
        now, then = d.transport.stats, d.sip_at_fault
        print("  the simulator's SIP socket after the fault: " + ", ".join(
            f"{k} {getattr(now, k) - getattr(then, k)}"
            for k in ("sent", "received", "retransmissions", "timeouts", "unreachable", "resent")), flush=True)
        sent_to = {k: v - then.sent_to.get(k, 0) for k, v in now.sent_to.items()}
        print("  sent to: " + ", ".join(f"{k} {v}" for k, v in sorted(sent_to.items(), key=lambda x: -x[1]) if v),
              flush=True)
    with HostSpeed() as raw_speed:
        t_reg, t_add, raw = await raw_limit(n)
    r = rep["recovery_s"]
    print(f"{n:>6} agents ({phones}-line phones): lost {rep['lost_agents']}, moved {rep['moved_agents']},"
          f" at both {rep['agents_at_both_sites']}"
          f" | first suspicion {rep['first_suspicion_s']['min']:.2f} s, first move (confirmed) {first_move:.2f} s"
          f" | recovery p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s, max {r['max']:.2f} s"
          f" | re-homing phase {rehoming:.2f} s vs raw {raw:.2f} s (register {t_reg:.2f} + add {t_add:.2f})"
          f" = {raw / rehoming * 100 if rehoming > 0 else float('nan'):.0f} % of raw speed", flush=True)
    print(f"  drill's {drill_speed.summary()}; raw limit's {raw_speed.summary()}", flush=True)
    checks = targets(n, rep, cols["confirm"], raw / rehoming if rehoming > 0 else 0.0)
    print("  targets: " + "; ".join(f"{what}: {'met' if ok else 'NOT MET'}" for what, ok in checks), flush=True)
    return all(ok for _, ok in checks)


async def main(ns: list[int], phones: str) -> bool:
    met = [await one(n, phones) for n in ns]
    return all(met)


if __name__ == "__main__":
    args = sys.argv[1:]
    # --single: single-line phones (softphones) that register at b when they move; by
    # default dual-line phones, registered at both sites all along (as ccdr provisions them).
    phones = "single" if "--single" in args else "dual"
    # Exit 1 when a run missed one of the targets (printed per run).
    sys.exit(0 if asyncio.run(main([int(x) for x in args if x != "--single"] or [1000], phones)) else 1)
