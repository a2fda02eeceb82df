"""Reading inventory files into records, with every problem as ``file:line: field: reason``.

Formats (examples in docs/inventory.md and tests/fixtures/inventory/):
- YAML: one document with any of the sections regions, sites, systems, skill_groups,
  agents, devices, rules, virtual_agent_ids;
- CSV: one kind per file, named by the file's stem (``agents.csv``, ``devices.csv`` ...),
  with a header row.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controlplane.names import ACCOUNT, EXTENSION, SAFE_ID, SAFE_NAME, SIP_USER, normalize_mac

PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]{0,256}$")
KINDS = ("regions", "sites", "systems", "skill_groups", "agents", "devices", "rules", "virtual_agent_ids")


@dataclass
class Where:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Records:
    regions: dict[str, Where] = field(default_factory=dict)
    sites: dict[str, tuple[str, Where]] = field(default_factory=dict)
    systems: dict[str, Where] = field(default_factory=dict)
    queues: dict[tuple[str, str], tuple[str, Where]] = field(default_factory=dict)  # (group, site) -> queue
    skill_groups: dict[str, Where] = field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (mac, site)
    rules: list[dict[str, Any]] = field(default_factory=list)
    vaid_ranges: list[tuple[int, int, Where]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def bad(self, where: Where, fld: str, reason: str) -> None:
        self.problems.append(f"{where}: {fld}: {reason}")


class _LineLoader(yaml.SafeLoader):
    """Records each mapping's line as ``__line__``."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    m: dict[str, Any] = {str(k): v for k, v in loader.construct_mapping(node, deep=True).items()}
    m["__line__"] = node.start_mark.line + 1
    return m


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read(paths: list[Path]) -> Records:
    r = Records()
    for p in paths:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            r.problems.append(f"{p}:0: (file): cannot read: {exc}")
            continue
        if p.suffix.lower() in (".yaml", ".yml"):
            _read_yaml(r, str(p), text)
        elif p.suffix.lower() == ".csv":
            _read_csv(r, str(p), p.stem.lower(), text)
        else:
            r.problems.append(f"{p}:0: (file): not .yaml, .yml or .csv")
    return r


def _read_yaml(r: Records, name: str, text: str) -> None:
    try:
        doc = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        r.problems.append(f"{name}:{mark.line + 1 if mark else 0}: (file): not valid YAML: "
                          f"{getattr(exc, 'problem', exc)}")
        return
    if doc is None:
        return
    if not isinstance(doc, dict):
        r.problems.append(f"{name}:1: (file): must be a mapping of sections")
        return
    top = Where(name, doc.get("__line__", 1))
    for kind, items in doc.items():
        if kind == "__line__":
            continue
        if kind not in KINDS:
            r.bad(top, kind, f"unknown section (known: {', '.join(KINDS)})")
            continue
        if kind == "virtual_agent_ids":
            _vaids(r, name, items)
            continue
        if not isinstance(items, list):
            r.bad(top, kind, "must be a list")
            continue
        for item in items:
            if isinstance(item, str) and kind in ("regions", "systems"):
                item = {"id": item, "__line__": top.line}
            if not isinstance(item, dict):
                r.bad(top, kind, f"each entry must be a mapping, got {item!r:.40}")
                continue
            _record(r, kind, Where(name, item.pop("__line__", 0)), item)


def _vaids(r: Records, name: str, v: Any) -> None:
    where = Where(name, v.get("__line__", 0) if isinstance(v, dict) else 0)
    if not isinstance(v, dict) or not isinstance(v.get("from"), int) or not isinstance(v.get("to"), int):
        r.bad(where, "virtual_agent_ids", "must be {from: N, to: M} with integers")
        return
    if not 1 <= v["from"] <= v["to"] <= 10_000_000:
        r.bad(where, "virtual_agent_ids", f"need 1 <= from <= to <= 10000000, got {v['from']}..{v['to']}")
        return
    r.vaid_ranges.append((v["from"], v["to"], where))


def _read_csv(r: Records, name: str, kind: str, text: str) -> None:
    if kind not in KINDS or kind == "virtual_agent_ids":
        r.problems.append(f"{name}:1: (file): the file name must be one of "
                          f"{', '.join(k + '.csv' for k in KINDS if k != 'virtual_agent_ids')}")
        return
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        where = Where(name, reader.line_num)
        if None in row:
            r.bad(where, "(row)", "more fields than the header")
            continue
        item: dict[str, Any] = {k.strip(): (v.strip() if v is not None else "") for k, v in row.items()}
        if kind == "skill_groups":  # skill_group,site,queue
            item = {"id": item.get("skill_group") or item.get("id", ""),
                    "queues": {item.get("site", ""): item.get("queue", "")}}
        elif kind == "agents":
            skills: dict[str, Any] = {}
            for part in filter(None, (item.get("skills") or "").split(";")):
                g, _, pen = part.partition(":")
                skills[g.strip()] = int(pen) if pen.strip().isdigit() else pen.strip() or 0
            item["skills"] = skills
        elif kind == "devices":  # one row per line: mac,model,location,site,extension,sip_username,sip_password
            item["lines"] = {item.pop("site", ""): {k: item.pop(k, "") for k in
                                                    ("extension", "sip_username", "sip_password")}}
        elif kind == "rules" and "enabled" in item:
            item["enabled"] = item["enabled"].lower() in ("1", "true", "yes", "on")
        _record(r, kind, where, item, merge=kind in ("skill_groups", "devices"))


def _s(r: Records, where: Where, item: dict[str, Any], key: str, pattern: re.Pattern[str] | None,
       what: str, required: bool = True) -> str:
    v = item.get(key)
    if v is None or v == "":
        if required:
            r.bad(where, key, "required")
        return ""
    if not isinstance(v, str | int) or isinstance(v, bool):
        r.bad(where, key, f"must be text, got {type(v).__name__}")
        return ""
    v = str(v)
    if pattern is not None and not pattern.match(v):
        r.bad(where, key, f"must be {what}, got {v[:40]!r}")
        return ""
    return v


def _record(r: Records, kind: str, where: Where, item: dict[str, Any], merge: bool = False) -> None:
    if kind == "regions":
        rid = _s(r, where, item, "id", SAFE_ID, "lowercase letters, digits, - or _")
        if rid and rid in r.regions:
            r.bad(where, "id", f"duplicate region {rid!r} (first at {r.regions[rid]})")
        elif rid:
            r.regions[rid] = where
    elif kind == "sites":
        sid = _s(r, where, item, "id", SAFE_ID, "lowercase letters, digits, - or _")
        region = _s(r, where, item, "region", SAFE_ID, "a region id")
        if sid and sid in r.sites:
            r.bad(where, "id", f"duplicate site {sid!r} (first at {r.sites[sid][1]})")
        elif sid and region:
            r.sites[sid] = (region, where)
    elif kind == "systems":
        sid = _s(r, where, item, "id", SAFE_NAME, "letters, digits, . _ -")
        if sid and sid in r.systems:
            r.bad(where, "id", f"duplicate system {sid!r} (first at {r.systems[sid]})")
        elif sid:
            r.systems[sid] = where
    elif kind == "skill_groups":
        gid = _s(r, where, item, "id", SAFE_NAME, "letters, digits, . _ -")
        queues = item.get("queues") or {}
        if not gid:
            return
        if gid in r.skill_groups and not merge:
            r.bad(where, "id", f"duplicate skill group {gid!r} (first at {r.skill_groups[gid]})")
            return
        r.skill_groups.setdefault(gid, where)
        if not isinstance(queues, dict):
            r.bad(where, "queues", "must map site -> queue name")
            return
        for site, q in queues.items():
            if site == "__line__":
                continue
            qn = _s(r, where, {"queue": q}, "queue", SAFE_NAME, "letters, digits, . _ -")
            if (gid, site) in r.queues:
                r.bad(where, f"queues.{site}", f"duplicate queue for {gid!r} at {site!r}")
            elif qn:
                r.queues[(gid, str(site))] = (qn, where)
    elif kind == "agents":
        acct = _s(r, where, item, "account", ACCOUNT, "letters, digits, . _ @ -")
        if acct and acct in r.agents:
            r.bad(where, "account", f"duplicate agent {acct!r} (first at {r.agents[acct]['where']})")
            return
        pw, ph = item.get("password"), item.get("password_hash")
        if bool(pw) == bool(ph):
            r.bad(where, "password", "give exactly one of password, password_hash")
        elif ph and not str(ph).startswith("$argon2"):
            r.bad(where, "password_hash", "must be an argon2 hash ($argon2...)")
        skills = item.get("skills") or {}
        if not isinstance(skills, dict):
            r.bad(where, "skills", "must map skill group -> penalty")
            skills = {}
        clean: dict[str, int] = {}
        for g, pen in skills.items():
            if g == "__line__":
                continue
            if not isinstance(g, str) or not SAFE_NAME.match(g):
                r.bad(where, "skills", f"skill group name {str(g)[:40]!r} is not letters, digits, . _ -")
            elif isinstance(pen, bool) or not isinstance(pen, int) or not 0 <= pen <= 100:
                r.bad(where, f"skills.{g}", f"penalty must be an integer 0..100, got {pen!r}")
            else:
                clean[g] = pen
        rec = {"account": acct, "password": pw, "password_hash": ph, "skills": clean, "where": where,
               "system": _s(r, where, item, "system", SAFE_NAME, "a system id"),
               "home_region": _s(r, where, item, "home_region", SAFE_ID, "a region id")}
        if acct:
            r.agents[acct] = rec
    elif kind == "devices":
        raw_mac = _s(r, where, item, "mac", None, "")
        mac = normalize_mac(raw_mac) if raw_mac else None
        if raw_mac and mac is None:
            r.bad(where, "mac", f"not a MAC address: {raw_mac[:40]!r}")
        model = _s(r, where, item, "model", SAFE_NAME, "letters, digits, . _ -")
        location = _s(r, where, item, "location", PRINTABLE, "printable text", required=False)
        if mac is None:
            return
        if mac in r.devices and not merge:
            r.bad(where, "mac", f"duplicate device {mac} (first at {r.devices[mac]['where']})")
            return
        prev = r.devices.get(mac)
        if prev is not None and (prev["model"], prev["location"]) != (model, location):
            r.bad(where, "model", f"device {mac} described differently at {prev['where']}")
        r.devices.setdefault(mac, {"mac": mac, "model": model, "location": location, "where": where})
        lines = item.get("lines") or {}
        if not isinstance(lines, dict) or not [k for k in lines if k != "__line__"]:
            r.bad(where, "lines", "must map site -> {extension, sip_username, sip_password}")
            return
        for site, ln in lines.items():
            if site == "__line__":
                continue
            if not isinstance(ln, dict):
                r.bad(where, f"lines.{site}", "must be {extension, sip_username, sip_password}")
                continue
            w = Where(where.file, ln.get("__line__", where.line))
            ext = _s(r, w, ln, "extension", EXTENSION, "letters, digits, . _ -")
            user = _s(r, w, ln, "sip_username", SIP_USER, "letters, digits, . _ -")
            pw = _s(r, w, ln, "sip_password", PRINTABLE, "printable text without line breaks")
            if (mac, site) in r.lines:
                r.bad(w, f"lines.{site}", f"duplicate line for {mac} at {site!r}")
            elif ext and user and pw:
                r.lines[(mac, str(site))] = {"mac": mac, "site": str(site), "extension": ext,
                                             "sip_username": user, "sip_password": pw, "where": w}
    elif kind == "rules":
        scope = _s(r, where, item, "scope", re.compile(r"^(system|region|skill_group|all)$"),
                   "one of system, region, skill_group, all")
        value = _s(r, where, item, "value", SAFE_NAME, "letters, digits, . _ -", required=scope not in ("all", ""))
        frm = _s(r, where, item, "from_site", SAFE_ID, "a site id")
        to = _s(r, where, item, "to_site", SAFE_ID, "a site id")
        if frm and frm == to:
            r.bad(where, "to_site", "must differ from from_site")
        enabled = item.get("enabled", True)
        if not isinstance(enabled, bool):
            r.bad(where, "enabled", "must be true or false")
        r.rules.append({"scope": scope, "value": value, "from_site": frm, "to_site": to,
                        "enabled": bool(enabled), "where": where})
