"""The lab's process helpers, on a throwaway process (no lab needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab.system import all_threads_stopped, process_cpu_s, process_state


def _until(cond: object, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_a_freeze_is_seen_only_once_every_thread_has_stopped() -> None:
    # Two threads, both busy: like Asterisk, which keeps answering until each one stops.
    code = "import threading\nt = threading.Thread(target=lambda: [0 for _ in iter(int, 1)])\nt.start()\nt.join()\n"
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert _until(lambda: len(__import__("os").listdir(f"/proc/{p.pid}/task")) >= 2)
        assert not all_threads_stopped(p.pid)
        p.send_signal(signal.SIGSTOP)
        assert _until(lambda: all_threads_stopped(p.pid))
        assert process_state(p.pid) in ("T", "t")
        p.send_signal(signal.SIGCONT)
        assert _until(lambda: not all_threads_stopped(p.pid))
    finally:
        p.kill()
        p.wait()
    assert not all_threads_stopped(p.pid)  # gone: not "stopped"


def test_process_cpu_s_counts_this_process_work() -> None:
    before = process_cpu_s(os.getpid())
    end = time.process_time() + 0.05
    while time.process_time() < end:  # 50 ms of CPU, whatever the clock tick
        pass
    assert process_cpu_s(os.getpid()) - before >= 0.03


def test_write_baseline_says_whether_a_file_changed(tmp_path: Path) -> None:
    # `lab up` reloads a running Asterisk only when its files changed.
    from lab import asterisk_site
    from lab.layout import site

    s = site("a")
    files = {"pjsip.conf": "[global]\n", "manager.conf": "[general]\n"}
    assert asterisk_site.write_baseline(s, files, tmp_path) is True
    before = (tmp_path / "etc" / "pjsip.conf").stat().st_mtime_ns
    assert asterisk_site.write_baseline(s, files, tmp_path) is False
    assert (tmp_path / "etc" / "pjsip.conf").stat().st_mtime_ns == before  # not rewritten
    assert asterisk_site.write_baseline(s, {**files, "manager.conf": "[general]\nenabled = yes\n"}, tmp_path) is True
    assert (tmp_path / "etc" / "manager.conf").read_text() == "[general]\nenabled = yes\n"
    (tmp_path / "etc" / "pjsip.conf").unlink()
    assert asterisk_site.write_baseline(s, files, tmp_path) is True
