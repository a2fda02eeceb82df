"""Benchmark: a whole phone fleet registering at the lab's site b, and moving a -> b.

Needs the lab with enough endpoints: `ccdr lab up --phones 10000`.

    PYTHONPATH=$PWD python bench/bench_fleet_register.py --phones 1000 5000 10000
    PYTHONPATH=$PWD python bench/bench_fleet_register.py --phones 1000 --sipp   # raw sipp comparison

Prints per run: time for all phones to register, rate, per-phone latency p50/p95/max
(from sending the first REGISTER to the 200, rate-limit queueing excluded), failures,
retransmissions, and the process RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from agent_client.sip.fleet import FleetSettings, PhoneFleet
from controlplane.settings import load_topology

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = "10.77.0.1"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run_fleet(n: int, a: tuple[str, int], b: tuple[str, int], rate: float) -> None:
    exts = [str(1001 + i) for i in range(n)]
    fleet = await PhoneFleet.open(
        exts, password=lambda e: f"lab-{e}", host=BRIDGE, settings=FleetSettings(register_rate=rate, expires=600)
    )
    try:
        rep = await fleet.register_all(b)
        print(f"N={n:>6} register at b : {rep.summary()}  RSS {rss_mb():.0f} MB")
        if rep.failure_details:
            print("   first failures:", rep.failure_details[:3])
        rep = await fleet.re_register_all(a)
        print(f"N={n:>6} move b -> a    : {rep.summary()}")
        rep = await fleet.re_register_all(b)
        print(f"N={n:>6} move a -> b    : {rep.summary()}  RSS {rss_mb():.0f} MB")
        t0 = time.monotonic()
        await fleet.unregister_all()
        print(f"N={n:>6} unregister     : {time.monotonic() - t0:.2f} s")
    finally:
        fleet.close()


def run_sipp(n: int, b: tuple[str, int], rate: float) -> None:
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp not installed (apt-get install sip-tester): skipping raw-limit variant")
        return
    scen = (ROOT / "lab/sipp/register.xml").read_text()
    # SIPp 3.6 does not expand [field0] inside [authentication ...]; it does expand a
    # whole "[authentication username=.. password=..]" keyword held in a CSV field.
    scen = scen.replace("[service]", "[field0]").replace("[authentication]", "[field1]")
    with tempfile.TemporaryDirectory() as d:
        sf, inf = Path(d) / "reg.xml", Path(d) / "phones.csv"
        sf.write_text(scen)
        inf.write_text(
            "SEQUENTIAL\n"
            + "".join(f"{e};[authentication username={e} password=lab-{e}]\n" for e in range(1001, 1001 + n))
        )
        cmd = [
            sipp, f"{b[0]}:{b[1]}", "-sf", str(sf), "-inf", str(inf), "-key", "expires", "600",
            "-i", BRIDGE, "-p", "0", "-m", str(n), "-r", str(int(rate)), "-l", "2000",
            "-nostdin", "-trace_stat", "-stf", str(Path(d) / "stat.csv"),
        ]  # fmt: skip
        t0 = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        secs = time.monotonic() - t0
        stat = (Path(d) / "stat.csv").read_text().splitlines() if (Path(d) / "stat.csv").exists() else []
        ok = fail = "?"
        if len(stat) >= 2:
            head, last = stat[0].split(";"), stat[-1].split(";")
            row = dict(zip(head, last, strict=False))
            ok, fail = row.get("SuccessfulCall(C)", "?"), row.get("FailedCall(C)", "?")
        print(f"N={n:>6} sipp at b -r {int(rate)}: {secs:.2f} s, successful {ok}, failed {fail}, exit {p.returncode}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phones", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--rate", type=float, default=FleetSettings().register_rate)
    ap.add_argument("--sipp", action="store_true", help="also run plain sipp on the same phones")
    ap.add_argument("--sipp-rate", type=float, default=2500)
    args = ap.parse_args()
    topo = load_topology(Path("/var/lib/ccdr/lab/topology.yaml"))
    site = {s.id: (s.sip.host, s.sip.port) for s in topo.sites}
    for n in args.phones:
        asyncio.run(run_fleet(n, site["a"], site["b"], args.rate))
        if args.sipp:
            run_sipp(n, site["b"], args.sipp_rate)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"peak RSS {ru.ru_maxrss / 1024:.0f} MB, CPU user {ru.ru_utime:.1f} s sys {ru.ru_stime:.1f} s")


if __name__ == "__main__":
    main()
