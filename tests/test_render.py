"""Routing policy: validation by path, injection refused, golden files, FreeSWITCH XML, Kamailio.

Golden files live in tests/fixtures/render/; regenerate after an intended change with
``CCDR_UPDATE_GOLDEN=1 pytest tests/test_render.py`` and review the diff.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from controlplane.cli.main import cli
from controlplane.errors import ConfigError, RenderError
from dialplans.asterisk import render_asterisk
from dialplans.freeswitch import render_freeswitch
from dialplans.policy import Phone, Policy, check_phones, parse_policy
from sip_trunks.kamailio import render_kamailio

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "lab" / "routing.example.yaml"
GOLDEN = Path(__file__).parent / "fixtures" / "render"
PHONES = [
    Phone("a", "2101", "test-2101", "pw-2101"),
    Phone("a", "2102", "test-2102", "pw-2102"),
    Phone("b", "2201", "test-2201", "pw-2201"),
]


@pytest.fixture(autouse=True)
def trunk_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCDR_TELCO1_PASSWORD", "telco1-Secret")


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


def problems(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_policy(data)
    return exc.value.problems


# --- validation ----------------------------------------------------------------


def test_example_policy_loads() -> None:
    p = parse_policy(example())
    assert [s.id for s in p.sites] == ["a", "b"]
    assert p.outbound["a"] == ("telco1-a", "telco2-a")
    # Longest prefix first, whatever the order in the file.
    assert [a.prefix for a in p.dids[0].areas] == ["0301", "030", "089"]


def test_every_problem_reported_by_path_at_once() -> None:
    d = example()
    d["dids"][0]["split"] = {"a": 60, "b": 41}
    d["dids"][0]["areas"][0]["site"] = "c"
    d["dids"][1]["number"] = 4930100200  # unquoted: a number, not a string of digits
    d["carriers"][0]["trunks"][0]["port"] = 70000
    d["carriers"][1]["trunks"][0]["qualfy_s"] = 3
    d["outbound"]["a"].append("telco1-b")
    d["queues"].append({"name": "ccdr-sales"})
    got = problems(d)
    assert got == [
        "carriers[0].trunks[0].port: must be 1..65535, got 70000",
        "carriers[1].trunks[0].qualfy_s: unknown field",
        "outbound.a[2]: trunk 'telco1-b' is at site 'b', not 'a'",
        "queues[2].name: duplicate of queues[0].name 'ccdr-sales'",
        "dids[0].split: percentages must total 100, got 101",
        "dids[0].areas[0].site: not a site of the policy: 'c'",
        "dids[1].number: must be a string of 1..20 digits, got number 4930100200",
    ]


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["dids"][0].update(split={"a": 100.0}), "dids[0].split.a: must be a whole percentage 0..100"),
    (lambda d: d["dids"][0].update(split={"a": 50, "b": 50, "c": 0}), "dids[0].split.c: unknown field"),
    (lambda d: d["dids"][0].update(queue="nowhere"), "dids[0].queue: not a queue of the policy or the inventory"),
    (lambda d: d["dids"][0]["areas"].append({"prefix": "030", "site": "a"}),
     "dids[0].areas[3].prefix: duplicate of dids[0].areas[0].prefix '030'"),
    (lambda d: d["dids"][0]["areas"].append({"prefix": "040", "site": "a", "split": {"a": 100}}),
     "dids[0].areas[3]: needs exactly one of site, split"),
    (lambda d: d["carriers"][1]["trunks"][0].pop("trust") and d["carriers"][1]["trunks"][0].update(
        host="carrier.example"), "carriers[1].trunks[0]: needs auth or trust"),
    (lambda d: d["carriers"][0]["trunks"][0]["auth"].update(password="plain"),
     "carriers[0].trunks[0].auth.password: inline secrets are not accepted"),
    (lambda d: d["carriers"][0]["trunks"][0].update(codecs=["ulaw", "mp3"]),
     "carriers[0].trunks[0].codecs[1]: must be one of"),
    (lambda d: d["sites"].append({"id": "a", "host": "10.0.0.1"}), "sites[2].id: duplicate of sites[0].id 'a'"),
    (lambda d: d.update(dids="4930"), "dids: must be a list, got string '4930'"),
])
def test_bad_policy_names_the_field(mutate: Any, expected: str) -> None:
    d = example()
    mutate(d)
    got = problems(d)
    assert any(p.startswith(expected) for p in got), got


def test_split_with_zero_share_keeps_only_the_others() -> None:
    d = example()
    d["dids"][1]["split"] = {"a": 0, "b": 100}
    p = parse_policy(d)
    assert p.dids[1].split == (("b", 100),)
    assert "GotoIf" not in render_asterisk(p, "a")["extensions.conf"].split("[ccdr-did-4930100200]")[1].split(
        "[ccdr-route]")[0]


# Every field whose value reaches a config file, with a setter.
FIELDS: list[tuple[str, Any]] = [
    ("sites[0].id", lambda d, v: d["sites"][0].update(id=v)),
    ("sites[1].host", lambda d, v: d["sites"][1].update(host=v)),
    ("carriers[0].name", lambda d, v: d["carriers"][0].update(name=v)),
    ("carriers[0].trunks[0].name", lambda d, v: d["carriers"][0]["trunks"][0].update(name=v)),
    ("carriers[0].trunks[0].site", lambda d, v: d["carriers"][0]["trunks"][0].update(site=v)),
    ("carriers[0].trunks[0].host", lambda d, v: d["carriers"][0]["trunks"][0].update(host=v)),
    ("carriers[0].trunks[0].auth.username", lambda d, v: d["carriers"][0]["trunks"][0]["auth"].update(username=v)),
    ("carriers[0].trunks[0].auth.password.env",
     lambda d, v: d["carriers"][0]["trunks"][0]["auth"].update(password={"env": v})),
    ("carriers[1].trunks[0].trust[0]", lambda d, v: d["carriers"][1]["trunks"][0].update(trust=[v])),
    ("carriers[0].trunks[0].codecs[0]", lambda d, v: d["carriers"][0]["trunks"][0].update(codecs=[v])),
    ("carriers[0].trunks[0].transport", lambda d, v: d["carriers"][0]["trunks"][0].update(transport=v)),
    ("outbound.a[0]", lambda d, v: d["outbound"]["a"].__setitem__(0, v)),
    ("queues[0].name", lambda d, v: d["queues"][0].update(name=v)),
    ("queues[0].strategy", lambda d, v: d["queues"][0].update(strategy=v)),
    ("dids[0].number", lambda d, v: d["dids"][0].update(number=v)),
    ("dids[0].queue", lambda d, v: d["dids"][0].update(queue=v)),
    ("dids[0].areas[0].prefix", lambda d, v: d["dids"][0]["areas"][0].update(prefix=v)),
    ("dids[0].areas[0].site", lambda d, v: d["dids"][0]["areas"][0].update(site=v)),
]
MALICIOUS = ["a\nexten => 666,1,System(rm -rf /)", "a;comment", "a,b", "${SHELL(id)}", "<x/>", 'a"b', "a'b",
             "a b", "a\rb", "a&b"]


@pytest.mark.parametrize(("path", "setter"), FIELDS, ids=[f[0] for f in FIELDS])
@pytest.mark.parametrize("value", MALICIOUS, ids=range(len(MALICIOUS)))
def test_malicious_value_refused_with_its_path(path: str, setter: Any, value: str) -> None:
    d = example()
    setter(d, value)
    got = problems(d)
    assert any(p.startswith(f"{path}: ") for p in got), got


@pytest.mark.parametrize("value", ["pw\n[evil]", "pw;x", "pw,x", "p${X}", "p<x", 'p"x', "p'x", "p w", "p&x"])
def test_malicious_secret_value_refused_at_render(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CCDR_TELCO1_PASSWORD", value)
    p = parse_policy(example())
    for render in (lambda: render_asterisk(p, "a"), lambda: render_freeswitch(p, "a")):
        with pytest.raises(RenderError, match=r"carriers\[0\].trunks\[0\].auth.password: the secret contains") as e:
            render()
        assert value not in str(e.value)


def test_missing_secret_named_by_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CCDR_TELCO1_PASSWORD")
    with pytest.raises(RenderError, match=r"carriers\[0\].trunks\[0\].auth.password: environment variable"):
        render_asterisk(parse_policy(example()), "a")


@pytest.mark.parametrize(("phone", "path"), [
    (Phone("a", "21;01", "u1", "pw"), "phones[0].extension"),
    (Phone("a", "2101", "u1\n[x]", "pw"), "phones[0].sip_username"),
    (Phone("a", "2101", "trunk-telco1-a", "pw"), "phones[0].sip_username"),
    (Phone("a", "2101", "u1", "p${X}"), "phones[0].sip_password"),
    (Phone("a", "2101", "u1", "p<x>"), "phones[0].sip_password"),
    (Phone("c", "2101", "u1", "pw"), "phones[0].site"),
])
def test_malicious_phone_fields_refused(phone: Phone, path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        check_phones([phone], ["a", "b"])
    assert any(p.startswith(f"{path}: ") for p in exc.value.problems), exc.value.problems
    assert "p${X}" not in str(exc.value) and "p<x>" not in str(exc.value)


# --- golden files, determinism ------------------------------------------------


def _all_files(p: Policy) -> dict[str, str]:
    files: dict[str, str] = {}
    for site in ("a", "b"):
        files |= {f"asterisk/{site}/{k}": v for k, v in render_asterisk(p, site, PHONES, ["inv-queue"]).items()}
        files |= {f"freeswitch/{site}/{k}": v for k, v in render_freeswitch(p, site, PHONES, ["inv-queue"]).items()}
    files |= {f"kamailio/{k}": v for k, v in render_kamailio(p).items()}
    return files


def test_golden_files() -> None:
    files = _all_files(parse_policy(example(), inventory_queues=["inv-queue"]))
    if os.environ.get("CCDR_UPDATE_GOLDEN") == "1":
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for name, body in files.items():
            (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / name).write_text(body)
    on_disk = {str(f.relative_to(GOLDEN)): f.read_text() for f in GOLDEN.rglob("*") if f.is_file()}
    assert sorted(on_disk) == sorted(files)
    for name, body in files.items():
        assert body == on_disk[name], f"{name} differs from its golden file (CCDR_UPDATE_GOLDEN=1 to accept)"


def test_output_is_deterministic_whatever_the_key_order() -> None:
    d = example()
    shuffled = copy.deepcopy(d)
    shuffled["dids"][0]["split"] = dict(reversed(list(d["dids"][0]["split"].items())))
    shuffled["dids"][0]["areas"] = list(reversed(d["dids"][0]["areas"]))
    shuffled = dict(reversed(list(shuffled.items())))
    a = _all_files(parse_policy(d, inventory_queues=["inv-queue"]))
    b = _all_files(parse_policy(shuffled, inventory_queues=["inv-queue"]))
    c = _all_files(parse_policy(d, inventory_queues=["inv-queue"]))
    assert a == b == c


# --- FreeSWITCH: well-formed XML with the structure FreeSWITCH reads -----------


def test_freeswitch_xml_structure() -> None:
    p = parse_policy(example(), inventory_queues=["inv-queue"])
    files = render_freeswitch(p, "a", PHONES, ["inv-queue"])
    assert sorted(files) == ["autoload_configs/callcenter.conf.xml", "autoload_configs/ccdr-acl.xml",
                             "dialplan/ccdr.xml", "directory/ccdr.xml", "sip_profiles/external/ccdr.xml"]
    trees = {k: ET.fromstring(v) for k, v in files.items()}

    dp = trees["dialplan/ccdr.xml"]
    assert dp.tag == "include"
    contexts = {c.get("name"): c for c in dp.findall("context")}
    assert {"ccdr-in", "ccdr-route", "ccdr-from-peer", "ccdr-out", "ccdr-phones"} <= set(contexts)
    for ctx in contexts.values():
        for ext in ctx.findall("extension"):
            conds = ext.findall("condition")
            assert conds and all(c.get("field") and c.get("expression") for c in conds), ET.tostring(ext)
            for a in ext.iter("action"):
                assert a.get("application"), ET.tostring(a)
    # Caller-area extensions come before the DID's split, longest prefix first.
    names = [e.get("name") for e in contexts["ccdr-in"].findall("extension")]
    assert names[:4] == ["did-4930100100-area-0301", "did-4930100100-area-030", "did-4930100100-area-089",
                         "did-4930100100"]
    # The split: a draw set inline, then a pick context with running totals 60 (a), rest b.
    pick = contexts["ccdr-pick-4930100100-split"]
    assert [e.get("name") for e in pick.findall("extension")] == ["a", "b"]
    assert pick.find("extension/condition").get("field") == "${cond(${ccdr_r} <= 60 ? yes : no)}"  # type: ignore[union-attr]
    draw = [a for a in contexts["ccdr-in"].iter("action") if (a.get("data") or "").startswith("ccdr_r=")]
    assert draw and all(a.get("inline") == "true" and "random(0,100,&x)" in (a.get("data") or "") for a in draw)
    # Outbound: one bridge per trunk in failover order.
    bridges = [a.get("data") for a in contexts["ccdr-out"].iter("action") if a.get("application") == "bridge"]
    assert bridges == ["sofia/gateway/trunk-telco1-a/$1", "sofia/gateway/trunk-telco2-a/$1"]

    gw = trees["sip_profiles/external/ccdr.xml"]
    gateways = {g.get("name"): {p.get("name"): p.get("value") for p in g.findall("param")}
                for g in gw.findall("gateway")}
    assert set(gateways) == {"trunk-telco1-a", "trunk-telco2-a", "ccdr-intersite-b"}
    assert gateways["trunk-telco1-a"]["register"] == "true"
    assert gateways["trunk-telco1-a"]["password"] == "telco1-Secret"
    assert gateways["ccdr-intersite-b"]["proxy"] == "10.77.0.12:5060"

    d = trees["directory/ccdr.xml"]
    users = d.findall("domain/groups/group/users/user")
    assert [u.get("id") for u in users] == ["test-2101", "test-2102"]  # site a only
    assert users[0].find("params/param[@name='password']").get("value") == "pw-2101"  # type: ignore[union-attr]

    cc = trees["autoload_configs/callcenter.conf.xml"]
    assert cc.tag == "configuration" and cc.get("name") == "callcenter.conf"
    queues = {q.get("name"): {p.get("name"): p.get("value") for p in q.findall("param")}
              for q in cc.findall("queues/queue")}
    assert set(queues) == {"ccdr-sales", "ccdr-support", "inv-queue"}
    assert queues["ccdr-support"]["strategy"] == "longest-idle-agent"
    acl = trees["autoload_configs/ccdr-acl.xml"]
    assert [n.get("cidr") for n in acl.findall("list/node")] == ["198.51.100.0/28", "10.77.0.12/32"]


# --- Kamailio --------------------------------------------------------------------

KAMAILIO = "/usr/sbin/kamailio"
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"


def _kamailio_cfg(list_file: Path, port: int, ctl: Path) -> str:
    return f"""#!KAMAILIO
mpath="{MODULES}"
listen=udp:127.0.0.1:{port}
disable_tcp=yes
children=1
loadmodule "kex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "pv.so"
loadmodule "ctl.so"
loadmodule "dispatcher.so"
modparam("ctl", "binrpc", "unix:{ctl}")
modparam("dispatcher", "list_file", "{list_file}")
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    # The set of the DID called (1 = the first DID of the policy), weight-based.
    if (!ds_select_dst("1", "9")) {{ sl_send_reply("503", "No site"); exit; }}
    t_relay();
}}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.skipif(not Path(KAMAILIO).exists(), reason="Debian's kamailio package is not installed")
def test_kamailio_accepts_and_loads_rendered_list(tmp_path: Path) -> None:
    lst = tmp_path / "dispatcher.list"
    lst.write_text(render_kamailio(parse_policy(example()))["dispatcher.list"])
    ctl = tmp_path / "ctl.sock"
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(_kamailio_cfg(lst, _free_port(), ctl))
    check = subprocess.run([KAMAILIO, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    # `-c` parses the config but never opens the list (that happens in the module's
    # init): start Kamailio for real and read back, over its RPC socket, what it loaded.
    with (tmp_path / "kamailio.log").open("wb") as log:
        proc = subprocess.Popen([KAMAILIO, "-f", str(cfg), "-DD", "-E", "-Y", str(tmp_path),
                                 "-P", str(tmp_path / "k.pid")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while not ctl.exists():
            assert proc.poll() is None, (tmp_path / "kamailio.log").read_text()
            assert time.monotonic() < deadline, "kamailio did not open its control socket"
            time.sleep(0.1)
        out = subprocess.run(["kamcmd", "-s", f"unix:{ctl}", "dispatcher.list"], capture_output=True, text=True,
                             timeout=10)
        assert out.returncode == 0, out.stderr
    finally:
        proc.terminate()
        proc.wait(10)
    text = out.stdout
    log_text = (tmp_path / "kamailio.log").read_text()
    complaints = [ln for ln in log_text.splitlines() if ("ERROR" in ln or "WARNING" in ln) and "dispatcher" in ln]
    assert complaints == [], log_text
    # Three sets (two DIDs + every site), each destination with its weight.
    for uri in ("sip:10.77.0.11:5060", "sip:10.77.0.12:5060"):
        assert text.count(uri) == 3, text
    assert "weight=60;duid=a" in text and "weight=40;duid=b" in text, text


def test_kamailio_list_weights() -> None:
    lines = [line for line in render_kamailio(parse_policy(example()))["dispatcher.list"].splitlines()
             if line and not line.startswith("#")]
    assert lines == [
        "1 sip:10.77.0.11:5060 0 0 weight=60;duid=a",
        "1 sip:10.77.0.12:5060 0 0 weight=40;duid=b",
        "2 sip:10.77.0.11:5060 0 0 weight=50;duid=a",
        "2 sip:10.77.0.12:5060 0 0 weight=50;duid=b",
        "3 sip:10.77.0.11:5060 0 0 weight=1;duid=a",
        "3 sip:10.77.0.12:5060 0 0 weight=1;duid=b",
    ]


# --- CLI -------------------------------------------------------------------------------


def test_cli_render_and_diff(tmp_path: Path) -> None:
    run = CliRunner().invoke
    out = tmp_path / "out"
    args = ["render", "--policy", str(EXAMPLE), "--target", "asterisk", "--site", "a", "--out", str(out)]
    r = run(cli, args)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["extensions.conf", "pjsip.conf", "queues.conf"]
    r = run(cli, [*args, "--diff"])
    assert r.exit_code == 0 and r.output == ""
    (out / "queues.conf").write_text("[old]\n")
    r = run(cli, [*args, "--diff"])
    assert r.exit_code == 1
    assert "-[old]" in r.output and "+[ccdr-sales]" in r.output
    assert (out / "queues.conf").read_text() == "[old]\n"  # --diff writes nothing


def test_cli_refuses_bad_policy_with_path(tmp_path: Path) -> None:
    d = example()
    d["queues"][0]["name"] = "sales;evil"
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump(d))
    r = CliRunner().invoke(cli, ["render", "--policy", str(bad), "--target", "kamailio", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "queues[0].name: must be a queue name" in r.output
    assert not (tmp_path / "o").exists()


def test_cli_unknown_site(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["render", "--policy", str(EXAMPLE), "--target", "freeswitch", "--site", "z",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--site: 'z' is not a site of the policy" in r.output


def test_renderers_do_not_import_the_controller_runtime() -> None:
    # Layering: renderers take plain data; only the CLI talks to PBXs or the database.
    code = ("import sys, dialplans.asterisk, dialplans.freeswitch, sip_trunks.asterisk, sip_trunks.freeswitch, "
            "sip_trunks.kamailio; bad = sorted(m for m in sys.modules if m.startswith(('controlplane.login', "
            "'controlplane.pbx', 'controlplane.runtime', 'asyncpg', 'panoramisk'))); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.db
def test_cli_loads_phones_and_queues_from_inventory(pg_db: str, tmp_path: Path) -> None:
    import asyncio

    import asyncpg

    async def seed() -> None:
        c = await asyncpg.connect(pg_db)
        try:
            await c.execute("INSERT INTO regions VALUES ('east'), ('west')")
            await c.execute("INSERT INTO sites VALUES ('a', 'east'), ('b', 'west')")
            await c.execute("INSERT INTO devices (mac, model) VALUES ('001122aabbcc', 'yealink-t54w')")
            await c.execute("INSERT INTO device_lines VALUES ('001122aabbcc', 'a', '3101', 'inv-3101', 'pw-3101'),"
                            " ('001122aabbcc', 'b', '3201', 'inv-3201', 'pw-3201')")
            await c.execute("INSERT INTO skill_groups VALUES ('billing')")
            await c.execute("INSERT INTO skill_group_queues VALUES ('billing', 'a', 'inv-billing-a')")
        finally:
            await c.close()

    asyncio.run(seed())
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["render", "--policy", str(EXAMPLE), "--target", "asterisk", "--site", "a",
                                 "--out", str(out), "--dsn", pg_db])
    assert r.exit_code == 0, r.output
    pjsip = (out / "pjsip.conf").read_text()
    assert "[inv-3101]" in pjsip and "password = pw-3101" in pjsip
    assert "inv-3201" not in pjsip  # site b's line
    assert "exten => 3101,1,Dial(PJSIP/inv-3101,30)" in (out / "extensions.conf").read_text()
    assert "[inv-billing-a]" in (out / "queues.conf").read_text()
