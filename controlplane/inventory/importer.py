"""Import inventory files into PostgreSQL: all of it or nothing, every problem reported.

Order: read every file (syntax and field checks), check references and duplicates
against the files and the database, and only then write everything in one
transaction. Agents' plaintext passwords are hashed with argon2 here, with the
import profile (t=1, 1 MiB): hashing 50,000 agents with argon2-cffi's defaults
(~50 ms each) would take 40 minutes. The login service rehashes a password with
the default profile on the agent's first successful login (argon2's
``check_needs_rehash``). A file may also carry ``password_hash`` directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from argon2 import PasswordHasher

from controlplane.errors import InventoryError
from controlplane.inventory.records import Records, read

IMPORT_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def _hash_many(passwords: list[str]) -> list[str]:
    return [IMPORT_HASHER.hash(p) for p in passwords]


@dataclass
class Summary:
    counts: dict[str, int]

    def __str__(self) -> str:
        return ", ".join(f"{v} {k}" for k, v in self.counts.items() if v)


async def _existing(conn: asyncpg.Connection) -> dict[str, set[Any]]:
    q = {
        "regions": "SELECT id FROM regions", "sites": "SELECT id FROM sites", "systems": "SELECT id FROM systems",
        "skill_groups": "SELECT id FROM skill_groups", "agents": "SELECT account FROM agents",
        "devices": "SELECT mac FROM devices", "vaids": "SELECT id FROM virtual_agent_ids",
    }
    out = {k: {r[0] for r in await conn.fetch(sql)} for k, sql in q.items()}
    out["queues"] = {(r[0], r[1]) for r in await conn.fetch("SELECT skill_group, site FROM skill_group_queues")}
    out["extensions"] = {(r[0], r[1]) for r in await conn.fetch("SELECT site, extension FROM device_lines")}
    out["lines"] = {(r[0].strip(), r[1]) for r in await conn.fetch("SELECT mac, site FROM device_lines")}
    return out


def check(r: Records, db: dict[str, set[Any]]) -> None:
    """References and duplicates, against the files and the database. Adds to r.problems."""
    regions = set(r.regions) | db["regions"]
    sites = set(r.sites) | db["sites"]
    systems = set(r.systems) | db["systems"]
    groups = set(r.skill_groups) | db["skill_groups"]
    for k, w in r.regions.items():
        if k in db["regions"]:
            r.bad(w, "id", f"region {k!r} already exists")
    for k, (region, w) in r.sites.items():
        if k in db["sites"]:
            r.bad(w, "id", f"site {k!r} already exists")
        if region not in regions:
            r.bad(w, "region", f"unknown region {region!r}")
    for k, w in r.systems.items():
        if k in db["systems"]:
            r.bad(w, "id", f"system {k!r} already exists")
    for k, w in r.skill_groups.items():
        if k in db["skill_groups"]:
            r.bad(w, "id", f"skill group {k!r} already exists")
    for (g, site), (_, w) in r.queues.items():
        if site not in sites:
            r.bad(w, f"queues.{site}", f"unknown site {site!r}")
        if (g, site) in db["queues"]:
            r.bad(w, f"queues.{site}", f"{g!r} already has a queue at {site!r}")
    for a in r.agents.values():
        w = a["where"]
        if a["account"] in db["agents"]:
            r.bad(w, "account", f"agent {a['account']!r} already exists")
        if a["system"] and a["system"] not in systems:
            r.bad(w, "system", f"unknown system {a['system']!r}")
        if a["home_region"] and a["home_region"] not in regions:
            r.bad(w, "home_region", f"unknown region {a['home_region']!r}")
        for g in a["skills"]:
            if g not in groups:
                r.bad(w, f"skills.{g}", f"unknown skill group {g!r}")
    for d in r.devices.values():
        if d["mac"] in db["devices"]:
            r.bad(d["where"], "mac", f"device {d['mac']} already exists")
    seen_ext: dict[tuple[str, str], Any] = {}
    for ln in r.lines.values():
        w = ln["where"]
        if ln["site"] not in sites:
            r.bad(w, "site", f"unknown site {ln['site']!r}")
        key = (ln["site"], ln["extension"])
        if key in db["extensions"]:
            r.bad(w, "extension", f"extension {ln['extension']} is already used at {ln['site']!r}")
        elif key in seen_ext:
            r.bad(w, "extension", f"extension {ln['extension']} at {ln['site']!r} also at {seen_ext[key]}")
        seen_ext.setdefault(key, w)
    for rule in r.rules:
        for f in ("from_site", "to_site"):
            if rule[f] and rule[f] not in sites:
                r.bad(rule["where"], f, f"unknown site {rule[f]!r}")
        target = {"system": systems, "region": regions, "skill_group": groups}.get(rule["scope"])
        if target is not None and rule["value"] and rule["value"] not in target:
            r.bad(rule["where"], "value", f"unknown {rule['scope'].replace('_', ' ')} {rule['value']!r}")
    ids: set[int] = set()
    for lo, hi, w in r.vaid_ranges:
        rng = set(range(lo, hi + 1))
        if rng & (db["vaids"] | ids):
            r.bad(w, "virtual_agent_ids", f"{lo}..{hi} overlaps IDs that already exist")
        ids |= rng


async def import_files(conn: asyncpg.Connection, paths: list[Path], progress: Progress | None = None) -> Summary:
    """Validate ``paths`` completely, then write them in one transaction. Raises
    InventoryError with every problem (``file:line: field: reason``) and writes nothing."""
    r = read(paths)
    check(r, await _existing(conn))
    if r.problems:
        raise _problems(r.problems)
    plain = [a for a in r.agents.values() if a["password"]]
    hashes = await _hash(plain, progress)
    for a, h in zip(plain, hashes, strict=True):
        a["password_hash"] = h
    async with conn.transaction():
        await conn.executemany("INSERT INTO regions (id) VALUES ($1)", [(k,) for k in r.regions])
        await conn.executemany("INSERT INTO sites (id, region) VALUES ($1, $2)",
                               [(k, v[0]) for k, v in r.sites.items()])
        await conn.executemany("INSERT INTO systems (id) VALUES ($1)", [(k,) for k in r.systems])
        await conn.executemany("INSERT INTO skill_groups (id) VALUES ($1)", [(k,) for k in r.skill_groups])
        await conn.executemany("INSERT INTO skill_group_queues (skill_group, site, queue) VALUES ($1, $2, $3)",
                               [(g, s, q[0]) for (g, s), q in r.queues.items()])
        await conn.copy_records_to_table("agents", columns=["account", "password_hash", "system", "home_region"],
                                         records=[(a["account"], a["password_hash"], a["system"],
                                                   a["home_region"]) for a in r.agents.values()])
        await conn.copy_records_to_table("agent_skills", columns=["account", "skill_group", "penalty"],
                                         records=[(a["account"], g, p) for a in r.agents.values()
                                                  for g, p in a["skills"].items()])
        await conn.copy_records_to_table("devices", columns=["mac", "model", "location"],
                                         records=[(d["mac"], d["model"], d["location"]) for d in r.devices.values()])
        await conn.copy_records_to_table(
            "device_lines", columns=["mac", "site", "extension", "sip_username", "sip_password"],
            records=[(ln["mac"], ln["site"], ln["extension"], ln["sip_username"], ln["sip_password"])
                     for ln in r.lines.values()])
        await conn.executemany("INSERT INTO planned_switch_rules (scope, value, from_site, to_site, enabled)"
                               " VALUES ($1, $2, $3, $4, $5)",
                               [(x["scope"], x["value"], x["from_site"], x["to_site"], x["enabled"])
                                for x in r.rules])
        await conn.copy_records_to_table("virtual_agent_ids", columns=["id"],
                                         records=[(i,) for lo, hi, _ in r.vaid_ranges for i in range(lo, hi + 1)])
    return Summary({"regions": len(r.regions), "sites": len(r.sites), "systems": len(r.systems),
                    "skill groups": len(r.skill_groups), "agents": len(r.agents), "devices": len(r.devices),
                    "lines": len(r.lines), "rules": len(r.rules),
                    "virtual agent IDs": sum(hi - lo + 1 for lo, hi, _ in r.vaid_ranges)})


def _problems(problems: list[str]) -> InventoryError:
    return InventoryError(f"{len(problems)} problem(s); nothing was imported", problems)


async def _hash(agents: list[dict[str, Any]], progress: Progress | None) -> list[str]:
    if not agents:
        return []
    pw = [a["password"] for a in agents]
    if len(pw) < 200:
        return _hash_many(pw)
    import asyncio

    workers = max(1, os.cpu_count() or 1)
    size = max(100, len(pw) // (workers * 8))
    chunks = [pw[i : i + size] for i in range(0, len(pw), size)]
    loop = asyncio.get_running_loop()
    out: list[str] = []
    with ProcessPoolExecutor(workers) as ex:
        futs = [loop.run_in_executor(ex, _hash_many, c) for c in chunks]
        for f in futs:
            out += await f
            if progress:
                progress("hashing passwords", len(out), len(pw))
    return out


async def export(conn: asyncpg.Connection) -> dict[str, Any]:
    """The whole inventory as one YAML-able document (passwords as hashes), deterministic."""
    doc: dict[str, Any] = {}
    doc["regions"] = [r["id"] for r in await conn.fetch("SELECT id FROM regions ORDER BY id")]
    doc["sites"] = [dict(r) for r in await conn.fetch("SELECT id, region FROM sites ORDER BY id")]
    doc["systems"] = [r["id"] for r in await conn.fetch("SELECT id FROM systems ORDER BY id")]
    queues: dict[str, dict[str, str]] = {}
    for r in await conn.fetch("SELECT skill_group, site, queue FROM skill_group_queues ORDER BY 1, 2"):
        queues.setdefault(r["skill_group"], {})[r["site"]] = r["queue"]
    doc["skill_groups"] = [{"id": r["id"], "queues": queues.get(r["id"], {})}
                           for r in await conn.fetch("SELECT id FROM skill_groups ORDER BY id")]
    skills: dict[str, dict[str, int]] = {}
    for r in await conn.fetch("SELECT account, skill_group, penalty FROM agent_skills ORDER BY 1, 2"):
        skills.setdefault(r["account"], {})[r["skill_group"]] = r["penalty"]
    doc["agents"] = [{"account": r["account"], "password_hash": r["password_hash"], "system": r["system"],
                      "home_region": r["home_region"], "skills": skills.get(r["account"], {})}
                     for r in await conn.fetch("SELECT * FROM agents ORDER BY account")]
    lines: dict[str, dict[str, dict[str, str]]] = {}
    for r in await conn.fetch("SELECT * FROM device_lines ORDER BY mac, site"):
        lines.setdefault(r["mac"], {})[r["site"]] = {"extension": r["extension"], "sip_username": r["sip_username"],
                                                    "sip_password": r["sip_password"]}
    doc["devices"] = [{"mac": r["mac"], "model": r["model"], "location": r["location"],
                       "lines": lines.get(r["mac"], {})}
                      for r in await conn.fetch("SELECT * FROM devices ORDER BY mac")]
    doc["rules"] = [{"scope": r["scope"], "value": r["value"], "from_site": r["from_site"],
                     "to_site": r["to_site"], "enabled": r["enabled"]}
                    for r in await conn.fetch("SELECT * FROM planned_switch_rules ORDER BY id")]
    lo_hi = await conn.fetchrow("SELECT min(id) AS lo, max(id) AS hi, count(*) AS n FROM virtual_agent_ids")
    if lo_hi["n"]:
        doc["virtual_agent_ids"] = {"from": lo_hi["lo"], "to": lo_hi["hi"]}
    return doc
