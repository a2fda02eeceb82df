"""Asterisk PJSIP configuration for one site: carrier trunks, inter-site trunks, phones."""

from __future__ import annotations

from collections.abc import Sequence

from dialplans.common import render, reveal
from dialplans.policy import Phone, Policy


def render_pjsip(policy: Policy, site: str, phones: Sequence[Phone] = ()) -> str:
    """``ccdr/pjsip.conf`` for ``site``. Reads trunk passwords (RenderError if missing or unsafe)."""
    me = policy.site(site)
    trunks = policy.trunks(me.id)
    passwords = {t.name: reveal(t.auth) for t in trunks if t.auth is not None}
    return render(
        __package__ or "sip_trunks", "pjsip.conf.j2",
        site=me, trunks=trunks, passwords=passwords, peers=policy.peers(me.id), intersite=policy.intersite,
        phones=[p for p in phones if p.site == me.id],
    )
