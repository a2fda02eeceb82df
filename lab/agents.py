"""An inventory of N lab agents, each with a phone that has a line at both lab sites
(extension FIRST_EXTENSION + i, the lab's phone password): for drills, benchmarks and
tests that log agents in against the lab's real Asterisk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from argon2 import PasswordHasher

from controlplane.inventory.importer import IMPORT_HASHER
from lab.layout import FIRST_EXTENSION, phone_password

QUEUES = ("sales", "support")


def write_inventory(path: Path, n: int, *, account: Callable[[int], str], mac: Callable[[int], str],
                    queue: Callable[[int], str], region: Callable[[int], str] = lambda i: "east",
                    password: str = "pw", hasher: PasswordHasher = IMPORT_HASHER) -> Path:
    h = hasher.hash(password)  # one hash for all: the import's cost is not the point here
    doc: dict[str, Any] = {
        "regions": ["east", "west"],
        "sites": [{"id": "a", "region": "east"}, {"id": "b", "region": "west"}],
        "systems": ["cards"],
        "skill_groups": [{"id": q, "queues": {"a": q, "b": q}} for q in QUEUES],
        "agents": [{"account": account(i), "password_hash": h, "system": "cards", "home_region": region(i),
                    "skills": {queue(i): 0}} for i in range(n)],
        "devices": [{"mac": mac(i), "model": "yealink-t46",
                     "lines": {s: {"extension": str(FIRST_EXTENSION + i), "sip_username": str(FIRST_EXTENSION + i),
                                   "sip_password": phone_password(FIRST_EXTENSION + i)} for s in ("a", "b")}}
                    for i in range(n)],
        "virtual_agent_ids": {"from": 1, "to": 2 * n},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]
