"""`ccdr lab ...`: bring the two-site lab up and down, report it, inject faults.

Every command is idempotent: ``up`` converges to "everything up" (starting,
thawing and healing what it must), ``down`` stops what the lab started and
nothing else (a PostgreSQL or Redis that was already running stays running).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controlplane.errors import LabError
from controlplane.settings import parse_topology
from lab import asterisk_site, network, rootfs, stores
from lab.ami_probe import ami_login_ok
from lab.layout import (
    AMI_PORT,
    AMI_USER,
    BRIDGE,
    DEFAULT_PHONES,
    ROOTFS,
    SIP_PORT,
    SITES,
    STATE_DIR,
    SiteSpec,
    site,
)
from lab.sip_probe import sip_options_ok
from lab.system import require_root, require_tool

STATE_FILE = STATE_DIR / "state.json"
TOPOLOGY_FILE = STATE_DIR / "topology.yaml"
DATABASE = "ccdr"


@dataclass
class LabState:
    """What the lab started, so `down` stops exactly that."""

    postgres: bool = False
    redis: bool = False
    phones: int = DEFAULT_PHONES
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls) -> LabState:
        try:
            d = json.loads(STATE_FILE.read_text())
        except (OSError, ValueError):
            return cls()
        return cls(postgres=bool(d.get("postgres")), redis=bool(d.get("redis")),
                   phones=int(d.get("phones", DEFAULT_PHONES)), extra=d.get("extra", {}))

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = STATE_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True))
        tmp.replace(STATE_FILE)


Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def ami_secret(s: SiteSpec) -> str:
    """The site's AMI secret, created once (0600) and kept across `up`/`down`."""
    f = s.secret_file
    if not f.exists():
        f.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(18) + "\n")
    return f.read_text().strip()


def topology_document() -> dict[str, Any]:
    return {
        "sites": [
            {
                "id": s.id,
                "region": s.region,
                "pbx": "asterisk",
                "ami": {"host": s.address, "port": AMI_PORT, "username": AMI_USER,
                        "secret": {"file": str(s.secret_file)}},
                "sip": {"host": s.address, "port": SIP_PORT, "transport": "udp"},
                "login_url": s.login_url,
            }
            for s in SITES
        ],
        "postgres": {"dsn": f"postgresql://postgres@127.0.0.1:{stores.PG_PORT}/{DATABASE}"},
        "redis": {"url": f"redis://127.0.0.1:{stores.REDIS_PORT}/0"},
    }


def write_topology() -> Path:
    doc = topology_document()
    parse_topology(doc, "generated lab topology")  # never write a file ccdr would refuse
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = TOPOLOGY_FILE.with_suffix(".tmp")
    tmp.write_text("# Written by `ccdr lab up`; secrets are in the files it references.\n"
                   + yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(TOPOLOGY_FILE)
    return TOPOLOGY_FILE


def up(phones: int | None = None, say: Say = _quiet) -> dict[str, Any]:
    require_root("ccdr lab up")
    for tool, pkg in (("ip", "iproute2"), ("setsid", "util-linux"), ("chroot", "coreutils")):
        require_tool(tool, pkg)
    st = LabState.load()
    if phones is not None:
        st.phones = phones
    say("PostgreSQL and Redis...")
    st.postgres = stores.ensure_postgres() or st.postgres
    st.redis = stores.ensure_redis() or st.redis
    stores.ensure_database(DATABASE)
    st.save()
    if not rootfs.rootfs_ready():
        say(f"building the Asterisk chroot in {ROOTFS} (debootstrap, about a minute)...")
    rootfs.ensure_rootfs()
    rootfs.prepare()
    network.ensure_bridge()
    for s in SITES:
        network.ensure_site_netns(s)  # also heals a cut site
        files = asterisk_site.render_baseline(s, ami_secret(s), st.phones)
        changed = asterisk_site.write_baseline(s, files)
        if asterisk_site.state(s) == "frozen":
            asterisk_site.thaw(s)
        running = asterisk_site.pid(s) is not None
        asterisk_site.start(s)
        if running and changed:
            asterisk_site.rx(s, "core reload")
    for s in SITES:
        if not ami_login_ok(s.address, AMI_PORT, AMI_USER, ami_secret(s), timeout=5):
            raise LabError(f"site {s.id}: AMI at {s.address}:{AMI_PORT} does not accept our login")
    write_topology()
    return status()


def export_configs(out: Path, phones: int = DEFAULT_PHONES) -> list[Path]:
    """Write each site's generated tree under ``out/site-<id>`` (for docker-compose).

    The same files `lab up` writes into the chroot; secrets are the lab's own
    (created if missing) and the files holding them are 0600.
    """
    written = []
    for s in SITES:
        d = out / f"site-{s.id}"
        asterisk_site.write_baseline(s, asterisk_site.render_baseline(s, ami_secret(s), phones), d)
        written.append(d)
    return written


def down(say: Say = _quiet) -> None:
    require_root("ccdr lab down")
    st = LabState.load()
    for s in SITES:
        if asterisk_site.site_files_exist(s):
            asterisk_site.stop(s)
        network.remove_site_netns(s)
    network.remove_bridge()
    rootfs.release_proc()
    if st.postgres:
        say("stopping the PostgreSQL the lab started")
        stores.stop_postgres()
    if st.redis:
        say("stopping the Redis the lab started")
        stores.stop_redis()
    TOPOLOGY_FILE.unlink(missing_ok=True)
    STATE_FILE.unlink(missing_ok=True)


def status() -> dict[str, Any]:
    sites: dict[str, Any] = {}
    for s in SITES:
        ns = network.netns_exists(s.netns)
        ast = asterisk_site.state(s) if asterisk_site.site_files_exist(s) else "absent"
        link = ("up" if network.link_up(s) else "cut") if ns else "absent"
        ami_up = ast == "running" and link == "up" and s.secret_file.exists() and ami_login_ok(
            s.address, AMI_PORT, AMI_USER, s.secret_file.read_text().strip(), timeout=1.0)
        sip_up = ast == "running" and link == "up" and sip_options_ok(s.address, SIP_PORT, 1.0)
        sites[s.id] = {
            "region": s.region,
            "netns": s.netns if ns else None,
            "address": s.address,
            "link": link,
            "asterisk": {"state": ast, "pid": asterisk_site.pid(s), "logs": str(s.log_dir)},
            "ami": {"host": s.address, "port": AMI_PORT, "state": "up" if ami_up else "down"},
            "sip": {"host": s.address, "port": SIP_PORT, "transport": "udp",
                    "state": "up" if sip_up else "down"},
            "login_url": s.login_url,
        }
    from lab.system import tcp_open

    return {
        "bridge": BRIDGE if os.path.exists(f"/sys/class/net/{BRIDGE}") else None,
        "topology": str(TOPOLOGY_FILE) if TOPOLOGY_FILE.exists() else None,
        "postgres": {"host": "127.0.0.1", "port": stores.PG_PORT,
                     "state": "up" if tcp_open("127.0.0.1", stores.PG_PORT) else "down"},
        "redis": {"host": "127.0.0.1", "port": stores.REDIS_PORT,
                  "state": "up" if tcp_open("127.0.0.1", stores.REDIS_PORT) else "down"},
        "sites": sites,
    }


# --- faults -----------------------------------------------------------------

def _site_for_fault(site_id: str, verb: str) -> SiteSpec:
    require_root(f"ccdr lab {verb}")
    s = site(site_id)
    network.require_netns(s)
    return s


def kill(site_id: str) -> None:
    asterisk_site.kill(_site_for_fault(site_id, "kill"))


def freeze(site_id: str) -> None:
    s = _site_for_fault(site_id, "freeze")
    if asterisk_site.state(s) == "stopped":
        raise LabError(f"site {s.id}: Asterisk is not running, nothing to freeze")
    asterisk_site.freeze(s)


def thaw(site_id: str) -> None:
    s = _site_for_fault(site_id, "thaw")
    if asterisk_site.state(s) != "stopped":
        asterisk_site.thaw(s)


def start(site_id: str) -> None:
    s = _site_for_fault(site_id, "start")
    if asterisk_site.state(s) == "frozen":
        asterisk_site.thaw(s)
    asterisk_site.start(s)


def cut(site_id: str) -> None:
    network.cut(_site_for_fault(site_id, "cut"))


def heal(site_id: str) -> None:
    network.heal(_site_for_fault(site_id, "heal"))
