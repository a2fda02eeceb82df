"""Unified login end to end: two login services, real PostgreSQL, Redis and the lab's
Asterisk 22, phones registering with SIPp (fails in CI if the lab is missing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from controlplane.inventory.directory import PgDirectory
from controlplane.inventory.importer import IMPORT_HASHER, import_files
from controlplane.login.service import LoginService
from controlplane.pbx.asterisk import AsteriskClient
from controlplane.pbx.base import EventKind, LinkState, PbxClient
from controlplane.settings import Topology
from lab import manager
from lab.layout import FIRST_EXTENSION, phone_password, site
from lab.phones import register_many

pytestmark = pytest.mark.lab
N = 1000


def mac(i: int) -> str:
    return f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"


def inventory(tmp: Path) -> list[Path]:
    h = IMPORT_HASHER.hash("pw")
    doc: dict[str, Any] = {
        "regions": ["east", "west"],
        "sites": [{"id": "a", "region": "east"}, {"id": "b", "region": "west"}],
        "systems": ["cards"],
        "skill_groups": [{"id": "sales", "queues": {"a": "sales", "b": "sales"}},
                         {"id": "support", "queues": {"a": "support", "b": "support"}}],
        "agents": [{"account": f"agent{i:04d}", "password_hash": h, "system": "cards",
                    "home_region": "east" if i % 2 == 0 else "west",
                    "skills": {"sales": 0} if i % 2 == 0 else {"support": 1}} for i in range(N)],
        "devices": [{"mac": mac(i), "model": "yealink-t46",
                     "lines": {s: {"extension": str(FIRST_EXTENSION + i), "sip_username": str(FIRST_EXTENSION + i),
                                   "sip_password": phone_password(FIRST_EXTENSION + i)} for s in ("a", "b")}}
                    for i in range(N)],
        "virtual_agent_ids": {"from": 1, "to": 2 * N},
    }
    f = tmp / "inventory.yaml"
    f.write_text(yaml.safe_dump(doc))
    return [f]


class TwoSites:
    def __init__(self) -> None:
        self.services: dict[str, LoginService] = {}
        self.servers: dict[str, TestServer] = {}
        self.clients: list[PbxClient] = []

    def url(self, sid: str) -> str:
        return str(self.servers[sid].make_url(""))


@pytest.fixture
async def two_sites(lab_topology: Topology, pg: Any, redis_client: Any, tmp_path: Path) -> AsyncIterator[TwoSites]:
    await asyncio.to_thread(manager.up, N)  # lab phones 1001..2000 at both sites
    async with pg.acquire() as c:
        await import_files(c, inventory(tmp_path))
    env = TwoSites()
    for sid in ("a", "b"):
        pbx: dict[str, PbxClient] = {}
        for s in lab_topology.sites:
            assert s.ami is not None
            client = AsteriskClient(s.id, s.ami, lab_topology.timings)
            await client.start()
            pbx[s.id] = client
            env.clients.append(client)
        # No client heartbeats here (the agent client does that): sessions must outlive the test.
        svc = LoginService(sid, lab_topology, PgDirectory(pg), pbx, redis_client, "admin",
                           prefix=redis_client.test_prefix, session_ttl_s=600)
        await svc.start_loops()
        server = TestServer(svc.app)
        await server.start_server()
        env.services[sid], env.servers[sid] = svc, server
    yield env
    for sid in ("a", "b"):
        await env.servers[sid].close()
        await env.services[sid].stop()
    for c in env.clients:
        await c.close()


async def _login(http: aiohttp.ClientSession, base: str, i: int) -> dict[str, Any]:
    async with http.post(f"{base}/v1/login", json={"account": f"agent{i:04d}", "password": "pw",
                                                   "mac": mac(i)}) as r:
        body: dict[str, Any] = await r.json()
        assert r.status == 200, body
        return body


async def _members(client: AsteriskClient, queue: str) -> set[str]:
    return {m.interface for m in await client.queue_status(queue)}


async def test_thousand_concurrent_logins_over_both_services(two_sites: TwoSites, lab_topology: Topology,
                                                             redis_client: Any, pg: Any) -> None:
    async with aiohttp.ClientSession() as http:
        bodies = await asyncio.gather(*(_login(http, two_sites.url("a" if i % 2 == 0 else "b"), i)
                                        for i in range(N)))
        vaids = [b["virtual_agent_id"] for b in bodies]
        assert len(set(vaids)) == N, "a virtual agent ID was given twice"
        by_site: dict[str, list[int]] = {"a": [], "b": []}
        for i, b in enumerate(bodies):
            assert b["site"] == ("a" if i % 2 == 0 else "b") and b["reason"] == "local"
            assert b["extension"] == str(FIRST_EXTENSION + i)
            by_site[b["site"]].append(FIRST_EXTENSION + i)
        # The phones register where they were told; CTI registration follows.
        await asyncio.gather(*(asyncio.to_thread(register_many, site(s), exts, 300, 500)
                               for s, exts in by_site.items()))
        store = two_sites.services["a"].sessions
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [s.state for s in await store.all()]
            if states.count("cti_registered") == N:
                break
            await asyncio.sleep(0.25)
        assert states.count("cti_registered") == N, {x: states.count(x) for x in set(states)}
        # Read back through AMI, at the chosen site.
        ami = {c.site: c for c in two_sites.clients[:2]}
        assert isinstance(ami["a"], AsteriskClient) and isinstance(ami["b"], AsteriskClient)
        assert {f"PJSIP/{e}" for e in by_site["a"]} <= await _members(ami["a"], "sales")
        assert {f"PJSIP/{e}" for e in by_site["b"]} <= await _members(ami["b"], "support")
        assert not {f"PJSIP/{e}" for e in by_site["a"]} & await _members(ami["b"], "sales")
        # Log everyone out: nothing left at either PBX, in Redis, or in the ID pool.
        async def logout(b: dict[str, Any]) -> None:
            base = two_sites.url(b["site"])
            async with http.post(f"{base}/v1/logout", json={"session_id": b["session_id"],
                                                            "token": b["token"]}) as r:
                assert r.status == 200
        await asyncio.gather(*(logout(b) for b in bodies))
    ours = {f"PJSIP/{FIRST_EXTENSION + i}" for i in range(N)}
    for c in ami.values():
        assert not ours & (await _members(c, "sales") | await _members(c, "support"))
    assert [k async for k in redis_client.scan_iter(match=f"{redis_client.test_prefix}sess*")] == []
    assert await pg.fetchval("SELECT count(*) FROM virtual_agent_ids WHERE session_id IS NOT NULL") == 0
    await asyncio.gather(*(asyncio.to_thread(register_many, site(s), exts, 0, 500) for s, exts in by_site.items()))


async def test_planned_switch_rule_moves_exactly_one_skill_group(two_sites: TwoSites, pg: Any) -> None:
    await pg.execute("INSERT INTO planned_switch_rules (scope, value, from_site, to_site) "
                     "VALUES ('skill_group', 'support', 'a', 'b')")
    async with aiohttp.ClientSession() as http:
        bodies = await asyncio.gather(*(_login(http, two_sites.url("a"), i) for i in range(40)))
    for i, b in enumerate(bodies):
        assert b["site"] == ("b" if i % 2 else "a"), (i, b["site"])  # odd agents are support


async def test_local_pbx_frozen_logins_served_at_other_site(two_sites: TwoSites) -> None:
    svc_a = two_sites.services["a"]
    sub = svc_a.pbx["a"].events()
    await asyncio.to_thread(manager.freeze, "a")
    try:
        async def down() -> None:
            async for ev in sub:
                if ev.kind is EventKind.PBX_DOWN:
                    return
        await asyncio.wait_for(down(), 5)
        assert svc_a.pbx["a"].state is not LinkState.UP
        async with aiohttp.ClientSession() as http:
            body = await _login(http, two_sites.url("a"), 6)
        assert body["site"] == "b" and body["reason"] == "local_pbx_down"
        assert body["registrar"]["host"] == site("b").address
    finally:
        await sub.aclose()
        await asyncio.to_thread(manager.thaw, "a")
