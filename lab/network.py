"""A private bridge and one network namespace per site.

    host (10.77.0.1) ── ccdr-br0 ──┬── ccdr-a-h ⇄ eth0 in netns ccdr-a (10.77.0.11)
                                    └── ccdr-b-h ⇄ eth0 in netns ccdr-b (10.77.0.12)

All sites share one L2 segment, so the host reaches every site and sites reach
each other without IP forwarding. ``cut`` takes a site's bridge port down: its
TCP connections stay open but nothing crosses, which is how a real cut link
looks (no FIN, no RST; see shared notes "Detecting a dead site").
"""

from __future__ import annotations

import os

from controlplane.errors import LabError
from lab.layout import BRIDGE, HOST_ADDRESS, PREFIX_LEN, SUBNET_PREFIX, SiteSpec
from lab.system import run

ICMP_RATEMASK = "/proc/sys/net/ipv4/icmp_ratemask"  # per namespace: the reader's own


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def ensure_bridge() -> bool:
    """Create the bridge if missing. Returns True if created now."""
    if _link_exists(BRIDGE):
        return False
    _check_subnet_free()
    run(["ip", "link", "add", BRIDGE, "type", "bridge"], f"create bridge {BRIDGE}")
    run(["ip", "addr", "add", f"{HOST_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE], f"address {BRIDGE}")
    run(["ip", "link", "set", BRIDGE, "up"], f"bring {BRIDGE} up")
    return True


def _check_subnet_free() -> None:
    cp = run(["ip", "-o", "-4", "addr", "show"], "list addresses", check=False)
    for line in cp.stdout.splitlines():
        if f" {SUBNET_PREFIX}." in line and BRIDGE not in line:
            dev = line.split()[1]
            raise LabError(f"the lab subnet {SUBNET_PREFIX}.0/{PREFIX_LEN} is taken by {dev}")


def remove_bridge() -> None:
    if _link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE], f"remove bridge {BRIDGE}")


def ensure_site_netns(s: SiteSpec) -> bool:
    """Create the site's namespace and its veth to the bridge. Returns True if created now."""
    created = False
    if not netns_exists(s.netns):
        run(["ip", "netns", "add", s.netns], f"create namespace {s.netns}")
        created = True
    inside = run(["ip", "-n", s.netns, "-o", "link", "show", "eth0"], "inspect", check=False)
    if inside.returncode != 0:
        if _link_exists(s.host_if):
            run(["ip", "link", "del", s.host_if], f"remove stale {s.host_if}")
        run(["ip", "link", "add", s.host_if, "type", "veth", "peer", "name", f"{s.host_if[:-1]}n"],
            f"create veth for site {s.id}")
        run(["ip", "link", "set", f"{s.host_if[:-1]}n", "netns", s.netns, "name", "eth0"],
            f"move veth into {s.netns}")
        run(["ip", "link", "set", s.host_if, "master", BRIDGE], f"attach {s.host_if} to {BRIDGE}")
        run(["ip", "-n", s.netns, "addr", "add", f"{s.address}/{PREFIX_LEN}", "dev", "eth0"],
            f"address site {s.id}")
        run(["ip", "-n", s.netns, "link", "set", "eth0", "up"], f"bring site {s.id} eth0 up")
        run(["ip", "-n", s.netns, "link", "set", "lo", "up"], f"bring site {s.id} lo up")
        run(["ip", "-n", s.netns, "route", "add", "default", "via", HOST_ADDRESS],
            f"route site {s.id}", check=False)
        created = True
    run(["ip", "link", "set", s.host_if, "up"], f"bring {s.host_if} up")
    # No ICMP rate limit inside a site: the lab's phones all share the simulator's one
    # address, and Linux sends about one ICMP error a second per destination host (burst 6),
    # so a killed Asterisk's "port unreachable" reached ~200 of 10,000 phones in a failover
    # while the rest waited out their probe's timeout. Real phones are hosts of their own,
    # each told at once. (icmp_ratemask=0: no ICMP type is rate-limited, per peer or globally.)
    run(["ip", "netns", "exec", s.netns, "sh", "-c", f"echo 0 > {ICMP_RATEMASK}"],
        f"lift the ICMP rate limit in {s.netns}")
    return created


def icmp_ratemask(s: SiteSpec) -> int:
    """The site namespace's ICMP rate-limit mask (0: no ICMP type is limited)."""
    out = run(["ip", "netns", "exec", s.netns, "cat", ICMP_RATEMASK], f"read the ICMP rate mask of {s.netns}")
    return int(out.stdout.strip())


def remove_site_netns(s: SiteSpec) -> None:
    if _link_exists(s.host_if):
        run(["ip", "link", "del", s.host_if], f"remove {s.host_if}", check=False)
    if netns_exists(s.netns):
        run(["ip", "netns", "del", s.netns], f"remove namespace {s.netns}")


def require_netns(s: SiteSpec) -> None:
    if not netns_exists(s.netns) or not _link_exists(s.host_if):
        raise LabError(f"namespace {s.netns} is missing: run `ccdr lab up` first")


def cut(s: SiteSpec) -> None:
    require_netns(s)
    run(["ip", "link", "set", s.host_if, "down"], f"cut site {s.id}")


def heal(s: SiteSpec) -> None:
    require_netns(s)
    run(["ip", "link", "set", s.host_if, "up"], f"heal site {s.id}")


def link_up(s: SiteSpec) -> bool:
    try:
        with open(f"/sys/class/net/{s.host_if}/flags", encoding="ascii") as f:
            return bool(int(f.read().strip(), 16) & 0x1)  # IFF_UP
    except OSError:
        return False
