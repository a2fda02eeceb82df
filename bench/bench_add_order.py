"""Registrations and queue adds at one site: in which order does a mass move cost least?

Registers N phones at the lab's site b (the same rate limit as the drill's fleet, 1,500
REGISTERs/s) and adds each one's queue member there, two ways, alternating:
- ``register, then add``: every phone registers, then every member is added (the failover
  bench's raw limit);
- ``add after each``: each member is added as soon as its own phone registered, while the
  others still register (what a per-agent CTI registration does in a mass move).

Reports the wall time until every phone is registered and every member added, and Asterisk b's
CPU time for it. Why it matters: app_queue scans every member of every queue on each device
state change (shared notes, "Queue membership"), so a registration that lands after many
members were added costs O(members).

Run as root with the lab up:  python bench/bench_add_order.py [N] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_client.sip.fleet import FleetSettings, PhoneFleet
from controlplane.pbx.asterisk import AsteriskClient
from controlplane.settings import load_topology
from lab import asterisk_site, manager
from lab.drill.runner import queue_of
from lab.layout import FIRST_EXTENSION, HOST_ADDRESS, phone_password, site
from lab.system import process_cpu_s


def asterisk_cpu_s() -> float:
    p = asterisk_site.pid(site("b"))
    assert p is not None, "site b's Asterisk is not running: ccdr lab up"
    return process_cpu_s(p)


async def one(n: int, interleaved: bool) -> tuple[float, float]:
    b = load_topology(manager.TOPOLOGY_FILE).site("b")
    assert b.ami is not None
    exts = [str(FIRST_EXTENSION + i) for i in range(n)]
    fleet = await PhoneFleet.open(exts, password=lambda e: phone_password(int(e)), host=HOST_ADDRESS,
                                  settings=FleetSettings(register_rate=1500, burst=50, expires=120))
    ami = AsteriskClient("b", b.ami, load_topology(manager.TOPOLOGY_FILE).timings)
    await ami.start()
    registrar = (b.sip.host, b.sip.port)
    try:
        ours = {f"PJSIP/{e}" for e in exts}
        for m in await ami.queue_status():
            if m.interface in ours:
                await ami.queue_remove(m.queue, m.interface)
        await asyncio.sleep(1)
        cpu0, t0 = asterisk_cpu_s(), time.perf_counter()
        if interleaved:
            async def phone(i: int) -> None:
                ev = await fleet.lines[i].register(registrar, 120)
                assert ev.kind.name == "REGISTERED", ev
                await ami.queue_add(queue_of(i), f"PJSIP/{exts[i]}", name=f"order/{i}")
            await asyncio.gather(*(phone(i) for i in range(n)))
        else:
            rep = await fleet.register_all(registrar)
            assert rep.registered == n, rep.summary()
            await asyncio.gather(*(ami.queue_add(queue_of(i), f"PJSIP/{e}", name=f"order/{i}")
                                   for i, e in enumerate(exts)))
        wall = time.perf_counter() - t0
        await asyncio.sleep(1)  # what Asterisk still owes (device states, events) counts too
        cpu = asterisk_cpu_s() - cpu0
        await asyncio.gather(*(ami.queue_remove(queue_of(i), f"PJSIP/{e}") for i, e in enumerate(exts)))
        await fleet.unregister_all()
        return wall, cpu
    finally:
        await ami.close()
        fleet.close()


async def main(n: int, rounds: int) -> None:
    rows: dict[str, list[tuple[float, float]]] = {"register, then add": [], "add after each": []}
    for _ in range(rounds):
        rows["register, then add"].append(await one(n, False))
        rows["add after each"].append(await one(n, True))
    print(f"{n} phones and members at site b, {rounds} rounds (wall s / Asterisk b CPU s):")
    for k, v in rows.items():
        print(f"  {k:20} " + ", ".join(f"{w:.2f} / {c:.2f}" for w, c in v))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10000, int(sys.argv[2]) if len(sys.argv) > 2 else 2))
