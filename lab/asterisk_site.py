"""One lab site's Asterisk: its baseline configuration and its process."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import jinja2

from controlplane.errors import LabError
from lab.layout import (
    AMI_PORT,
    AMI_USER,
    FIRST_EXTENSION,
    LAB_QUEUES,
    ROOTFS,
    SIP_PORT,
    SUBNET_PREFIX,
    SiteSpec,
    phone_password,
)
from lab.system import all_threads_stopped, process_alive, process_name, process_state

MODULES = (
    "res_pjproject.so", "res_timing_timerfd.so", "res_rtp_asterisk.so",
    "res_pjsip.so", "res_pjsip_session.so", "chan_pjsip.so",
    "res_pjsip_authenticator_digest.so", "res_pjsip_outbound_authenticator_digest.so",
    "res_pjsip_endpoint_identifier_user.so", "res_pjsip_endpoint_identifier_ip.so",
    "res_pjsip_registrar.so", "res_pjsip_outbound_registration.so",
    "res_pjsip_caller_id.so", "res_pjsip_sdp_rtp.so", "res_pjsip_nat.so",
    "res_pjsip_pubsub.so", "res_pjsip_outbound_publish.so", "res_pjsip_exten_state.so",
    "func_pjsip_endpoint.so", "func_pjsip_contact.so",
    "app_queue.so", "app_dial.so", "app_playback.so", "app_echo.so", "app_stack.so",
    "app_verbose.so", "pbx_config.so",
    # The rendered routing dialplan reports each decision with UserEvent (docs/routing.md).
    "app_userevent.so",
    "func_rand.so", "func_logic.so", "func_strings.so", "func_channel.so",
    "func_callerid.so", "func_devstate.so", "func_cut.so", "func_global.so",
    "codec_ulaw.so", "codec_alaw.so", "format_wav.so", "format_pcm.so",
    "bridge_simple.so", "bridge_native_rtp.so", "bridge_builtin_features.so",
    "bridge_holding.so",
)
# Modules that read these files log an ERROR when they are missing; empty is fine.
EMPTY_CONFIGS = (
    "ccss.conf", "cel.conf", "features.conf", "acl.conf", "udptl.conf",
    "pjproject.conf", "queuerules.conf", "rtp.conf",
)

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("lab", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)


@dataclass(frozen=True)
class Phone:
    ext: str
    password: str


def lab_phones(count: int) -> list[Phone]:
    return [
        Phone(str(FIRST_EXTENSION + i), phone_password(FIRST_EXTENSION + i)) for i in range(count)
    ]


def render_baseline(site: SiteSpec, ami_secret: str, phones: int) -> dict[str, str]:
    """Every file of the site's etc/ folder, by name. Deterministic."""
    ctx = {
        "site": site,
        "modules": MODULES,
        "ami_port": AMI_PORT,
        "ami_user": AMI_USER,
        "ami_secret": ami_secret,
        "ami_permit": (f"{SUBNET_PREFIX}.0/255.255.255.0", "127.0.0.1/255.255.255.255"),
        "sip_port": SIP_PORT,
        "phones": lab_phones(phones),
        "queues": LAB_QUEUES,
    }
    files = {
        name[:-3]: _env.get_template(f"asterisk/{name}").render(ctx)
        for name in sorted(_env.list_templates())
        for name in [name.split("/", 1)[1]]
        if name.endswith(".j2")
    }
    files["cdr.conf"] = "[general]\nenable = no\n"
    files["indications.conf"] = "[general]\ncountry = us\n\n[us]\ndescription = United States\n" \
        "ringcadence = 2000,4000\nbusy = 480+620/500,0/500\nring = 440+480/2000,0/4000\n" \
        "congestion = 480+620/250,0/250\ndial = 350+440\n"
    for name in EMPTY_CONFIGS:
        files.setdefault(name, "")
    return files


def write_baseline(site: SiteSpec, files: dict[str, str], root_dir: Path | None = None) -> bool:
    """Write the site's files; each via a temporary name and rename (never half-written).
    Returns whether any file changed: `lab up` reloads a running Asterisk only then (a
    drill's prepare, finding a site still booting after the previous drill's restore, ran
    `lab up` and reloaded both sites for nothing).

    ``root_dir`` defaults to the site's folder in the chroot; `ccdr lab configs`
    writes the same tree elsewhere for docker-compose to mount.
    """
    base = root_dir or site.root_dir
    etc = base / "etc"
    for sub in ("etc", "etc/ccdr", "run", "log", "spool", "lib"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    changed = False
    for name, text in files.items():
        dst = etc / name
        try:
            if dst.read_text(encoding="utf-8") == text:
                continue
        except (OSError, UnicodeDecodeError):
            pass  # missing or unreadable: written
        tmp = dst.with_name(f".{name}.tmp")
        with open(tmp, "w", encoding="utf-8", opener=lambda p, f: os.open(p, f, 0o600)) as fh:
            fh.write(text)
        tmp.replace(dst)
        changed = True
    return changed


def pid(site: SiteSpec) -> int | None:
    """The site's Asterisk PID if that process is alive (stopped counts as alive)."""
    try:
        p = int(site.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if not process_alive(p) or process_name(p) != "asterisk":
        return None
    return p


def state(site: SiteSpec) -> str:
    p = pid(site)
    if p is None:
        return "stopped"
    return "frozen" if process_state(p) in ("T", "t") else "running"


def start(site: SiteSpec, timeout: float = 30.0) -> int:
    """Start the site's Asterisk in its namespace; wait until fully booted. Idempotent."""
    p = pid(site)
    if p is not None:
        return p
    site.pid_file.unlink(missing_ok=True)
    out = open(site.log_dir / "console.log", "ab")
    # `setsid -f` forks, so Asterisk is reparented away from us and never lingers
    # as our zombie after a `kill`; its PID comes from the pid file it writes.
    cmd = ["setsid", "-f", "ip", "netns", "exec", site.netns,
           "chroot", str(ROOTFS), "asterisk", "-C", site.conf, "-f"]
    try:
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=True)
    except subprocess.CalledProcessError as exc:
        raise LabError(f"site {site.id}: could not start Asterisk (exit {exc.returncode})") from None
    finally:
        out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = pid(site)
        if p is not None and _fully_booted(site):
            return p
        time.sleep(0.1)
    raise LabError(
        f"site {site.id}: Asterisk did not boot in {timeout:.0f} s; see {site.log_dir}/console.log"
    )


def _fully_booted(site: SiteSpec) -> bool:
    try:
        return "fully booted" in rx(site, "core waitfullybooted", timeout=5)
    except (LabError, subprocess.TimeoutExpired):
        return False


def rx(site: SiteSpec, command: str, timeout: float = 10.0) -> str:
    """Run a CLI command on the site's Asterisk through its control socket."""
    try:
        cp = subprocess.run(
            ["chroot", str(ROOTFS), "asterisk", "-C", site.conf, "-rx", command],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"site {site.id}: `{command}` got no answer in {timeout:.0f} s") from None
    if cp.returncode != 0:
        raise LabError(f"site {site.id}: `{command}` failed: {cp.stderr.strip() or cp.stdout.strip()}")
    return cp.stdout


def signal_site(site: SiteSpec, sig: signal.Signals) -> int:
    p = pid(site)
    if p is None:
        raise LabError(f"site {site.id}: Asterisk is not running (run `ccdr lab start {site.id}`)")
    os.kill(p, sig)
    return p


def kill(site: SiteSpec, timeout: float = 5.0) -> None:
    """SIGKILL, as a crash would. Idempotent: a stopped site stays stopped."""
    p = pid(site)
    if p is None:
        return
    os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pid(site) is not None and time.monotonic() < deadline:
        time.sleep(0.02)


def freeze(site: SiteSpec, timeout: float = 2.0) -> None:
    """SIGSTOP, and return once every thread has stopped."""
    p = signal_site(site, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not all_threads_stopped(p):
        if time.monotonic() > deadline:
            raise LabError(f"site {site.id}: Asterisk (pid {p}) not stopped {timeout} s after SIGSTOP")
        time.sleep(0.01)


def thaw(site: SiteSpec) -> None:
    signal_site(site, signal.SIGCONT)


def stop(site: SiteSpec, timeout: float = 10.0) -> None:
    """Orderly stop (thawing first if frozen). Idempotent."""
    p = pid(site)
    if p is None:
        return
    os.kill(p, signal.SIGCONT)
    os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid(site) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid(site) is not None:
        kill(site)


def site_files_exist(site: SiteSpec) -> bool:
    return Path(site.root_dir / "etc" / "asterisk.conf").exists()
