"""A drill scenario: how many agents, where they log in, which faults at which times, and
what must hold afterwards. Loaded from YAML and checked like the topology: every bad field
is named by its path, all of them at once.

```yaml
name: kill-a
agents: 200
home: a                        # agents try this site's login service first
before_login: []               # faults before anyone logs in, e.g. [{action: stop_login, site: a}]
faults:
  - {at: 0, action: kill, site: a}                                  # seconds after all are ready
  - {at: 0, action: blip, site: a, seconds: 1, count: 20, every: 2}  # cut/heal pairs
observe_s: 15                  # watch this long after the first fault
phones: dual                   # dual: each phone keeps a line registered at both sites (as
                               # `ccdr provision` configures desk phones); single: a softphone
                               # that registers at the new site when it moves
expect: {lost_agents: 0, agents_at_both_sites: 0, max_recovery_s: 3, moved: all, ready_at: {b: 200}}
```
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from controlplane.errors import ConfigError
from controlplane.settings.loader import read_yaml

ACTIONS = ("kill", "freeze", "thaw", "start", "cut", "heal", "stop_login", "start_login", "blip")
SITES = ("a", "b")
PHONES = ("dual", "single")
EXPECTATIONS = ("lost_agents", "agents_at_both_sites", "max_recovery_s", "moved", "ready_at")


@dataclass(frozen=True)
class Fault:
    at: float
    action: str
    site: str


@dataclass(frozen=True)
class Scenario:
    name: str
    agents: int
    home: str = "a"
    before_login: tuple[Fault, ...] = ()
    faults: tuple[Fault, ...] = ()
    observe_s: float = 15.0
    expect: dict[str, Any] = field(default_factory=dict)
    phones: str = "dual"

    @property
    def other(self) -> str:
        return "b" if self.home == "a" else "a"

    def with_agents(self, n: int) -> Scenario:
        """The same drill with ``n`` agents: expected counts that were "every agent" (the
        scenario's own number) become ``n``; other counts are kept."""
        def scale(v: Any) -> Any:
            return n if v == self.agents and not isinstance(v, bool) else v
        expect = dict(self.expect)
        if "ready_at" in expect:
            expect["ready_at"] = {site: scale(v) for site, v in expect["ready_at"].items()}
        if isinstance(expect.get("moved"), int):
            expect["moved"] = scale(expect["moved"])
        return replace(self, agents=n, expect=expect)


def _faults(raw: Any, path: str, problems: list[str], timed: bool) -> list[Fault]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(f"{path}: must be a list")
        return []
    out: list[Fault] = []
    for i, f in enumerate(raw):
        p = f"{path}[{i}]"
        if not isinstance(f, dict):
            problems.append(f"{p}: must be a mapping")
            continue
        unknown = set(f) - {"at", "action", "site", "seconds", "count", "every"}
        for k in sorted(unknown):
            problems.append(f"{p}.{k}: unknown field")
        action, site = f.get("action"), f.get("site")
        if action not in ACTIONS:
            problems.append(f"{p}.action: must be one of {', '.join(ACTIONS)}, got {action!r}")
        if site not in SITES:
            problems.append(f"{p}.site: must be one of {', '.join(SITES)}, got {site!r}")
        at = f.get("at", 0)
        if timed and (not isinstance(at, int | float) or isinstance(at, bool) or at < 0):
            problems.append(f"{p}.at: must be seconds >= 0, got {at!r}")
            continue
        if action == "blip":
            secs, count, every = f.get("seconds", 1), f.get("count", 1), f.get("every", 2)
            ok = True
            for k, v in (("seconds", secs), ("count", count), ("every", every)):
                if not isinstance(v, int | float) or isinstance(v, bool) or v <= 0:
                    problems.append(f"{p}.{k}: must be a positive number, got {v!r}")
                    ok = False
            if ok and every <= secs:
                problems.append(f"{p}.every: must be longer than seconds ({secs}), got {every}")
                ok = False
            if ok and isinstance(site, str):
                for n in range(int(count)):
                    out.append(Fault(float(at) + n * every, "cut", site))
                    out.append(Fault(float(at) + n * every + secs, "heal", site))
            continue
        if isinstance(action, str) and isinstance(site, str):
            out.append(Fault(float(at), action, site))
    return sorted(out, key=lambda x: x.at)


def parse_scenario(doc: Any, source: str = "scenario") -> Scenario:
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise ConfigError([f"{source}: must be a mapping"])
    for k in sorted(set(doc) - {"name", "description", "agents", "home", "before_login", "faults", "observe_s",
                                "expect", "phones"}):
        problems.append(f"{k}: unknown field")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"name: required, a non-empty string, got {name!r}")
    agents = doc.get("agents")
    if not isinstance(agents, int) or isinstance(agents, bool) or not 1 <= agents <= 20000:
        problems.append(f"agents: must be 1..20000, got {agents!r}")
    home = doc.get("home", "a")
    if home not in SITES:
        problems.append(f"home: must be one of {', '.join(SITES)}, got {home!r}")
    observe = doc.get("observe_s", 15)
    if not isinstance(observe, int | float) or isinstance(observe, bool) or not 0 < observe <= 600:
        problems.append(f"observe_s: must be 0 < seconds <= 600, got {observe!r}")
    phones = doc.get("phones", "dual")
    if phones not in PHONES:
        problems.append(f"phones: must be one of {', '.join(PHONES)}, got {phones!r}")
    before = _faults(doc.get("before_login"), "before_login", problems, timed=False)
    faults = _faults(doc.get("faults"), "faults", problems, timed=True)
    expect = doc.get("expect", {})
    if not isinstance(expect, dict):
        problems.append("expect: must be a mapping")
        expect = {}
    for k, v in expect.items():
        if k not in EXPECTATIONS:
            problems.append(f"expect.{k}: unknown (known: {', '.join(EXPECTATIONS)})")
        elif k == "ready_at":
            if not isinstance(v, dict) or any(x not in SITES or not isinstance(n, int) or isinstance(n, bool)
                                              for x, n in v.items()):
                problems.append(f"expect.ready_at: must map sites to agent counts, got {v!r}")
        elif k == "moved":
            if v not in ("all", "none") and not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                problems.append(f"expect.moved: must be all, none or a count, got {v!r}")
        elif not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
            problems.append(f"expect.{k}: must be a number >= 0, got {v!r}")
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    assert isinstance(name, str) and isinstance(agents, int) and isinstance(home, str)
    return Scenario(name, agents, home, tuple(before), tuple(faults), float(observe), dict(expect), str(phones))


def load_scenario(path: str | Path) -> Scenario:
    return parse_scenario(read_yaml(path), str(path))
