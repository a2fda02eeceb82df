"""`ccdr login serve --workers N`: several processes on one port, restarted if one dies,
stopped in order by one signal. Real PostgreSQL and Redis; the PBXs are unreachable (a
normal state for a login service, which keeps retrying them)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REDIS_URL = os.environ.get("CCDR_TEST_REDIS_WORKERS", "redis://127.0.0.1:6379/11")
CCDR = str(Path(sys.executable).parent / "ccdr")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pids(url: str, n: int) -> set[int]:
    """The workers answering ``n`` requests, each on a new connection (urllib opens one each)."""
    seen: set[int] = set()
    for _ in range(n):
        with urllib.request.urlopen(url, timeout=5) as r:
            seen.add(int(json.load(r)["process"]))
    return seen


def wait_up(url: str, limit_s: float = 20) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            pids(url, 1)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] == "Z"


def start(pg_db: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], str, Any]:
    port, dead = free_port(), free_port()
    topo: dict[str, Any] = {
        "sites": [{"id": sid, "region": reg, "pbx": "asterisk",
                   "ami": {"host": "127.0.0.1", "port": dead, "username": "x",
                           "secret": {"env": "CCDR_TEST_AMI_SECRET"}},
                   "sip": {"host": "127.0.0.1"}, "login_url": f"http://127.0.0.1:{port if sid == 'a' else dead}"}
                  for sid, reg in (("a", "east"), ("b", "west"))],
        "postgres": {"dsn": pg_db}, "redis": {"url": REDIS_URL},
    }
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(topo))
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([CCDR, "login", "serve", "--site", "a", "--topology", str(tmp_path / "topology.yaml"),
                             "--workers", "2"], stderr=log,
                            env=dict(os.environ, CCDR_ADMIN_TOKEN="t", CCDR_TEST_AMI_SECRET="y"))
    url = f"http://127.0.0.1:{port}/status"
    return proc, url, log


def finish(proc: subprocess.Popen[bytes], log: Any, tmp_path: Path) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()
    err = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in err, err[-3000:]
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    r.close()


def test_workers_share_the_port_restart_and_stop_in_order(pg_db: str, tmp_path: Path) -> None:
    proc, url, log = start(pg_db, tmp_path)
    try:
        wait_up(url)
        first = pids(url, 40)
        # 40 new connections spread by the kernel over both workers (all on one: 2^-39).
        assert len(first) == 2, first
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        now: set[int] = set()
        while time.monotonic() < deadline:
            try:
                now = pids(url, 20)
            except OSError:
                continue
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.3)
        assert len(now) == 2 and victim not in now, (first, now)  # a new worker took its place
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert all(gone(pid) for pid in now)  # every worker stopped with it, none orphaned
    finally:
        finish(proc, log, tmp_path)


def test_workers_die_with_a_killed_parent(pg_db: str, tmp_path: Path) -> None:
    proc, url, log = start(pg_db, tmp_path)
    try:
        wait_up(url)
        workers = pids(url, 40)
        proc.kill()  # SIGKILL: the parent cannot pass anything on
        proc.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(gone(p) for p in workers):
            time.sleep(0.2)
        assert all(gone(p) for p in workers), workers  # none left serving the port
    finally:
        for p in workers if "workers" in locals() else ():
            if not gone(p):
                os.kill(p, signal.SIGKILL)
        finish(proc, log, tmp_path)


def test_a_bad_topology_is_one_clear_error_not_a_traceback(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from controlplane.cli.main import cli

    bad = tmp_path / "topology.yaml"
    bad.write_text(yaml.safe_dump({"sites": [{"id": "a", "region": "east", "pbx": "asterisk",
                                              "ami": {"host": "10.0.0.1", "secret": "inline"},
                                              "sip": {"host": "10.0.0.1"}, "login_url": "http://127.0.0.1:1"}]}))
    res = CliRunner().invoke(cli, ["login", "serve", "--site", "a", "--topology", str(bad)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert "sites[0].ami.secret: inline secrets are not accepted" in res.output
    assert "Traceback" not in res.output


def test_a_short_verification_cache_key_is_refused_by_name(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from controlplane.cli.main import cli

    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump({"sites": [{"id": "a", "region": "east", "pbx": "asterisk",
                                               "ami": {"host": "10.0.0.1", "secret": {"env": "X"}},
                                               "sip": {"host": "10.0.0.1"}, "login_url": "http://127.0.0.1:1"}]}))
    res = CliRunner().invoke(cli, ["login", "serve", "--site", "a", "--topology", str(topo)],
                             env={"CCDR_VERIFIED_KEY": "short-key"})
    assert res.exit_code == 2
    assert "CCDR_VERIFIED_KEY: the verification cache key needs at least 16 bytes, got 9" in res.output
    assert "short-key" not in res.output  # the key itself is never echoed
