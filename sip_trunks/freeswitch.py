"""FreeSWITCH sofia gateways (carrier and inter-site trunks) and the trusted-address ACL."""

from __future__ import annotations

import ipaddress

from dialplans.common import render, reveal
from dialplans.policy import Policy

PACKAGE = "sip_trunks"
# Our codec names (Asterisk's) -> FreeSWITCH's.
FS_CODECS = {"ulaw": "PCMU", "alaw": "PCMA", "g722": "G722", "g729": "G729", "gsm": "GSM", "opus": "opus",
             "ilbc": "iLBC", "speex": "speex"}


def fs_codecs(codecs: tuple[str, ...]) -> str:
    return ",".join(FS_CODECS[c] for c in codecs)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _cidr(addr: str) -> str:
    if "/" in addr:
        return addr
    return f"{addr}/128" if ":" in addr else f"{addr}/32"


def render_gateways(policy: Policy, site: str) -> dict[str, str]:
    me = policy.site(site)
    trunks = policy.trunks(me.id)
    passwords = {t.name: reveal(t.auth) for t in trunks if t.auth is not None}
    peers = policy.peers(me.id)
    gateways = render(PACKAGE, "gateways.xml.j2", xml=True, site=me, trunks=trunks, passwords=passwords,
                      peers=peers, intersite=policy.intersite, codecs=fs_codecs)
    trusted: list[str] = []
    for t in trunks:
        trusted += [_cidr(a) for a in t.trust if _cidr(a) not in trusted]
    for p in peers:  # a peer given by name cannot go into an ACL; FreeSWITCH resolves it at the gateway only
        if _is_ip(p.host) and _cidr(p.host) not in trusted:
            trusted.append(_cidr(p.host))
    acl = render(PACKAGE, "acl.xml.j2", xml=True, site=me, trusted=trusted)
    return {"sip_profiles/external/ccdr.xml": gateways, "autoload_configs/ccdr-acl.xml": acl}
