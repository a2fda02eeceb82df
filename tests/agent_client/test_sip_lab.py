"""The SIP stack against the lab's real Asterisk 22 (needs `ccdr lab up`)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from agent_client.sip.fleet import FleetSettings, PhoneFleet
from agent_client.sip.transport import SipTransport
from agent_client.sip.ua import LineEventKind, PhoneLine
from lab.ami_probe import AmiProbe
from tests.conftest import need

pytestmark = pytest.mark.lab

BRIDGE = "10.77.0.1"  # the host's side of the lab bridge: the sites can reach it


def _ami(site: Any) -> AmiProbe:
    p = AmiProbe(site.ami.host, site.ami.port, timeout=10)
    r = p.action("Login", Username=site.ami.username, Secret=site.ami.secret.reveal(), Events="off")
    assert r.get("Response") == "Success"
    return p


def contacts(site: Any) -> dict[str, str]:
    """AOR -> contact URI, from PJSIPShowContacts (ContactList events until ContactListComplete)."""
    p = _ami(site)
    try:
        r = p.action("PJSIPShowContacts")
        out: dict[str, str] = {}
        if r.get("Response") != "Success":
            assert r.get("Message") == "No Contacts found", r
            return out
        while True:
            f = p.frame()
            if f.get("Event") == "ContactListComplete":
                return out
            if f.get("Event") == "ContactList":
                out[f.get("ObjectName", "").split(";@")[0]] = f.get("Uri", "")
    finally:
        p.close()


def _site(topo: Any, sid: str) -> Any:
    return next(s for s in topo.sites if s.id == sid)


def _ext(lo: int, hi: int) -> str:
    return str(random.randint(lo, hi))


async def test_one_line_registers_with_digest_and_unregisters(lab_topology: Any) -> None:
    a = _site(lab_topology, "a")
    t = await SipTransport.open(BRIDGE, 0)
    ext = _ext(1011, 1015)
    line = PhoneLine(t, ext, f"lab-{ext}")
    try:
        ev = await asyncio.wait_for(line.register((a.sip.host, a.sip.port), expires=120), 10)
        assert ev.kind is LineEventKind.REGISTERED, ev
        uri = contacts(a).get(ext)
        assert uri is not None and f"{ext}@{BRIDGE}:{t.local_addr[1]}" in uri
        assert t.stats.by_status.get(401) == 1  # challenged once, then accepted
        ev = await asyncio.wait_for(line.unregister(), 10)
        assert ev.kind is LineEventKind.UNREGISTERED and ev.detail == "200 OK"
        assert f"{BRIDGE}:{t.local_addr[1]}" not in contacts(a).get(ext, "")
    finally:
        line.close()
        t.close()


async def test_wrong_password_is_a_failed_event_not_a_hang(lab_topology: Any) -> None:
    a = _site(lab_topology, "a")
    t = await SipTransport.open(BRIDGE, 0)
    ext = _ext(1016, 1017)
    line = PhoneLine(t, ext, "not-the-password")
    seen: list[LineEventKind] = []
    line.listeners.append(lambda e: seen.append(e.kind))
    try:
        ev = await asyncio.wait_for(line.register((a.sip.host, a.sip.port)), 10)
        assert ev.kind is LineEventKind.REGISTRATION_FAILED and ev.detail.startswith("401")
        assert seen == [LineEventKind.REGISTRATION_FAILED]
    finally:
        line.close()
        t.close()


async def test_asterisk_invite_and_options_are_answered(lab_topology: Any) -> None:
    a = _site(lab_topology, "a")
    t = await SipTransport.open(BRIDGE, 0)
    ext = _ext(1018, 1020)
    line = PhoneLine(t, ext, f"lab-{ext}")
    try:
        ev = await asyncio.wait_for(line.register((a.sip.host, a.sip.port), expires=120), 10)
        assert ev.kind is LineEventKind.REGISTERED
        p = _ami(a)
        try:
            r = await asyncio.to_thread(
                p.action, "Originate", Channel=f"PJSIP/{ext}", Application="Wait", Data="1", Timeout="10000"
            )
        finally:
            p.close()
        assert r.get("Response") == "Success", r
        assert line.answered_calls == 1
        for _ in range(100):  # Wait(1) then Asterisk hangs up: BYE ends the dialog
            if not line.dialogs:
                break
            await asyncio.sleep(0.05)
        assert not line.dialogs
        p = _ami(a)
        try:
            r = await asyncio.to_thread(p.action, "PJSIPQualify", Endpoint=ext)
        finally:
            p.close()
        for _ in range(100):
            if line.options_answered:
                break
            await asyncio.sleep(0.05)
        assert line.options_answered >= 1, r
        await line.unregister()
    finally:
        line.close()
        t.close()


async def test_fleet_of_200_registers_at_a_then_moves_to_b(lab_topology: Any) -> None:
    a, b = _site(lab_topology, "a"), _site(lab_topology, "b")
    exts = [str(1000 + i) for i in range(1, 201)]
    fleet = await PhoneFleet.open(
        exts, password=lambda e: f"lab-{e}", host=BRIDGE, settings=FleetSettings(register_rate=1500, expires=300)
    )
    try:
        rep = await asyncio.wait_for(fleet.register_all((a.sip.host, a.sip.port)), 60)
        # The lab's default is 20 phones; this test needs `ccdr lab up --phones 200` (or more).
        # need() skips locally and fails in CI, so CI cannot pass by skipping.
        need(
            not (rep.failures and all(d.endswith("401 Unauthorized") for d in rep.failure_details)),
            f"the lab has fewer than 200 phones (run `ccdr lab up --phones 10000`): {rep.failure_details[:2]}",
        )
        assert rep.registered == 200 and rep.failures == 0, rep
        at_a = contacts(a)
        port = fleet.transport.local_addr[1]
        assert all(f"{BRIDGE}:{port}" in at_a.get(e, "") for e in exts)
        rep = await asyncio.wait_for(fleet.re_register_all((b.sip.host, b.sip.port)), 60)
        assert rep.registered == 200 and rep.failures == 0, rep
        at_b = contacts(b)
        assert all(f"{BRIDGE}:{port}" in at_b.get(e, "") for e in exts)
    finally:
        await asyncio.wait_for(fleet.unregister_all(), 60)  # leave no contacts behind in the shared lab
        fleet.close()
