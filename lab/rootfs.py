"""The Asterisk 22 chroot: Debian sid by debootstrap, cached outside the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from controlplane.errors import LabError
from lab.layout import CACHE_DIR, PACKAGES, ROOTFS, SUITE
from lab.system import require_tool, run

MIRROR = os.environ.get("CCDR_LAB_MIRROR", "http://deb.debian.org/debian")


def rootfs_ready(root: Path = ROOTFS) -> bool:
    return (root / "usr/sbin/asterisk").exists() and (root / ".ccdr-complete").exists()


def ensure_rootfs(root: Path = ROOTFS, log: Path | None = None) -> bool:
    """Build the chroot if missing. Returns True if it was built now.

    Built into a temporary folder and renamed when complete, so an interrupted
    build never leaves a half chroot that a later run would take for a good one.
    """
    if rootfs_ready(root):
        return False
    require_tool("debootstrap", "debootstrap")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        _umount_all(tmp)
        shutil.rmtree(tmp)
    logf = log or CACHE_DIR / "debootstrap.log"
    cmd = [
        "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(tmp), MIRROR,
    ]
    with open(logf, "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if rc != 0:
        raise LabError(f"debootstrap of Debian {SUITE} failed (exit {rc}); see {logf}")
    (tmp / ".ccdr-complete").write_text("ok\n")
    if root.exists():  # an older, incomplete chroot
        _umount_all(root)
        shutil.rmtree(root)
    tmp.rename(root)
    return True


def prepare(root: Path = ROOTFS) -> None:
    """Mount proc and give the chroot name resolution that never waits.

    The sites live in namespaces with no route to the host's DNS server; a
    resolv.conf copied from the host made Asterisk hang at boot resolving its own
    name. Lab sites talk by address only, so: a hosts file, and a resolver on
    127.0.0.1 that answers "refused" at once.
    """
    etc = root / "etc"
    hosts = "127.0.0.1 localhost\n::1 localhost\n127.0.1.1 " + os.uname().nodename + "\n"
    (etc / "hosts").write_text(hosts)
    (etc / "resolv.conf").unlink(missing_ok=True)  # may be a symlink out of the chroot
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    proc = root / "proc"
    if not os.path.ismount(proc):
        run(["mount", "-t", "proc", "proc", str(proc)], "mount proc in the chroot")


def _umount_all(root: Path) -> None:
    proc = root / "proc"
    if os.path.ismount(proc):
        run(["umount", "-l", str(proc)], "unmount proc", check=False)


def release_proc(root: Path = ROOTFS) -> None:
    _umount_all(root)
