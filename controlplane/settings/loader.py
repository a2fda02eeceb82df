"""Load and validate a topology file, reporting every bad field by its path.

A small hand-written validator (no schema library): it walks the YAML tree once,
collects ``path: reason`` for every problem, and only builds the frozen settings
objects when there are none.  Unknown keys are errors too: a misspelt
``probe_intervall_s`` silently falling back to a default is the kind of thing
that goes unnoticed until the night a site fails.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from controlplane.errors import ConfigError
from controlplane.settings.model import (
    AmiLink,
    Backoff,
    EslLink,
    GcPolicy,
    MoveWave,
    SecretRef,
    SipRegistrar,
    Site,
    Timings,
    Topology,
)

# Site ids and regions end up in file names, Redis keys and PBX configs.
SAFE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOST = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")

T = TypeVar("T")


class _Reader:
    """Collects problems while reading values out of a YAML mapping."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, path: str, reason: str) -> None:
        self.problems.append(f"{path}: {reason}")

    def mapping(self, value: Any, path: str, allowed: set[str]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.bad(path, f"must be a mapping, got {_kind(value)}")
            return {}
        for key in value:
            if key not in allowed:
                self.bad(f"{path}.{key}" if path else str(key), "unknown field")
        return value

    def string(
        self,
        m: Mapping[str, Any],
        path: str,
        key: str,
        default: str | None = None,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
    ) -> str:
        p = _join(path, key)
        if key not in m:
            if default is None:
                self.bad(p, "required")
                return ""
            return default
        v = m[key]
        if not isinstance(v, str) or not v:
            self.bad(p, f"must be a non-empty string, got {_kind(v)}")
            return ""
        if pattern is not None and not pattern.match(v):
            self.bad(p, f"must be {what or pattern.pattern}, got {v!r}")
        return v

    def integer(self, m: Mapping[str, Any], path: str, key: str, default: int, lo: int, hi: int) -> int:
        p = _join(path, key)
        v = m.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            self.bad(p, f"must be an integer {lo}..{hi}, got {_kind(v)}")
            return default
        if not lo <= v <= hi:
            self.bad(p, f"must be {lo}..{hi}, got {v}")
        return v

    def number(
        self, m: Mapping[str, Any], path: str, key: str, default: float, lo: float, hi: float
    ) -> float:
        p = _join(path, key)
        v = m.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.bad(p, f"must be a number {lo}..{hi}, got {_kind(v)}")
            return default
        if not lo <= v <= hi:
            self.bad(p, f"must be {lo}..{hi}, got {v}")
        return float(v)

    def choice(
        self, m: Mapping[str, Any], path: str, key: str, options: tuple[str, ...], default: str | None = None
    ) -> str:
        p = _join(path, key)
        if key not in m:
            if default is None:
                self.bad(p, f"required, one of {', '.join(options)}")
                return options[0]
            return default
        v = m[key]
        if v not in options:
            self.bad(p, f"must be one of {', '.join(options)}, got {v!r}")
            return options[0]
        return str(v)

    def secret(self, m: Mapping[str, Any], path: str, key: str, default_env: str) -> SecretRef:
        p = _join(path, key)
        if key not in m:
            return SecretRef(env=default_env)
        v = m[key]
        if isinstance(v, str):
            # Never echo the value: it may be the very secret we refuse to hold.
            self.bad(p, "inline secrets are not accepted; use {env: NAME} or {file: PATH}")
            return SecretRef(env=default_env)
        ref = self.mapping(v, p, {"env", "file"})
        if len(ref) != 1:
            self.bad(p, "must have exactly one of env, file")
            return SecretRef(env=default_env)
        if "env" in ref:
            name = ref["env"]
            if not isinstance(name, str) or not ENV_NAME.match(name):
                self.bad(f"{p}.env", f"must be an environment variable name, got {name!r}")
            return SecretRef(env=str(name))
        f = ref["file"]
        if not isinstance(f, str) or not f:
            self.bad(f"{p}.file", f"must be a file path, got {_kind(f)}")
            return SecretRef(env=default_env)
        return SecretRef(file=Path(f))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(v: Any) -> str:
    if v is None:
        return "nothing"
    if isinstance(v, bool):
        return f"boolean {v}"
    if isinstance(v, int | float):
        return f"number {v}"
    if isinstance(v, str):
        return f"string {v!r}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, Mapping):
        return "a mapping"
    return type(v).__name__


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _backoff(r: _Reader, v: Any, path: str) -> Backoff:
    d = Backoff()
    m = r.mapping(v, path, _names(Backoff))
    b = Backoff(
        initial_s=r.number(m, path, "initial_s", d.initial_s, 0.01, 3600),
        max_s=r.number(m, path, "max_s", d.max_s, 0.01, 86400),
        factor=r.number(m, path, "factor", d.factor, 1.0, 10.0),
        jitter=r.number(m, path, "jitter", d.jitter, 0.0, 1.0),
    )
    if b.max_s < b.initial_s:
        r.bad(f"{path}.max_s", f"must be >= initial_s ({b.initial_s}), got {b.max_s}")
    return b


def _gc(r: _Reader, v: Any, path: str) -> GcPolicy:
    d = GcPolicy()
    m = r.mapping(v, path, _names(GcPolicy))
    g = GcPolicy(
        young_threshold=r.integer(m, path, "young_threshold", d.young_threshold, 100, 10_000_000),
        middle_threshold=r.integer(m, path, "middle_threshold", d.middle_threshold, 1, 10_000),
        full_interval_s=r.number(m, path, "full_interval_s", d.full_interval_s, 1, 86400),
        defer_max_s=r.number(m, path, "defer_max_s", d.defer_max_s, 0, 86400),
        busy_poll_s=r.number(m, path, "busy_poll_s", d.busy_poll_s, 0.01, 60),
    )
    if g.defer_max_s > g.full_interval_s:
        r.bad(f"{path}.defer_max_s", f"must be <= full_interval_s ({g.full_interval_s}), got {g.defer_max_s}")
    return g


def _move_wave(r: _Reader, v: Any, path: str) -> MoveWave:
    d = MoveWave()
    m = r.mapping(v, path, _names(MoveWave))
    return MoveWave(
        min_agents=r.integer(m, path, "min_agents", d.min_agents, 1, 10_000_000),
        quiet_s=r.number(m, path, "quiet_s", d.quiet_s, 0.01, 600),
        max_hold_s=r.number(m, path, "max_hold_s", d.max_hold_s, 0, 3600),
    )


def _timings(r: _Reader, v: Any, path: str) -> Timings:
    d = Timings()
    m = r.mapping(v, path, _names(Timings))
    return Timings(
        probe_interval_s=r.number(m, path, "probe_interval_s", d.probe_interval_s, 0.05, 60),
        probe_timeout_s=r.number(m, path, "probe_timeout_s", d.probe_timeout_s, 0.05, 60),
        confirm_window_s=r.number(m, path, "confirm_window_s", d.confirm_window_s, 0.0, 600),
        connect_timeout_s=r.number(m, path, "connect_timeout_s", d.connect_timeout_s, 0.1, 120),
        refusal_check_s=r.number(m, path, "refusal_check_s", d.refusal_check_s, 0.01, 10),
        command_timeout_s=r.number(m, path, "command_timeout_s", d.command_timeout_s, 0.1, 600),
        reconcile_timeout_s=r.number(m, path, "reconcile_timeout_s", d.reconcile_timeout_s, 1, 3600),
        max_in_flight=r.integer(m, path, "max_in_flight", d.max_in_flight, 1, 10000),
        reconnect=_backoff(r, m.get("reconnect"), _join(path, "reconnect")),
        gc=_gc(r, m.get("gc"), _join(path, "gc")),
        move_wave=_move_wave(r, m.get("move_wave"), _join(path, "move_wave")),
    )


def _site(r: _Reader, v: Any, path: str) -> Site:
    m = r.mapping(v, path, {"id", "region", "pbx", "ami", "esl", "sip", "login_url"})
    sid = r.string(m, path, "id", pattern=SAFE_ID, what="lowercase letters, digits, - or _")
    region = r.string(m, path, "region", pattern=SAFE_ID, what="lowercase letters, digits, - or _")
    kind = r.choice(m, path, "pbx", ("asterisk", "freeswitch"))
    ami = esl = None
    if kind == "asterisk":
        if "esl" in m:
            r.bad(_join(path, "esl"), "only for pbx: freeswitch")
        ap = _join(path, "ami")
        if "ami" not in m:
            r.bad(ap, "required for pbx: asterisk")
        am = r.mapping(m.get("ami"), ap, _names(AmiLink))
        ami = AmiLink(
            host=r.string(am, ap, "host", pattern=HOST, what="a host name or address"),
            port=r.integer(am, ap, "port", 5038, 1, 65535),
            username=r.string(am, ap, "username", default="ccdr", pattern=SAFE_ID, what="a safe name"),
            secret=r.secret(am, ap, "secret", "CCDR_AMI_SECRET"),
        )
    else:
        if "ami" in m:
            r.bad(_join(path, "ami"), "only for pbx: asterisk")
        ep = _join(path, "esl")
        if "esl" not in m:
            r.bad(ep, "required for pbx: freeswitch")
        em = r.mapping(m.get("esl"), ep, _names(EslLink))
        esl = EslLink(
            host=r.string(em, ep, "host", pattern=HOST, what="a host name or address"),
            port=r.integer(em, ep, "port", 8021, 1, 65535),
            password=r.secret(em, ep, "password", "CCDR_ESL_PASSWORD"),
        )
    sp = _join(path, "sip")
    if "sip" not in m:
        r.bad(sp, "required")
    sm = r.mapping(m.get("sip"), sp, _names(SipRegistrar))
    sip = SipRegistrar(
        host=r.string(sm, sp, "host", pattern=HOST, what="a host name or address"),
        port=r.integer(sm, sp, "port", 5060, 1, 65535),
        transport=r.choice(sm, sp, "transport", ("udp", "tcp", "tls"), "udp"),  # type: ignore[arg-type]
    )
    login_url = r.string(m, path, "login_url")
    if login_url and not re.match(r"^https?://[A-Za-z0-9.:_\-\[\]]+(/[^\s]*)?$", login_url):
        r.bad(_join(path, "login_url"), f"must be an http(s) URL, got {login_url!r}")
    return Site(id=sid, region=region, pbx=kind, ami=ami, esl=esl, sip=sip, login_url=login_url)  # type: ignore[arg-type]


def parse_topology(data: Any, source: str | None = None) -> Topology:
    """Validate a decoded topology document. Raises ConfigError with every problem."""
    r = _Reader()
    top = r.mapping(data, "", {"sites", "postgres", "redis", "timings"})
    if data is None:
        r.bad("(file)", "empty")
    sites: list[Site] = []
    raw_sites = top.get("sites")
    if not isinstance(raw_sites, list) or not raw_sites:
        r.bad("sites", f"must be a non-empty list, got {_kind(raw_sites)}")
        raw_sites = []
    for i, s in enumerate(raw_sites):
        sites.append(_site(r, s, f"sites[{i}]"))
    seen: dict[str, int] = {}
    for i, s in enumerate(sites):
        if s.id and s.id in seen:
            r.bad(f"sites[{i}].id", f"duplicate of sites[{seen[s.id]}].id {s.id!r}")
        seen.setdefault(s.id, i)
    pg = r.mapping(top.get("postgres"), "postgres", {"dsn"})
    dsn = r.string(pg, "postgres", "dsn", default=Topology.postgres_dsn)
    if not dsn.startswith(("postgresql://", "postgres://")):
        r.bad("postgres.dsn", "must start with postgresql://")
    rd = r.mapping(top.get("redis"), "redis", {"url"})
    url = r.string(rd, "redis", "url", default=Topology.redis_url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        r.bad("redis.url", "must start with redis://, rediss:// or unix://")
    timings = _timings(r, top.get("timings"), "timings")
    if r.problems:
        raise ConfigError(r.problems, source)
    return Topology(sites=tuple(sites), postgres_dsn=dsn, redis_url=url, timings=timings)


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology YAML file."""
    return parse_topology(read_yaml(path), str(path))


def read_yaml(path: str | Path) -> Any:
    """A YAML file's document; an unreadable or malformed file is a ConfigError naming
    the file and the line (shared by every settings-like file: topology, policy, drills)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"], str(p)) from None
    return data
