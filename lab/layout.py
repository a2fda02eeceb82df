"""Where the lab lives and how it is wired: names, addresses, paths. Data only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Outside the repo, reused by later runs: the chroot takes about a minute to build.
CACHE_DIR = Path(os.environ.get("CCDR_LAB_CACHE", "/var/cache/ccdr"))
STATE_DIR = Path(os.environ.get("CCDR_LAB_DIR", "/var/lib/ccdr/lab"))
ROOTFS = CACHE_DIR / "asterisk-sid"
SUITE = "sid"
PACKAGES = ("asterisk", "asterisk-modules", "asterisk-config")

BRIDGE = "ccdr-br0"
SUBNET_PREFIX = "10.77.0"  # our own test hosts, inside namespaces we create
HOST_ADDRESS = f"{SUBNET_PREFIX}.1"
PREFIX_LEN = 24
AMI_PORT = 5038
SIP_PORT = 5060
AMI_USER = "ccdr"
LOGIN_BASE_PORT = 8081  # login service of site i listens on 127.0.0.1:8081+i
# SIPp phones of site i send from HOST_ADDRESS:5160+i (one at a time: 5170+i). A fixed port
# keeps the contact URI the same between runs: an unregister (Expires: 0) only removes the
# contact it names, and two SIPp runs left to pick ports raced for 5060/5061, so the bench's
# unregistering run named the other site's port and left 5,000 contacts registered.
PHONES_BASE_PORT = 5160
PHONE_BASE_PORT = 5170
DEFAULT_PHONES = 20  # extensions 1001.. with password lab-<ext>
FIRST_EXTENSION = 1001
LAB_QUEUES = ("sales", "support", "bench")


@dataclass(frozen=True)
class SiteSpec:
    id: str
    region: str
    index: int

    @property
    def netns(self) -> str:
        return f"ccdr-{self.id}"

    @property
    def host_if(self) -> str:
        # Interface names are limited to 15 bytes.
        return f"ccdr-{self.id}-h"

    @property
    def address(self) -> str:
        return f"{SUBNET_PREFIX}.{11 + self.index}"

    @property
    def login_url(self) -> str:
        return f"http://127.0.0.1:{LOGIN_BASE_PORT + self.index}"

    @property
    def srv(self) -> str:
        """The site's folder as seen inside the chroot."""
        return f"/srv/ccdr/site-{self.id}"

    @property
    def root_dir(self) -> Path:
        """The site's folder as seen from the host."""
        return ROOTFS / self.srv.lstrip("/")

    @property
    def conf(self) -> str:
        return f"{self.srv}/etc/asterisk.conf"

    @property
    def pid_file(self) -> Path:
        return self.root_dir / "run" / "asterisk.pid"

    @property
    def log_dir(self) -> Path:
        return self.root_dir / "log"

    @property
    def secret_file(self) -> Path:
        return STATE_DIR / "secrets" / f"ami-{self.id}"


SITES: tuple[SiteSpec, ...] = (
    SiteSpec(id="a", region="east", index=0),
    SiteSpec(id="b", region="west", index=1),
)


def site(site_id: str) -> SiteSpec:
    for s in SITES:
        if s.id == site_id:
            return s
    from controlplane.errors import LabError

    raise LabError(f"no lab site {site_id!r}: the lab has sites {', '.join(s.id for s in SITES)}")


def phone_password(extension: int) -> str:
    """Lab phones' SIP password. Lab-only; real deployments take them from the inventory."""
    return f"lab-{extension}"
