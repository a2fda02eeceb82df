from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from controlplane.cli.main import cli
from controlplane.errors import ConfigError
from controlplane.settings import Backoff, load_topology, parse_topology

GOOD = """
sites:
  - id: a
    region: east
    pbx: asterisk
    ami: {host: 10.77.0.2, port: 5038, username: ccdr, secret: {env: AMI_A}}
    sip: {host: 10.77.0.2, port: 5060}
    login_url: http://127.0.0.1:8081
  - id: b
    region: west
    pbx: freeswitch
    esl: {host: 10.77.1.2, password: {file: /etc/ccdr/esl_b}}
    sip: {host: 10.77.1.2}
    login_url: http://127.0.0.1:8082
timings:
  probe_interval_s: 0.25
  reconnect: {initial_s: 1, max_s: 10}
  gc: {full_interval_s: 600}
"""

FIVE_BAD = """
sites:
  - id: a
    region: east
    pbx: asterisk
    ami: {host: 10.77.0.2, port: 5038, secret: {env: AMI_A}}
    sip: {host: 10.77.0.2}
    login_url: http://127.0.0.1:8081
  - id: b
    region: west
    pbx: asterisk
    ami: {host: 10.77.1.2, port: 70000, secret: hunter2-inline}
    sip: {host: 10.77.1.2, transport: sctp}
    login_url: ftp://nope
timings:
  probe_intervall_s: 1
"""


def test_good_file_parses(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(GOOD)
    t = load_topology(f)
    assert [s.id for s in t.sites] == ["a", "b"]
    assert t.site("a").ami is not None and t.site("a").ami.port == 5038
    assert t.site("b").esl is not None and t.site("b").esl.port == 8021
    assert t.timings.probe_interval_s == 0.25
    assert t.timings.probe_timeout_s == 1.0  # default from code
    assert t.timings.reconnect.max_s == 10
    assert t.timings.gc.full_interval_s == 600 and t.timings.gc.young_threshold == 20_000  # the rest from code


def test_five_distinct_errors_all_reported_by_path(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(FIVE_BAD)
    r = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if "problem(s)" not in ln]
    expected = [
        "sites[1].ami.port: must be 1..65535, got 70000",
        "sites[1].ami.secret: inline secrets are not accepted",
        "sites[1].sip.transport: must be one of udp, tcp, tls, got 'sctp'",
        "sites[1].login_url: must be an http(s) URL",
        "timings.probe_intervall_s: unknown field",
    ]
    for e in expected:
        assert any(e in ln for ln in lines), (e, r.output)
    assert len(lines) == 5, r.output
    assert "5 problem(s)" in r.output
    assert "hunter2" not in r.output  # the inline secret is never echoed


def test_duplicate_site_ids_and_missing_fields() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_topology({"sites": [{"id": "a"}, {"id": "a", "region": "x", "pbx": "asterisk"}]})
    probs = ei.value.problems
    assert "sites[0].region: required" in probs
    assert "sites[1].id: duplicate of sites[0].id 'a'" in probs
    assert any(p.startswith("sites[1].ami: required") for p in probs)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("sites:\n  - id: a\n   region: [\n")
    with pytest.raises(ConfigError) as ei:
        load_topology(f)
    assert "line " in str(ei.value)


def test_secret_never_in_repr_or_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AMI_A", "s3cr3t-value")
    f = tmp_path / "t.yaml"
    f.write_text(GOOD)
    t = load_topology(f)
    ami = t.site("a").ami
    assert ami is not None
    assert ami.secret.reveal() == "s3cr3t-value"
    logging.getLogger("x").warning("site %r", t.site("a"))
    assert "s3cr3t-value" not in repr(t)
    assert "s3cr3t-value" not in caplog.text
    assert "<secret env:AMI_A>" in repr(ami)
    r = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert r.exit_code == 0 and "s3cr3t" not in r.output


def test_missing_secret_names_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_X", raising=False)
    t = parse_topology(__import__("yaml").safe_load(GOOD.replace("AMI_A", "NOPE_X")))
    ami = t.site("a").ami
    assert ami is not None
    with pytest.raises(ConfigError, match=r"sites\[0\].ami.secret: environment variable NOPE_X"):
        ami.secret.reveal("sites[0].ami.secret")


def test_backoff_grows_and_caps() -> None:
    b = Backoff(initial_s=1, max_s=8, factor=2, jitter=0)
    assert [b.delay(n) for n in range(6)] == [1, 2, 4, 8, 8, 8]
    j = Backoff(initial_s=1, max_s=8, factor=2, jitter=0.5)
    assert j.delay(0, rand=0.0) == 0.5 and j.delay(0, rand=0.999) < 1.5


def test_gc_policy_is_part_of_the_timings_and_checked_by_path() -> None:
    site = {"id": "a", "region": "east", "pbx": "asterisk", "ami": {"host": "10.0.0.1", "secret": {"env": "X"}},
            "sip": {"host": "10.0.0.1"}, "login_url": "http://127.0.0.1:8081"}
    with pytest.raises(ConfigError) as ei:
        parse_topology({"sites": [site], "timings": {"gc": {"young_threshold": 5, "full_interval_s": 30,
                                                            "defer_max_s": 60, "often": 1}}})
    assert sorted(ei.value.problems) == [
        "timings.gc.defer_max_s: must be <= full_interval_s (30.0), got 60.0",
        "timings.gc.often: unknown field",
        "timings.gc.young_threshold: must be 100..10000000, got 5",
    ]
    t = parse_topology({"sites": [site], "timings": {"gc": {"young_threshold": 50_000}}})
    assert t.timings.gc.young_threshold == 50_000 and t.timings.gc.defer_max_s == 60.0


def test_move_wave_is_part_of_the_timings_and_checked_by_path() -> None:
    site = {"id": "a", "region": "east", "pbx": "asterisk", "ami": {"host": "10.0.0.1", "secret": {"env": "X"}},
            "sip": {"host": "10.0.0.1"}, "login_url": "http://127.0.0.1:8081"}
    with pytest.raises(ConfigError) as ei:
        parse_topology({"sites": [site], "timings": {"move_wave": {"min_agents": 0, "quiet_s": "soon"}}})
    assert sorted(ei.value.problems) == [
        "timings.move_wave.min_agents: must be 1..10000000, got 0",
        "timings.move_wave.quiet_s: must be a number 0.01..600, got string 'soon'",
    ]
    t = parse_topology({"sites": [site], "timings": {"move_wave": {"max_hold_s": 30}}})
    assert t.timings.move_wave.max_hold_s == 30 and t.timings.move_wave.min_agents == 100
