"""Real SIP phones for the lab: SIPp (Debian's sip-tester) registering lab extensions."""

from __future__ import annotations

import re
import subprocess
from importlib import resources

from controlplane.errors import LabError
from lab.asterisk_site import rx
from lab.layout import HOST_ADDRESS, PHONE_BASE_PORT, PHONES_BASE_PORT, SIP_PORT, SiteSpec, phone_password
from lab.system import require_tool


def register(site: SiteSpec, extension: int, expires: int = 300, timeout_s: int = 10) -> None:
    """REGISTER ``extension`` at ``site`` from the host (digest auth). Raises LabError on failure.

    ``expires=0`` unregisters.
    """
    require_tool("sipp", "sip-tester")
    scenario = resources.files("lab") / "sipp" / "register.xml"
    with resources.as_file(scenario) as path:
        cmd = [
            "sipp", f"{site.address}:{SIP_PORT}", "-sf", str(path), "-m", "1", "-nostdin",
            "-i", HOST_ADDRESS, "-p", str(PHONE_BASE_PORT + site.index), "-s", str(extension), "-au", str(extension),
            "-ap", phone_password(extension), "-key", "expires", str(expires),
            "-timeout", f"{timeout_s}s", "-timeout_error", "-nd",
        ]
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 5,
                            check=False, cwd="/tmp")
    if cp.returncode != 0:
        tail = (cp.stderr.strip() or cp.stdout.strip()).splitlines()[-1:] or [""]
        raise LabError(
            f"site {site.id}: phone {extension} did not register (sipp exit {cp.returncode}) {tail[0]}"
        )


def register_many(site: SiteSpec, extensions: list[int], expires: int = 300, rate: int = 500,
                  timeout_s: int = 60) -> None:
    """REGISTER many lab phones at ``site`` with one SIPp run (injection file), ``rate``
    per second (the shared notes: spread registrations, stay well under ~2,000/s)."""
    if not extensions:
        return
    require_tool("sipp", "sip-tester")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        inf = f"{tmp}/phones.csv"
        with open(inf, "w") as f:
            f.write("SEQUENTIAL\n")
            f.writelines(f"{e};[authentication username={e} password={phone_password(e)}]\n"
                         for e in extensions)
        scenario = resources.files("lab") / "sipp" / "register_many.xml"
        with resources.as_file(scenario) as path:
            cmd = [
                "sipp", f"{site.address}:{SIP_PORT}", "-sf", str(path), "-inf", inf, "-m", str(len(extensions)),
                "-r", str(rate), "-l", str(max(rate, 100)), "-nostdin", "-i", HOST_ADDRESS,
                "-p", str(PHONES_BASE_PORT + site.index),
                "-key", "expires", str(expires), "-timeout", f"{timeout_s}s", "-timeout_error", "-nd",
            ]
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 10, check=False, cwd=tmp)
    if cp.returncode != 0:
        tail = (cp.stderr.strip() or cp.stdout.strip()).splitlines()[-1:] or [""]
        raise LabError(f"site {site.id}: {len(extensions)} phones did not all register "
                       f"(sipp exit {cp.returncode}) {tail[0]}")


def registered(site: SiteSpec) -> list[int]:
    """The lab extensions with a contact at ``site`` now (Asterisk's CLI: one call, where AMI's
    PJSIPShowContacts costs seconds per thousand)."""
    return sorted({int(m) for m in re.findall(r"^\s*Contact:\s+(\d+)/sip:", rx(site, "pjsip show contacts"), re.M)})
