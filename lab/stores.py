"""PostgreSQL and Redis for the lab: reuse running ones, start Debian's where absent."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

from controlplane.errors import LabError
from lab.system import run, tcp_open

PG_PORT = 5432
REDIS_PORT = 6379


def _apt_install(*packages: str) -> None:
    env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", *packages]
    cp = subprocess.run(env_cmd, capture_output=True, text=True, check=False)
    if cp.returncode != 0:
        run(["apt-get", "update", "-q"], "apt-get update", timeout=600)
        run(env_cmd, f"apt-get install {' '.join(packages)}", timeout=900)


def _speaks_postgres(port: int) -> bool:
    """An SSLRequest gets a one-byte 'S' or 'N' from any PostgreSQL server."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(struct.pack("!ii", 8, 80877103))
            return s.recv(1) in (b"S", b"N")
    except OSError:
        return False


def _speaks_redis(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH", b"-ERR"))
    except OSError:
        return False


def ensure_postgres() -> bool:
    """Returns True if the lab started PostgreSQL (so `lab down` may stop it)."""
    if tcp_open("127.0.0.1", PG_PORT):
        if not _speaks_postgres(PG_PORT):
            raise LabError(f"port 127.0.0.1:{PG_PORT} is taken by something that is not PostgreSQL")
        return False
    if shutil.which("pg_ctlcluster") is None:
        _apt_install("postgresql")
    versions = sorted(Path("/etc/postgresql").glob("*"))
    if not versions:
        raise LabError("PostgreSQL is installed but has no cluster under /etc/postgresql")
    ver = versions[-1].name
    _trust_loopback(versions[-1] / "main" / "pg_hba.conf")
    run(["pg_ctlcluster", "--skip-systemctl-redirect", ver, "main", "start"], "start PostgreSQL")
    _wait_port(PG_PORT, "PostgreSQL")
    return True


def _trust_loopback(hba: Path) -> None:
    # The lab's DSN carries no password (secrets stay out of topology files), so the
    # lab's own PostgreSQL trusts the postgres role from loopback, and nothing else.
    line = "host all postgres 127.0.0.1/32 trust  # ccdr lab\n"
    text = hba.read_text() if hba.exists() else ""
    if line not in text:
        hba.write_text(line + text)


def stop_postgres() -> None:
    for v in sorted(Path("/etc/postgresql").glob("*")):
        run(["pg_ctlcluster", "--skip-systemctl-redirect", v.name, "main", "stop"],
            "stop PostgreSQL", check=False)


def ensure_redis() -> bool:
    """Returns True if the lab started Redis (so `lab down` may stop it)."""
    if tcp_open("127.0.0.1", REDIS_PORT):
        if not _speaks_redis(REDIS_PORT):
            raise LabError(f"port 127.0.0.1:{REDIS_PORT} is taken by something that is not Redis")
        return False
    if shutil.which("redis-server") is None:
        _apt_install("redis-server")
    Path("/var/lib/redis").mkdir(parents=True, exist_ok=True)
    Path("/var/log/redis").mkdir(parents=True, exist_ok=True)
    run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(REDIS_PORT),
         "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
         "--logfile", "/var/log/redis/ccdr-lab.log"], "start Redis")
    _wait_port(REDIS_PORT, "Redis")
    return True


def stop_redis() -> None:
    run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"], "stop Redis", check=False)


def ensure_database(name: str) -> None:
    """Create database ``name`` if missing (PostgreSQL is on 127.0.0.1, user postgres)."""
    q = f"SELECT 1 FROM pg_database WHERE datname = '{name}'"
    cp = run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-tAc", q],
             "query PostgreSQL")
    if cp.stdout.strip() != "1":
        run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c",
             f'CREATE DATABASE "{name}"'], f"create database {name}")


def _wait_port(port: int, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tcp_open("127.0.0.1", port):
            return
        time.sleep(0.2)
    raise LabError(f"{what} did not start listening on 127.0.0.1:{port} in {timeout:.0f} s")
