"""Asterisk dialplan (extensions.conf) and queues (queues.conf) for one site."""

from __future__ import annotations

from collections.abc import Sequence

from dialplans.common import render
from dialplans.policy import Phone, Policy, Queue

PACKAGE = "dialplans"


def _pick(split: tuple[tuple[str, int], ...]) -> str:
    """The priorities that choose a site by percentage: RAND(1,100) against running totals.

    One site at 100 % needs no draw. The last site takes whatever is left, so a
    rounding slip in the thresholds can never drop a call out of the dialplan.
    """
    if len(split) == 1:
        return f" same => n,Goto(ccdr-route,{split[0][0]},1)"
    lines = [" same => n,Set(CCDR_R=${RAND(1,100)})"]
    total = 0
    for sid, pct in split[:-1]:
        total += pct
        lines.append(f" same => n,GotoIf($[${{CCDR_R}} <= {total}]?ccdr-route,{sid},1)")
    lines.append(f" same => n,Goto(ccdr-route,{split[-1][0]},1)")
    return "\n".join(lines)


def render_extensions(policy: Policy, site: str, phones: Sequence[Phone] = ()) -> str:
    me = policy.site(site)
    return render(PACKAGE, "extensions.conf.j2", site=me, dids=policy.dids, peers=policy.peers(me.id),
                  intersite=policy.intersite, outbound=policy.outbound.get(me.id, ()),
                  phones=[p for p in phones if p.site == me.id], pick=_pick)


def render_queues(policy: Policy, site: str, inventory_queues: Sequence[str] = ()) -> str:
    """Queues of the policy, plus inventory queues the policy does not describe (with defaults)."""
    me = policy.site(site)
    named = {q.name for q in policy.queues}
    queues = list(policy.queues) + [Queue(n) for n in sorted(set(inventory_queues) - named)]
    return render(PACKAGE, "queues.conf.j2", site=me, queues=queues)


def render_asterisk(policy: Policy, site: str, phones: Sequence[Phone] = (),
                    inventory_queues: Sequence[str] = ()) -> dict[str, str]:
    """Every Asterisk file for ``site``, by its path under the ``ccdr/`` include directory."""
    from sip_trunks.asterisk import render_pjsip

    return {
        "pjsip.conf": render_pjsip(policy, site, phones),
        "extensions.conf": render_extensions(policy, site, phones),
        "queues.conf": render_queues(policy, site, inventory_queues),
    }
