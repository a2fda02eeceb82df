"""Kamailio ``dispatcher.list``: the sites, weighted per DID, for a proxy in front of both."""

from __future__ import annotations

from dialplans.common import render
from dialplans.policy import Policy


def dispatcher_sets(policy: Policy) -> dict[str, int]:
    """DID number -> its dispatcher set id (the config routes on these)."""
    return {d.number: i + 1 for i, d in enumerate(policy.dids)}


def render_kamailio(policy: Policy) -> dict[str, str]:
    body = render(__package__ or "sip_trunks", "dispatcher.list.j2", dids=policy.dids,
                  sites={s.id: s for s in policy.sites}, default_set=len(policy.dids) + 1,
                  sets=dispatcher_sets(policy))
    return {"dispatcher.list": body}
