"""Login storm: N agents log in through both sites' login services at once, their phones
register, and each agent's queue membership is confirmed (CTI registration read back).

Everything is real: two `ccdr login serve` processes, PostgreSQL, Redis, the lab's two
Asterisk 22 sites, SIPp phones. The bench process is only the HTTP client (aiohttp,
CONCURRENCY logins in flight) and the SIPp driver. Half the agents log in at each site.

Reports: the login call's rate and latency (p50/p95/p99/max, as the client sees it), then
the time from the storm's start until every phone is registered and every membership is
confirmed, a read-back count through AMI, and the logout of everyone.

The bench client sends no heartbeats, so the services run with a 900 s session TTL (a
10,000-agent run lasts longer than the default 30 s; expired sessions would hand their
virtual IDs to later logins).

Each site's service runs CCDR_BENCH_WORKERS processes (default 1: `ccdr login serve --workers`;
with both sites' services busy, one each is one per core here: two each measured 484/s against
598/s, p99 162 ms against 118 ms).

CCDR_BENCH_RETURNING=1: returning agents, as at every shift start after the first: their hashes
have the login profile (argon2id 19 MiB, t=2: 20 ms of CPU each) and the services remember
verified passwords (CCDR_VERIFIED_KEY); the cache is warmed for every agent first, as their
logins within the last week would have left it.

CCDR_BENCH_PHONES_FIRST=1: the phones are registered before the storm, as desk phones that stay
registered all day are: each login's CTI registration (QueueAdd, read-back) then runs during
the storm, in the same services, instead of after it.

Run as root with the lab up:  python bench/bench_login_storm.py [N] [CONCURRENCY]
(brings the lab to N phones per site; uses a scratch database and Redis db 15).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import asyncpg
import redis.asyncio as aioredis
import yaml

from bench.hostspeed import HostSpeed
from controlplane.inventory.importer import IMPORT_HASHER, import_files
from controlplane.inventory.migrate import migrate
from controlplane.login.manager import LOGIN_HASHER
from controlplane.login.verified import VERIFIED_TTL_S, VerifiedPasswords
from controlplane.pbx.asterisk import AsteriskClient
from controlplane.settings import load_topology
from lab import manager
from lab.agents import QUEUES, percentile, write_inventory
from lab.layout import FIRST_EXTENSION, site

ADMIN_PG = os.environ.get("CCDR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_DB = 15
PORTS = {"a": 18081, "b": 18082}
CCDR = str(Path(sys.executable).parent / "ccdr")
WORKERS = int(os.environ.get("CCDR_BENCH_WORKERS", "1"))  # login-service processes per site
RETURNING = os.environ.get("CCDR_BENCH_RETURNING") == "1"  # login-profile hashes, warm verification cache
PHONES_FIRST = os.environ.get("CCDR_BENCH_PHONES_FIRST") == "1"  # phones registered before the storm


def mac(i: int) -> str:
    return f"02:01:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:00"


def site_of(i: int) -> str:
    return "a" if i % 2 == 0 else "b"


async def wait_http(url: str, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {limit_s} s")


async def main(n: int, conc: int) -> None:
    print(f"lab up with {n} phones per site...", flush=True)
    await asyncio.to_thread(manager.up, n)
    lab_topo = yaml.safe_load(manager.TOPOLOGY_FILE.read_text())
    # Start with no phone registered: a run cut short leaves its contacts for their 300 s, and
    # the next storm's services would find those phones registered and add members during
    # the login calls (a different, heavier measurement).
    await asyncio.gather(*(asyncio.to_thread(unregister_left, s) for s in ("a", "b")))
    db = f"ccdr_storm_{secrets.token_hex(4)}"
    dsn = ADMIN_PG.rsplit("/", 1)[0] + "/" + db
    admin = await asyncpg.connect(ADMIN_PG)
    await admin.execute(f'CREATE DATABASE "{db}"')
    r = aioredis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    await r.flushdb()
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="ccdr-storm-"))
    try:
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        write_inventory(tmp / "inv.yaml", n, account=lambda i: f"agent{i:05d}", mac=mac,
                        queue=lambda i: QUEUES[(i // 2) % 2],
                        region=lambda i: "east" if site_of(i) == "a" else "west",
                        hasher=LOGIN_HASHER if RETURNING else IMPORT_HASHER)
        t = time.perf_counter()
        await import_files(conn, [tmp / "inv.yaml"])
        stored = await conn.fetchval("SELECT password_hash FROM agents LIMIT 1")
        await conn.close()
        print(f"imported {n} agents in {time.perf_counter() - t:.1f} s", flush=True)
        env = dict(os.environ, CCDR_ADMIN_TOKEN="bench")
        if RETURNING:
            key = secrets.token_hex(16)
            env["CCDR_VERIFIED_KEY"] = key
            cache = VerifiedPasswords(r, "ccdr:", key.encode(), VERIFIED_TTL_S)
            for i in range(n):
                await cache.remember(f"agent{i:05d}", stored, "pw")
            print(f"returning agents: login-profile hashes, {n} verifications remembered", flush=True)
        topo = dict(lab_topo)
        topo["postgres"] = {"dsn": dsn}
        topo["redis"] = {"url": f"redis://127.0.0.1:6379/{REDIS_DB}"}
        for s in topo["sites"]:
            s["login_url"] = f"http://127.0.0.1:{PORTS[s['id']]}"
        (tmp / "topology.yaml").write_text(yaml.safe_dump(topo))
        procs += [start_service(sid, tmp, env) for sid in ("a", "b")]
        for sid in ("a", "b"):
            await wait_http(f"http://127.0.0.1:{PORTS[sid]}/status")

        lat: list[float] = []
        bodies: list[dict[str, Any]] = [{} for _ in range(n)]
        sem = asyncio.Semaphore(conc)
        conn_ = aiohttp.TCPConnector(limit=conc)
        async with aiohttp.ClientSession(connector=conn_) as http:
            async def one(i: int) -> None:
                async with sem:
                    t0 = time.perf_counter()
                    async with http.post(f"http://127.0.0.1:{PORTS[site_of(i)]}/v1/login",
                                         json={"account": f"agent{i:05d}", "password": "pw", "mac": mac(i)}) as resp:
                        body = await resp.json()
                    lat.append(time.perf_counter() - t0)
                    if resp.status != 200:
                        raise RuntimeError(f"agent{i:05d}: {resp.status} {body}")
                    bodies[i] = body

            if PHONES_FIRST:  # each agent logs in at its own site (no rules; both PBXs up)
                first = {s: [FIRST_EXTENSION + i for i in range(n) if site_of(i) == s] for s in ("a", "b")}
                await asyncio.gather(*(asyncio.to_thread(manager_register, s, exts) for s, exts in first.items()))
                print("phones registered before the storm", flush=True)
            print(f"storm: {n} logins, {conc} in flight...", flush=True)
            t_start = time.perf_counter()
            with HostSpeed() as speed:
                await asyncio.gather(*(one(i) for i in range(n)))
            t_logins = time.perf_counter() - t_start
            vaids = {b["virtual_agent_id"] for b in bodies}
            assert len(vaids) == n, "duplicate virtual agent IDs"
            by_site = {s: [FIRST_EXTENSION + i for i in range(n) if bodies[i]["site"] == s] for s in ("a", "b")}
            # Phones register where they were told (SIPp, 900/s per site: the shared notes put
            # Asterisk's own limit near 2,000/s with AMI listeners attached).
            if not PHONES_FIRST:
                await asyncio.gather(*(asyncio.to_thread(manager_register, s, exts) for s, exts in by_site.items()))
            t_registered = time.perf_counter() - t_start
            deadline = time.monotonic() + 120
            confirmed = 0
            while time.monotonic() < deadline:
                async with http.get(f"http://127.0.0.1:{PORTS['a']}/v1/sessions",
                                    headers={"Authorization": "Bearer bench"}) as resp:
                    sess = (await resp.json())["sessions"]
                confirmed = sum(1 for s in sess if s["state"] == "cti_registered")
                if confirmed == n:
                    break
                await asyncio.sleep(0.5)
            t_cti = time.perf_counter() - t_start
            # Read back through AMI at each site: every agent a member where it logged in.
            lt = load_topology(tmp / "topology.yaml")
            readback = 0
            for s in lt.sites:
                assert s.ami is not None
                c = AsteriskClient(s.id, s.ami, lt.timings)
                await c.start()
                members = {m.interface for q in ("sales", "support") for m in await c.queue_status(q)}
                readback += sum(1 for e in by_site[s.id] if f"PJSIP/{e}" in members)
                await c.close()
            print(f"confirmed {confirmed} at {t_cti:.1f} s; read back {readback}", flush=True)
            t0 = time.perf_counter()
            failed: list[str] = []

            async def logout(b: dict[str, Any]) -> None:
                async with sem, http.post(f"http://127.0.0.1:{PORTS[b['site']]}/v1/logout",
                                          json={"session_id": b["session_id"], "token": b["token"]}) as resp:
                    if resp.status != 200:
                        failed.append(f"{resp.status} {await resp.text()}")
            await asyncio.gather(*(logout(b) for b in bodies))
            t_logout = time.perf_counter() - t0
            if failed:
                print(f"{len(failed)} logouts failed, e.g. {failed[0]}")
        await asyncio.gather(*(asyncio.to_thread(manager_register, s, exts, 0) for s, exts in by_site.items()))
        print(f"\nlogin storm, {n:,} agents over two login services, {conc} logins in flight:")
        print(f"  login calls: {t_logins:.2f} s, {n / t_logins:,.0f} logins/s;"
              f" latency p50 {percentile(lat, .5) * 1000:.0f} ms,"
              f" p95 {percentile(lat, .95) * 1000:.0f} ms, p99 {percentile(lat, .99) * 1000:.0f} ms,"
              f" max {max(lat) * 1000:.0f} ms"
              f" (mean {statistics.mean(lat) * 1000:.0f} ms)")
        print(f"  {speed.summary()}, during the login calls")
        print("  all phones registered before the storm" if PHONES_FIRST else
              f"  all phones registered: {t_registered:.1f} s after the storm's start")
        print(f"  CTI registration confirmed (read back by the service): {confirmed:,}/{n:,} at {t_cti:.1f} s")
        print(f"  read back through AMI by this bench: {readback:,}/{n:,} members at their login site")
        print(f"  logout of everyone: {t_logout:.1f} s")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        await r.flushdb()
        await r.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


def start_service(sid: str, tmp: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(tmp / f"login-{sid}.log", "wb") as log:
        return subprocess.Popen([CCDR, "login", "serve", "--site", sid, "--topology",
                                 str(tmp / "topology.yaml"), "--session-ttl", "900", "--workers", str(WORKERS)],
                                env=env, stderr=log)


def unregister_left(site_id: str) -> None:
    from lab.phones import register_many, registered

    left = registered(site(site_id))
    if left:
        print(f"site {site_id}: unregistering {len(left)} phones left registered", flush=True)
        register_many(site(site_id), left, 0, 900, timeout_s=120)


def manager_register(site_id: str, exts: list[int], expires: int = 300) -> None:
    from lab.phones import register_many

    register_many(site(site_id), exts, expires, 900, timeout_s=120)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000,
                     int(sys.argv[2]) if len(sys.argv) > 2 else 100))
