"""The two-site lab, proven against real Asterisk 22 (issue: foundation).

These need root and the lab (`ccdr lab up`); in CI they fail rather than skip.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from controlplane.cli.main import cli
from controlplane.settings import Topology
from lab import asterisk_site, manager
from lab.ami_probe import AmiProbe
from lab.layout import SITES, site
from lab.phones import register

pytestmark = pytest.mark.lab


def _secret(topo: Topology, sid: str) -> str:
    ami = topo.site(sid).ami
    assert ami is not None
    return ami.secret.reveal()


def _login(topo: Topology, sid: str, events: str = "system") -> AmiProbe:
    ami = topo.site(sid).ami
    assert ami is not None
    p = AmiProbe(ami.host, ami.port, timeout=3)
    r = p.action("Login", Username=ami.username, Secret=_secret(topo, sid), Events=events)
    assert r["Response"] == "Success", r
    return p


def _lab(*args: str) -> None:
    r = CliRunner().invoke(cli, ["lab", *args])
    assert r.exit_code == 0, r.output


def _reachable(host: str, port: int, netns: str | None = None, timeout: float = 1.0) -> bool:
    """TCP connect from the host, or from inside another site's namespace."""
    code = (f"import socket;socket.create_connection(({host!r},{port}),timeout={timeout})")
    cmd = [sys.executable, "-c", code]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, timeout=timeout + 5).returncode == 0


@pytest.fixture
def restore_site_a() -> Iterator[None]:
    yield
    manager.thaw("a")
    manager.heal("a")
    manager.start("a")


def test_both_sites_accept_ami_login_and_are_fully_booted(lab_topology: Topology) -> None:
    for s in lab_topology.sites:
        p = _login(lab_topology, s.id)
        try:
            ev = p.wait_event("FullyBooted", 5)
            assert ev["Status"] == "Fully Booted"
            assert p.banner.startswith("Asterisk Call Manager/")
        finally:
            p.close()


def test_wrong_ami_secret_is_refused(lab_topology: Topology) -> None:
    ami = lab_topology.site("a").ami
    assert ami is not None
    p = AmiProbe(ami.host, ami.port)
    try:
        r = p.action("Login", Username=ami.username, Secret="definitely-wrong")
        assert r["Response"] == "Error"
    finally:
        p.sock.close()


@pytest.mark.parametrize("sid", [s.id for s in SITES])
def test_sip_phone_registers_and_registration_is_seen(lab_topology: Topology, sid: str) -> None:
    p = _login(lab_topology, sid)
    try:
        p.wait_event("FullyBooted", 5)
        register(site(sid), 1002, expires=0)  # start from "not registered"
        register(site(sid), 1002, expires=120)
        deadline = time.monotonic() + 5
        seen = None
        while time.monotonic() < deadline and seen is None:
            ev = p.wait_event("ContactStatus", deadline - time.monotonic())
            if ev.get("AOR") == "1002" and ev.get("ContactStatus") in ("Created", "NonQualified", "Reachable"):
                seen = ev
        assert seen is not None, "no ContactStatus for 1002"
        # Lab phones are not qualified, so Asterisk 22 reports "NonQualified" for a new contact.
        assert seen["URI"].startswith("sip:1002@10.77.0.1")
    finally:
        register(site(sid), 1002, expires=0)
        p.close()


def test_freeze_silences_ami_with_tcp_open_and_thaw_restores(
    lab_topology: Topology, restore_site_a: None
) -> None:
    p = _login(lab_topology, "a")
    try:
        assert p.action("Ping")["Response"] == "Success"
        _lab("freeze", "a")
        p.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):  # no answer, and not a closed connection (b"" -> LabError)
            p.action("Ping")
        _lab("thaw", "a")
        p.sock.settimeout(3.0)
        # The Ping sent while frozen is answered first, then ours.
        assert p.action("Ping")["Response"] == "Success"
    finally:
        p.sock.close()


def test_kill_then_start_ami_answers_again(lab_topology: Topology, restore_site_a: None) -> None:
    ami = lab_topology.site("a").ami
    assert ami is not None
    _lab("kill", "a")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ami.host, ami.port), timeout=2)
    st = manager.status()["sites"]["a"]
    assert st["asterisk"]["state"] == "stopped" and st["ami"]["state"] == "down"
    _lab("start", "a")
    p = _login(lab_topology, "a")
    try:
        assert p.action("Ping")["Response"] == "Success"
    finally:
        p.close()


def test_cut_isolates_site_both_ways_and_heal_restores(
    lab_topology: Topology, restore_site_a: None
) -> None:
    a, b = site("a"), site("b")
    assert _reachable(a.address, 5038) and _reachable(a.address, 5038, netns=b.netns)
    assert _reachable(b.address, 5038, netns=a.netns)
    _lab("cut", "a")
    assert not _reachable(a.address, 5038), "host still reaches a"
    assert not _reachable(a.address, 5038, netns=b.netns), "b still reaches a"
    assert not _reachable(b.address, 5038, netns=a.netns), "a still reaches b"
    assert _reachable(b.address, 5038), "cutting a must not cut b"
    _lab("heal", "a")
    assert _reachable(a.address, 5038) and _reachable(a.address, 5038, netns=b.netns)
    assert _reachable(b.address, 5038, netns=a.netns)


def test_every_phone_is_told_a_sites_port_is_closed(lab_topology: Topology) -> None:
    """The lab's phones share one address; Linux would send ICMP errors to it about once a
    second. A site's namespace limits none, so each of 200 datagrams to a closed port gets
    its own "port unreachable" (real phones, each a host of its own, would)."""
    import time

    from agent_client.sip.transport import IP_RECVERR, MSG_ERRQUEUE
    from lab.network import icmp_ratemask

    assert icmp_ratemask(site("a")) == 0 and icmp_ratemask(site("b")) == 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    sock.setblocking(False)
    errors = 0
    try:
        for i in range(200):
            try:
                sock.sendto(b"probe %d" % i, (site("a").address, 5999))
            except ConnectionRefusedError:  # an earlier datagram's error (still queued), not sent
                sock.sendto(b"probe %d" % i, (site("a").address, 5999))
        deadline = time.monotonic() + 2
        while errors < 200 and time.monotonic() < deadline:
            try:
                sock.recvmsg(512, 512, MSG_ERRQUEUE)
                errors += 1
            except BlockingIOError:
                time.sleep(0.01)
    finally:
        sock.close()
    assert errors == 200


def test_status_json_names_every_component(lab_topology: Topology) -> None:
    r = CliRunner().invoke(cli, ["lab", "status", "--json"])
    assert r.exit_code == 0
    st = json.loads(r.output)
    assert st["postgres"]["state"] == "up" and st["redis"]["state"] == "up"
    for s in SITES:
        got = st["sites"][s.id]
        assert got["ami"] == {"host": s.address, "port": 5038, "state": "up"}
        assert got["sip"]["host"] == s.address and got["sip"]["port"] == 5060
        assert got["sip"]["state"] == "up" and got["asterisk"]["state"] == "running"
        assert got["link"] == "up"


def test_up_twice_and_down_twice_succeed(lab_topology_path: Path) -> None:
    """Runs last in this file: it takes the lab down and brings it back."""
    _lab("up")
    _lab("up")
    _lab("down")
    assert not lab_topology_path.exists()
    assert not os.path.exists("/run/netns/ccdr-a")
    _lab("down")
    _lab("up")
    assert lab_topology_path.exists()
    assert manager.status()["sites"]["a"]["ami"]["state"] == "up"


def test_lab_commands_fail_with_one_clear_line_when_not_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    r = CliRunner().invoke(cli, ["lab", "kill", "a"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        "ccdr lab: ccdr lab kill must run as root (network namespaces, chroot and mounts need it)"
    ]


def test_fault_on_missing_namespace_fails_with_one_clear_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("lab.network.netns_exists", lambda name: False)
    r = CliRunner().invoke(cli, ["lab", "cut", "b"])
    assert r.exit_code == 1
    assert r.output.strip() == "ccdr lab: namespace ccdr-b is missing: run `ccdr lab up` first"


def test_docker_configs_are_the_files_the_native_lab_runs(lab_topology: Topology, tmp_path: Path) -> None:
    phones = manager.LabState.load().phones
    manager.export_configs(tmp_path, phones)
    for s in SITES:
        ours = sorted(p.name for p in (tmp_path / f"site-{s.id}" / "etc").glob("*.conf"))
        live = sorted(p.name for p in (s.root_dir / "etc").glob("*.conf"))
        assert ours == live and "pjsip.conf" in ours
        for name in ours:
            assert (tmp_path / f"site-{s.id}" / "etc" / name).read_bytes() == (
                s.root_dir / "etc" / name
            ).read_bytes(), name
        assert oct((tmp_path / f"site-{s.id}" / "etc" / "manager.conf").stat().st_mode)[-3:] == "600"


def test_docker_compose_matches_the_native_topology() -> None:
    import yaml

    doc = yaml.safe_load((Path(__file__).parent.parent / "lab" / "docker-compose.yml").read_text())
    for s in SITES:
        svc = doc["services"][f"asterisk-{s.id}"]
        assert svc["networks"]["ccdr"]["ipv4_address"] == s.address
        assert svc["volumes"] == [f"./generated/site-{s.id}:{s.srv}"]
        assert svc["environment"]["SITE"] == s.id
    assert {"postgres", "redis"} <= set(doc["services"])


def test_port_taken_by_something_else_fails_with_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import socketserver
    import threading

    class Silent(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"HTTP/1.0 400 nope\r\n\r\n")

    with socketserver.TCPServer(("127.0.0.1", 0), Silent) as srv:
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try:
            monkeypatch.setattr("lab.stores.PG_PORT", srv.server_address[1])
            r = CliRunner().invoke(cli, ["lab", "up"])
        finally:
            srv.shutdown()
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == (
        f"ccdr lab: port 127.0.0.1:{srv.server_address[1]} is taken by something that is not PostgreSQL"
    )


def test_missing_debootstrap_fails_with_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import shutil as _shutil

    from lab import rootfs

    real_which = _shutil.which
    monkeypatch.setattr(_shutil, "which", lambda t: None if t == "debootstrap" else real_which(t))
    with pytest.raises(Exception) as ei:
        rootfs.ensure_rootfs(tmp_path / "no-rootfs")
    assert str(ei.value) == "debootstrap not found: install it with `apt-get install debootstrap`"
    assert not (tmp_path / "no-rootfs").exists()


def test_phones_unregister_the_contact_they_registered(lab_topology: Topology) -> None:
    """SIPp phones send from their site's fixed port, so an unregister names the contact the
    registration made. Left to pick a port, a run took the first free one from 5060 up: with
    another run (or anything) holding 5060 at registration and not at the unregister, the
    unregister named another contact and the phone stayed registered for its 300 s."""
    from lab.phones import register_many

    sa = site("a")
    exts = [1011, 1012, 1013]
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        held.bind(("10.77.0.1", 5060))  # as the other site's SIPp run would be
        register_many(sa, exts, 300, 100, timeout_s=10)
        register(sa, 1014, expires=300)
    finally:
        held.close()
    contacts = asterisk_site.rx(sa, "pjsip show contacts")
    assert all(f"{e}/sip:{e}@10.77.0.1" in contacts for e in [*exts, 1014])
    register_many(sa, exts, 0, 100, timeout_s=10)
    register(sa, 1014, expires=0)
    contacts = asterisk_site.rx(sa, "pjsip show contacts")
    assert not [e for e in [*exts, 1014] if f"{e}/sip:{e}@" in contacts], contacts[-600:]
