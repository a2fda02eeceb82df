"""Which site an agent logs in at. Pure: no I/O.

Order of precedence, as an operator expects it:
1. The local site, unless
2. an enabled planned-switch rule moves this agent away from it (the most
   specific rule wins: skill group, then system, then region, then all), or
3. the local PBX is down, in which case the first other site whose PBX is up.
A rule never sends an agent to a site whose PBX is down: it falls back to local
(if up), then any site that is up. If no site is up, the decision says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Scope = Literal["skill_group", "system", "region", "all"]
_SPECIFICITY: dict[str, int] = {"skill_group": 0, "system": 1, "region": 2, "all": 3}


@dataclass(frozen=True)
class AgentProfile:
    account: str
    system: str
    region: str
    skill_groups: tuple[str, ...]


@dataclass(frozen=True)
class SwitchRule:
    scope: Scope
    value: str  # ignored for scope "all"
    from_site: str
    to_site: str
    enabled: bool = True
    id: int = 0

    def covers(self, agent: AgentProfile) -> bool:
        if not self.enabled:
            return False
        if self.scope == "all":
            return True
        if self.scope == "system":
            return agent.system == self.value
        if self.scope == "region":
            return agent.region == self.value
        return self.value in agent.skill_groups


@dataclass(frozen=True)
class Decision:
    site: str | None  # None: no site can take the login
    reason: str  # "local", "rule:<id>", "local_pbx_down", "no_site_up"


def decide_site(
    agent: AgentProfile,
    local: str,
    sites: Iterable[str],
    pbx_up: Mapping[str, bool],
    rules: Iterable[SwitchRule],
) -> Decision:
    order = [local, *sorted(s for s in sites if s != local)]
    applicable = sorted(
        (r for r in rules if r.from_site == local and r.covers(agent)),
        key=lambda r: (_SPECIFICITY[r.scope], r.id),
    )
    for r in applicable:
        if pbx_up.get(r.to_site, False):
            return Decision(r.to_site, f"rule:{r.id}")
    if pbx_up.get(local, False):
        return Decision(local, "local")
    for s in order[1:]:
        if pbx_up.get(s, False):
            return Decision(s, "local_pbx_down")
    return Decision(None, "no_site_up")
