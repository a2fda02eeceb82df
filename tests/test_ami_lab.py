"""The Asterisk adapter against the lab's real Asterisk 22 (fails in CI if the lab is missing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from controlplane.errors import PbxAuthError
from controlplane.pbx.asterisk import AsteriskClient
from controlplane.pbx.base import EventKind, LinkState, PbxEvent, Subscription
from controlplane.settings import Topology
from lab import manager
from lab.layout import HOST_ADDRESS, PHONE_BASE_PORT, site
from lab.phones import register

pytestmark = pytest.mark.lab


@pytest.fixture
async def ami_a(lab_topology: Topology) -> AsyncIterator[AsteriskClient]:
    s = lab_topology.site("a")
    assert s.ami is not None
    c = AsteriskClient("a", s.ami, lab_topology.timings)
    await c.start()
    yield c
    await c.close()


async def _next(sub: Subscription, kind: EventKind, within: float, **match: str) -> PbxEvent:
    async def find() -> PbxEvent:
        async for ev in sub:
            if ev.kind is kind and all(ev.data.get(k) == v for k, v in match.items()):
                return ev
        raise AssertionError("subscription ended")
    return await asyncio.wait_for(find(), within)


async def test_thousand_members_added_and_removed_pipelined_and_read_back(ami_a: AsteriskClient) -> None:
    ifaces = [f"Local/{i}@ccdr-lab" for i in range(1000)]
    await asyncio.gather(*(ami_a.queue_add("bench", f, name=f"m{n}", penalty=n % 3) for n, f in enumerate(ifaces)))
    members = await ami_a.queue_status("bench")
    assert sorted(m.interface for m in members) == sorted(ifaces)
    assert {m.name for m in members if m.interface == "Local/7@ccdr-lab"} == {"m7"}
    assert {m.penalty for m in members if m.interface == "Local/7@ccdr-lab"} == {1}
    await asyncio.gather(*(ami_a.queue_remove("bench", i) for i in ifaces))
    assert await ami_a.queue_status("bench") == []


async def test_phone_registration_events(ami_a: AsteriskClient) -> None:
    # Events are matched by this phone's contact, not only its extension: where a drill left
    # 1004 registered from another address, remove_existing reports the new contact, then the
    # old one's removal, which the test took for its own and failed (CI at d3ba155; the order
    # seen in the lab: NonQualified :5170, Removed :<old>, Removed :5170).
    uri = f"sip:1004@{HOST_ADDRESS}:{PHONE_BASE_PORT + site('a').index}"
    sub = ami_a.events()
    try:
        await asyncio.to_thread(register, site("a"), 1004, 0)
        await asyncio.to_thread(register, site("a"), 1004, 120)
        ev = await _next(sub, EventKind.PHONE_REGISTERED, 5, endpoint="1004", uri=uri)
        assert ev.raw is not None and ev.raw["AOR"] == "1004"
        assert ami_a.registered["1004"].uri == uri
        await asyncio.to_thread(register, site("a"), 1004, 0)
        await _next(sub, EventKind.PHONE_UNREGISTERED, 5, endpoint="1004", uri=uri)
        assert "1004" not in ami_a.registered
    finally:
        await sub.aclose()


async def test_freeze_reported_unreachable_within_2s(ami_a: AsteriskClient) -> None:
    sub = ami_a.events()
    try:
        t0 = time.monotonic()
        await asyncio.to_thread(manager.freeze, "a")
        ev = await _next(sub, EventKind.PBX_DOWN, 5)
        took = time.monotonic() - t0
        assert took < 2.0, took
        assert ev.data["refused"] is False  # frozen: its port still accepts
        assert ami_a.state is not LinkState.UP
    finally:
        await asyncio.to_thread(manager.thaw, "a")
        await sub.aclose()
    await ami_a.wait_up(10)


async def test_kill_start_reconnects_and_rereads_state(ami_a: AsteriskClient) -> None:
    await ami_a.queue_add("sales", "PJSIP/1010", name="before-kill")
    # The QueueMemberAdded event may follow the action's Response: wait for the picture.
    for _ in range(100):
        if "PJSIP/1010" in ami_a.members.get("sales", {}):
            break
        await asyncio.sleep(0.02)
    assert "PJSIP/1010" in ami_a.members.get("sales", {})
    sub = ami_a.events()
    try:
        await asyncio.to_thread(manager.kill, "a")
        ev = await _next(sub, EventKind.PBX_DOWN, 5)
        assert ev.data["refused"] is True, ev.data  # the process is gone: certain, in the first event
        await asyncio.to_thread(manager.start, "a")
        await _next(sub, EventKind.PBX_UP, 15)
    finally:
        await sub.aclose()
    # A restarted Asterisk has no dynamic members (persistentmembers=no): the re-read shows it.
    for _ in range(100):
        if "PJSIP/1010" not in ami_a.members.get("sales", {}):
            break
        await asyncio.sleep(0.05)
    assert "PJSIP/1010" not in ami_a.members.get("sales", {})
    assert await ami_a.queue_status("sales", member="PJSIP/1010") == []


async def test_wrong_password_is_auth_failed(lab_topology: Topology) -> None:
    s = lab_topology.site("b")
    assert s.ami is not None
    c = AsteriskClient("b", s.ami, lab_topology.timings, secret="not-the-secret")
    try:
        with pytest.raises(PbxAuthError):
            await c.start()
        assert c.state is LinkState.AUTH_FAILED
        assert "not-the-secret" not in repr(c) and "not-the-secret" not in (c.last_error or "")
    finally:
        await c.close()
