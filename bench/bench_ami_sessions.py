"""What an idle AMI session costs Asterisk while phones register.

Opens K extra AMI sessions to the lab's site b (logged in, never sending anything more), then
registers and unregisters the same 2,000 phones at b with SIPp, and reports Asterisk b's CPU
time for that. Run with K = 0 and K = 8, alternating: the difference is what the sessions cost.

Why it matters: the login services hold AMI sessions to every site, and a mass move is tens of
thousands of events at the surviving site. Asterisk wakes every connected session's thread for
each event, whether the session subscribed to it or not (``Events: off`` included).

Run as root with the lab up:  python bench/bench_ami_sessions.py [ROUNDS]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controlplane.settings import load_topology
from lab import asterisk_site, manager
from lab.ami_probe import AmiProbe
from lab.layout import site
from lab.phones import register_many
from lab.system import process_cpu_s

PHONES = list(range(3001, 5001))  # 2,000 lab extensions


def one(k: int, events: str) -> float:
    ami = load_topology(manager.TOPOLOGY_FILE).site("b").ami
    assert ami is not None
    sessions = []
    try:
        for _ in range(k):
            p = AmiProbe(ami.host, ami.port, timeout=3)
            p.action("Login", Username=ami.username, Secret=ami.secret.reveal(), Events=events)
            sessions.append(p)
        pid = asterisk_site.pid(site("b"))
        assert pid is not None, "site b's Asterisk is not running: ccdr lab up"
        c0 = process_cpu_s(pid)
        register_many(site("b"), PHONES, 300, 1000, timeout_s=30)
        register_many(site("b"), PHONES, 0, 1000, timeout_s=30)
        time.sleep(1)  # events still being delivered
        return process_cpu_s(pid) - c0
    finally:
        for p in sessions:
            p.close()


def main(rounds: int) -> None:
    rows: dict[str, list[float]] = {"no extra session": [], "8 sessions, Events: off": []}
    for _ in range(rounds):
        rows["no extra session"].append(one(0, "off"))
        rows["8 sessions, Events: off"].append(one(8, "off"))
    print(f"Asterisk b's CPU for {len(PHONES):,} registrations and unregistrations, {rounds} rounds:")
    for name, v in rows.items():
        print(f"  {name:25s} " + ", ".join(f"{x:.2f} s" for x in v))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
