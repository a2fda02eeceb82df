"""Queue-member adds per second: through the adapter vs a raw asyncio socket client.

Same run, same Asterisk (lab site b), same pipelining window (timings.max_in_flight).
Each round adds N members to an empty queue, then removes them (not timed).
Run as root with the lab up:  python bench/bench_queue_add.py [N] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controlplane.pbx.asterisk import AsteriskClient
from controlplane.pbx.asterisk.client import DEFAULT_EVENT_MASK
from controlplane.protocols.ami import AmiParser, serialize_action
from controlplane.settings import load_topology

QUEUE = "bench"


async def raw_adds(host: str, port: int, user: str, secret: str, ifaces: list[str], window: int) -> float:
    reader, writer = await asyncio.open_connection(host, port)
    parser = AmiParser()
    pending: dict[str, asyncio.Future[None]] = {}

    async def read() -> None:
        while data := await reader.read(65536):
            for f in parser.feed(data):
                fut = pending.pop(f.get("ActionID") or "", None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    rt = asyncio.create_task(read())
    loop = asyncio.get_running_loop()
    login = loop.create_future()
    pending["login"] = login
    # The same event mask as the adapter: both receive the same traffic.
    writer.write(serialize_action("Login", [("ActionID", "login"), ("Username", user), ("Secret", secret),
                                            ("Events", DEFAULT_EVENT_MASK)]))
    await login
    sem = asyncio.Semaphore(window)

    async def add(n: int, iface: str) -> None:
        async with sem:
            fut = loop.create_future()
            pending[f"r{n}"] = fut
            writer.write(serialize_action("QueueAdd", [("ActionID", f"r{n}"), ("Queue", QUEUE), ("Interface", iface),
                                                       ("MemberName", f"m{n}"), ("Penalty", "0"), ("Paused", "false")]))
            await fut

    t0 = time.perf_counter()
    await asyncio.gather(*(add(n, i) for n, i in enumerate(ifaces)))
    dt = time.perf_counter() - t0
    writer.close()
    rt.cancel()
    return len(ifaces) / dt


async def adapter_adds(c: AsteriskClient, ifaces: list[str]) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(c.queue_add(QUEUE, i, name=f"m{n}") for n, i in enumerate(ifaces)))
    return len(ifaces) / (time.perf_counter() - t0)


async def main(n: int, rounds: int) -> None:
    topo = load_topology("/var/lib/ccdr/lab/topology.yaml")
    s = topo.site("b")
    assert s.ami is not None
    secret = s.ami.secret.reveal()
    c = AsteriskClient("b", s.ami, topo.timings)
    await c.start()
    ifaces = [f"Local/{i}@ccdr-lab" for i in range(n)]
    raw, ours = [], []
    for _ in range(rounds):
        raw.append(await raw_adds(s.ami.host, s.ami.port, s.ami.username, secret, ifaces, topo.timings.max_in_flight))
        await asyncio.gather(*(c.queue_remove(QUEUE, i) for i in ifaces))
        ours.append(await adapter_adds(c, ifaces))
        await asyncio.gather(*(c.queue_remove(QUEUE, i) for i in ifaces))
    await c.close()
    r, o = statistics.median(raw), statistics.median(ours)
    print(f"QueueAdd into an empty queue, N={n}, window={topo.timings.max_in_flight}, {rounds} rounds (median):")
    print(f"  raw socket client: {r:,.0f} adds/s   (all: {', '.join(f'{x:,.0f}' for x in raw)})")
    print(f"  ccdr adapter:      {o:,.0f} adds/s   (all: {', '.join(f'{x:,.0f}' for x in ours)})")
    print(f"  adapter / raw:     {o / r:.0%}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, int(sys.argv[2]) if len(sys.argv) > 2 else 5))
