"""Running host commands with one clear line of error when they can't work."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Sequence

from controlplane.errors import LabError


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LabError(f"{what} must run as root (network namespaces, chroot and mounts need it)")


def require_tool(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise LabError(f"{tool} not found: install it with `apt-get install {package}`")
    return path


def run(cmd: Sequence[str], what: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on failure raise LabError with ``what`` and the tool's last line."""
    try:
        cp = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise LabError(f"{what}: {cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{what}: {cmd[0]} did not finish in {timeout:.0f} s") from None
    if check and cp.returncode != 0:
        last = (cp.stderr.strip() or cp.stdout.strip()).splitlines()
        raise LabError(f"{what}: {last[-1] if last else f'exit {cp.returncode}'}")
    return cp


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def process_state(pid: int) -> str | None:
    """``R``/``S``/``T``/``Z``... from /proc, or None if there is no such process."""
    # The command name may contain spaces and parentheses: split after the last ')'.
    return process_state_of(f"/proc/{pid}/stat")


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (``T``/``t``). SIGSTOP is delivered
    asynchronously: a frozen site answered one more AMI Ping right after `kill -STOP` returned
    (a flaky lab test), so a freeze waits for this."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return bool(tids) and all(process_state_of(f"/proc/{pid}/task/{t}/stat") in ("T", "t") for t in tids)


def process_state_of(stat_path: str) -> str | None:
    try:
        with open(stat_path, encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    """True while any thread of ``pid`` still runs (a stopped process is alive).

    After SIGKILL the thread-group leader shows ``Z`` while its other threads are
    still being torn down and still hold the process's sockets; only when the
    zombie leader is its last task are the sockets gone.
    """
    st = process_state(pid)
    if st is None or st == "X":
        return False
    if st != "Z":
        return True
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def process_cpu_s(pid: int) -> float:
    """CPU seconds ``pid`` has used, user and system, all its threads (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_name(pid: int) -> str:
    """The process's command name (kept by a zombie leader, unlike cmdline)."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""
