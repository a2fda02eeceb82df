"""Phone provisioning: rendered files (golden), validation, vendor mapping, HTTP, inventory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from controlplane.cli.main import cli
from controlplane.errors import CcdrError
from controlplane.settings import SipRegistrar
from provisioning.errors import ProvisioningError
from provisioning.http import cached, make_app
from provisioning.model import LineConfig, PhoneConfig, vendor_of
from provisioning.render import render, render_all
from provisioning.source import load_phones

GOLDEN = Path(__file__).parent / "fixtures" / "provisioning" / "golden"
UPDATE = os.environ.get("CCDR_UPDATE_GOLDEN") == "1"

A = LineConfig("a", "10.10.0.5", 5060, "udp", "2001", "2001", "pw-a-2001")
B = LineConfig("b", "10.20.0.5", 5061, "tls", "3001", "3001", "pw-b-3001")
PHONES = {
    "yealink": PhoneConfig("805ec0a1b2c3", "Yealink T54W", "2001", (A, B)),
    "polycom": PhoneConfig("0004f2a1b2c3", "Polycom VVX 411", "2001", (A, B)),
    "grandstream": PhoneConfig("000b82a1b2c3", "Grandstream GXP2170", "2001", (A, B)),
    "cisco_spa": PhoneConfig("e8b748a1b2c3", "Cisco SPA504G", "2001", (A, B)),
}


def _xml_paths(files: dict[str, bytes]) -> list[str]:
    return [p for p, b in files.items() if b.startswith(b"<?xml")]


# --- golden files ---------------------------------------------------------------

@pytest.mark.parametrize("vendor", sorted(PHONES))
def test_golden(vendor: str) -> None:
    """Byte-exact output; CCDR_UPDATE_GOLDEN=1 rewrites the files (then read the diff)."""
    files = render(PHONES[vendor])
    d = GOLDEN / vendor
    if UPDATE:
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
        for path, body in files.items():
            (d / path.lstrip("/")).write_bytes(body)
    assert sorted(p.name for p in d.iterdir()) == sorted(p.lstrip("/") for p in files)
    for path, body in files.items():
        assert body == (d / path.lstrip("/")).read_bytes(), path
    assert render(PHONES[vendor]) == files  # deterministic


def test_paths_per_vendor() -> None:
    assert list(render(PHONES["yealink"])) == ["/805ec0a1b2c3.cfg"]
    assert list(render(PHONES["polycom"])) == ["/0004f2a1b2c3.cfg", "/phone-0004f2a1b2c3.cfg"]
    assert list(render(PHONES["grandstream"])) == ["/cfg000b82a1b2c3.xml"]
    assert list(render(PHONES["cisco_spa"])) == ["/spae8b748a1b2c3.xml"]


def test_xml_outputs_parse_and_primary_is_home() -> None:
    for vendor in ("polycom", "grandstream", "cisco_spa"):
        files = render(PHONES[vendor])
        assert _xml_paths(files) == list(files)
        for body in files.values():
            ET.fromstring(body)
    reg = ET.fromstring(render(PHONES["polycom"])["/phone-0004f2a1b2c3.cfg"]).find("reg")
    assert reg is not None
    assert reg.get("reg.1.server.1.address") == "10.10.0.5" and reg.get("reg.1.server.1.transport") == "UDPOnly"
    assert reg.get("reg.2.server.1.address") == "10.20.0.5" and reg.get("reg.2.server.1.transport") == "TLS"
    cfg = ET.fromstring(render(PHONES["grandstream"])["/cfg000b82a1b2c3.xml"]).find("config")
    assert cfg is not None and cfg.findtext("P47") == "10.10.0.5:5060" and cfg.findtext("P402") == "10.20.0.5:5061"
    spa = ET.fromstring(render(PHONES["cisco_spa"])["/spae8b748a1b2c3.xml"])
    assert spa.findtext("Proxy_1_") == "10.10.0.5:5060" and spa.findtext("Password_2_") == "pw-b-3001"


def test_yealink_has_both_accounts_primary_first() -> None:
    text = render(PHONES["yealink"])["/805ec0a1b2c3.cfg"].decode()
    assert text.startswith("#!version:1.0.0.1\n")
    kv = dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith("#"))
    assert kv["account.1.enable"] == kv["account.2.enable"] == "1"
    assert kv["account.1.sip_server.1.address"] == "10.10.0.5" and kv["account.1.sip_server.1.transport_type"] == "0"
    assert kv["account.2.sip_server.1.address"] == "10.20.0.5" and kv["account.2.sip_server.1.transport_type"] == "2"
    assert kv["account.2.password"] == "pw-b-3001" and kv["account.1.auth_name"] == "2001"


# --- hostile values --------------------------------------------------------------

@pytest.mark.parametrize("vendor", sorted(PHONES))
@pytest.mark.parametrize("bad", ["pw\naccount.9.enable = 1", "pw\x00", "pw\r"])
def test_control_characters_refused_everywhere(vendor: str, bad: str) -> None:
    phone = replace(PHONES[vendor], lines=(replace(A, sip_password=bad), B))
    with pytest.raises(ProvisioningError) as e:
        render(phone)
    assert phone.mac in str(e.value) and "line 1 sip_password" in str(e.value)
    assert bad not in str(e.value) and "pw" not in str(e.value)  # a password never reaches a message


@pytest.mark.parametrize("vendor", ["polycom", "grandstream", "cisco_spa"])
def test_markup_escaped_in_xml(vendor: str) -> None:
    phone = replace(PHONES[vendor], label='<b>"x"&y', lines=(replace(A, sip_password="p<&>'\""), B))
    files = render(phone)
    for body in files.values():
        assert b"<b>" not in body
        root = ET.fromstring(body)  # still well-formed, and the values round-trip
    text = b"".join(files.values()).decode()
    assert "&lt;b&gt;" in text
    if vendor == "cisco_spa":
        assert root.findtext("Display_Name_1_") == '<b>"x"&y' and root.findtext("Password_1_") == "p<&>'\""


@pytest.mark.parametrize("value", ["<b>", "a&b", 'a"b', "caf\u00e9", "tab\there"])
def test_yealink_refuses_markup_and_non_ascii(value: str) -> None:
    with pytest.raises(ProvisioningError, match="805ec0a1b2c3: label"):
        render(replace(PHONES["yealink"], label=value))


def test_bad_mac_and_line_counts_refused() -> None:
    with pytest.raises(ProvisioningError, match="mac"):
        render(replace(PHONES["yealink"], mac="805ec0a1b2c3\n"))
    with pytest.raises(ProvisioningError, match="3 lines"):
        render(replace(PHONES["yealink"], lines=(A, B, replace(B, site="c"))))
    with pytest.raises(ProvisioningError, match="same site"):
        render(replace(PHONES["yealink"], lines=(A, A)))


def test_render_all_refuses_clashes_and_sorts() -> None:
    files = render_all(reversed(list(PHONES.values())))
    assert list(files) == sorted(files) and len(files) == 5
    with pytest.raises(ProvisioningError, match="twice"):
        render_all([PHONES["yealink"], PHONES["yealink"]])
    # Different MACs cannot clash today; the check guards a future path scheme.


def test_password_not_in_repr() -> None:
    assert "pw-a-2001" not in repr(A) and "pw-a-2001" not in repr(PHONES["yealink"])


# --- vendor mapping --------------------------------------------------------------

@pytest.mark.parametrize(("model", "vendor"), [
    ("Yealink T54W", "yealink"), ("yealink-t46", "yealink"), ("SIP-T46S", "yealink"), ("T4x", "yealink"),
    ("Polycom VVX 411", "polycom"), ("polycom-vvx", "polycom"), ("SoundPoint IP 650", "polycom"),
    ("VVX_601", "polycom"),
    ("Grandstream GXP2170", "grandstream"), ("gxp2135", "grandstream"), ("GRP2614", "grandstream"),
    ("Cisco SPA504G", "cisco_spa"), ("cisco_spa504g", "cisco_spa"), ("SPA525G2", "cisco_spa"),
    ("Linksys SPA942", "cisco_spa"),
])
def test_vendor_of(model: str, vendor: str) -> None:
    assert vendor_of(model) == vendor


@pytest.mark.parametrize("model", ["Cisco 7941", "Snom D785", "", "softphone"])
def test_vendor_of_unknown(model: str) -> None:
    with pytest.raises(CcdrError, match="unknown phone model"):
        vendor_of(model)


# --- HTTP ------------------------------------------------------------------------

async def test_http_serves_paths_case_insensitively() -> None:
    files = render_all(PHONES.values())

    async def provider() -> dict[str, bytes]:
        return files

    async with TestClient(TestServer(make_app(provider))) as client:
        for path, body in files.items():
            r = await client.get(path)
            assert r.status == 200 and await r.read() == body
            want = "text/xml" if body.startswith(b"<?xml") else "text/plain"
            assert r.content_type == want
        r = await client.get("/805EC0A1B2C3.cfg")  # uppercase MAC
        assert r.status == 200 and await r.read() == files["/805ec0a1b2c3.cfg"]
        r = await client.get("/SPAE8B748A1B2C3.xml")
        assert r.status == 200
        for missing in ("/000000000000.cfg", "/", "/x/805ec0a1b2c3.cfg"):
            assert (await client.get(missing)).status == 404


async def test_cached_provider_reloads_after_ttl_and_keeps_last_good() -> None:
    now = [0.0]
    calls: list[int] = []

    async def load() -> dict[str, bytes]:
        calls.append(1)
        if len(calls) == 3:
            raise OSError("database down")
        return {"/x": str(len(calls)).encode()}

    get = cached(load, ttl_s=10.0, clock=lambda: now[0])
    assert await get() == {"/x": b"1"} and await get() == {"/x": b"1"} and len(calls) == 1
    now[0] = 11.0
    assert await get() == {"/x": b"2"}
    now[0] = 22.0
    assert await get() == {"/x": b"2"} and len(calls) == 3  # reload failed: last good files


# --- layering --------------------------------------------------------------------

def test_provisioning_does_not_import_the_control_plane_runtime() -> None:
    code = ("import sys, provisioning.render, provisioning.source, provisioning.http;"
            "bad = [m for m in sys.modules if m.split('.')[:2] in "
            "(['controlplane', 'login'], ['controlplane', 'pbx'], ['controlplane', 'runtime'])];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).parent.parent, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


# --- inventory -------------------------------------------------------------------

@pytest.mark.db
async def test_load_phones_orders_home_site_first(pg: Any) -> None:
    await pg.execute("INSERT INTO regions VALUES ('east'), ('west')")
    await pg.execute("INSERT INTO sites VALUES ('a', 'east'), ('b', 'west')")
    devices = [("000000000001", "yealink-t46", "b"),       # location = site id
               ("000000000002", "polycom-vvx", "west"),    # location = region
               ("000000000003", "Cisco-SPA504G", "floor 3"),  # neither: first site by id
               ("000000000004", "gxp2170", "east")]
    await pg.executemany("INSERT INTO devices VALUES ($1, $2, $3)", devices)
    for i, (mac, _, _) in enumerate(devices, 1):
        await pg.executemany("INSERT INTO device_lines VALUES ($1, $2, $3, $4, $5)",
                             [(mac, "a", f"200{i}", f"200{i}", f"pw-a{i}"),
                              (mac, "b", f"300{i}", f"300{i}", f"pw-b{i}")])
    await pg.execute("INSERT INTO devices VALUES ('000000000005', 'yealink-t46', 'a')")  # no lines: left out
    sites = {"a": SipRegistrar("10.10.0.5"), "b": SipRegistrar("10.20.0.5", 5061, "tls")}

    phones = await load_phones(pg, sites)

    assert [p.mac for p in phones] == [d[0] for d in devices]
    assert [tuple(line.site for line in p.lines) for p in phones] == [("b", "a"), ("b", "a"), ("a", "b"),
                                                                      ("a", "b")]
    first = phones[0]
    assert first.label == "3001" and first.lines[0].sip_password == "pw-b1"
    assert (first.lines[0].registrar_host, first.lines[0].registrar_port, first.lines[0].transport) == (
        "10.20.0.5", 5061, "tls")
    assert len(render_all(phones)) == 5  # the Polycom renders two files

    with pytest.raises(ProvisioningError, match="no SIP registrar"):
        await load_phones(pg, {"a": sites["a"]})


TOPOLOGY = """
sites:
  - {id: a, region: east, pbx: asterisk, ami: {host: 10.10.0.5}, sip: {host: 10.10.0.5},
     login_url: http://127.0.0.1:8081}
  - {id: b, region: west, pbx: asterisk, ami: {host: 10.20.0.5}, sip: {host: 10.20.0.5, port: 5061, transport: tls},
     login_url: http://127.0.0.1:8082}
"""


@pytest.mark.db
def test_cli_render_writes_all_files_and_replaces_only_its_own_dir(pg_db: str, tmp_path: Path) -> None:
    async def seed() -> None:
        c = await asyncpg.connect(pg_db)
        try:
            await c.execute("INSERT INTO regions VALUES ('east'), ('west');"
                            "INSERT INTO sites VALUES ('a', 'east'), ('b', 'west');"
                            "INSERT INTO devices VALUES ('805ec0a1b2c3', 'Yealink-T54W', 'b'),"
                            " ('0004f2a1b2c3', 'Polycom-VVX-411', 'a');"
                            "INSERT INTO device_lines VALUES ('805ec0a1b2c3', 'a', '2001', '2001', 'pw1'),"
                            " ('805ec0a1b2c3', 'b', '3001', '3001', 'pw2'),"
                            " ('0004f2a1b2c3', 'a', '2002', '2002', 'pw3')")
        finally:
            await c.close()

    asyncio.run(seed())
    topo = tmp_path / "topology.yaml"
    topo.write_text(TOPOLOGY)
    out = tmp_path / "tftp"
    args = ["provision", "render", "--topology", str(topo), "--dsn", pg_db, "--out", str(out)]
    for _ in range(2):  # the second run replaces the first one's directory
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        assert sorted(p.name for p in out.iterdir()) == [".ccdr-provision", "0004f2a1b2c3.cfg", "805ec0a1b2c3.cfg",
                                                         "phone-0004f2a1b2c3.cfg"]
    text = (out / "805ec0a1b2c3.cfg").read_text()
    assert "account.1.sip_server.1.address = 10.20.0.5" in text  # home site b is line 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tftp", "topology.yaml"]  # no temp dirs left

    foreign = tmp_path / "etc"
    foreign.mkdir()
    (foreign / "keep").write_text("x")
    r = CliRunner().invoke(cli, [*args[:-1], str(foreign)])
    assert r.exit_code != 0 and "refusing" in r.output
    assert [p.name for p in foreign.iterdir()] == ["keep"]
