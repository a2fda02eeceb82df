"""FreeSWITCH dialplan, directory and callcenter.conf.xml for one site (plus sip_trunks' gateways).

Templates run with autoescape on: the policy loader already refuses anything that
needs escaping, and escaping is the second barrier.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from dialplans.common import render
from dialplans.policy import Phone, Policy, Queue

PACKAGE = "dialplans"
# Asterisk queue strategies (the policy's vocabulary) -> mod_callcenter's.
FS_STRATEGY = {"ringall": "ring-all", "leastrecent": "longest-idle-agent", "fewestcalls": "agent-with-fewest-calls",
               "random": "random", "rrmemory": "round-robin", "linear": "top-down", "wrandom": "random"}
# Hangup causes that mean "this trunk cannot take the call" (the next one is tried);
# USER_BUSY and NO_ANSWER are the callee's answer and end the call.
UNAVAILABLE = ("NORMAL_TEMPORARY_FAILURE,DESTINATION_OUT_OF_ORDER,NETWORK_OUT_OF_ORDER,GATEWAY_DOWN,"
               "RECOVERY_ON_TIMER_EXPIRE,NO_ROUTE_DESTINATION,SWITCH_CONGESTION,CHAN_NOT_IMPLEMENTED,"
               "INVALID_GATEWAY")
RANDOM_1_100 = "${expr(randomize(&x);ceil(random(0,100,&x)))}"


def render_freeswitch(policy: Policy, site: str, phones: Sequence[Phone] = (),
                      inventory_queues: Sequence[str] = ()) -> dict[str, str]:
    from sip_trunks.freeswitch import render_gateways

    me = policy.site(site)
    picks: list[tuple[str, list[tuple[str, int]]]] = []

    def pick(split: tuple[tuple[str, int], ...], name: str) -> Markup:
        indent = " " * 8
        if len(split) == 1:
            return Markup(f'{indent}<action application="transfer" data="{split[0][0]} XML ccdr-route"/>')
        total, thresholds = 0, []
        for sid, pct in split:
            total += pct
            thresholds.append((sid, total))
        picks.append((name, thresholds))
        # inline: the draw must be set before the pick context's conditions are evaluated.
        return Markup(f'{indent}<action application="set" data="ccdr_r={escape(RANDOM_1_100)}" inline="true"/>\n'
                      f'{indent}<action application="transfer" data="pick XML ccdr-pick-{name}"/>')

    mine = [p for p in phones if p.site == me.id]
    # Rendered first: pick() fills `picks`, which the template walks after ccdr-in.
    dialplan = render(PACKAGE, "dialplan.xml.j2", xml=True, site=me, dids=policy.dids, peers=policy.peers(me.id),
                      outbound=policy.outbound.get(me.id, ()), phones=mine, pick=pick, picks=picks,
                      unavailable=UNAVAILABLE)
    named = {q.name for q in policy.queues}
    queues = list(policy.queues) + [Queue(n) for n in sorted(set(inventory_queues) - named)]
    files = {
        "dialplan/ccdr.xml": dialplan,
        "directory/ccdr.xml": render(PACKAGE, "directory.xml.j2", xml=True, site=me, phones=mine),
        "autoload_configs/callcenter.conf.xml": render(PACKAGE, "callcenter.conf.xml.j2", xml=True, site=me,
                                                       queues=queues, strategy=FS_STRATEGY.__getitem__),
    }
    files.update(render_gateways(policy, me.id))
    return dict(sorted(files.items()))
