"""The routing policy: one YAML file, validated like the topology, every problem by its path.

Everything a policy names ends up inside PBX configuration (pjsip.conf section
names, dialplan labels, XML attributes, a dispatcher list), so each field is
checked against a narrow character set when the policy loads.  A name that could
start a new config line, a comment (``;``), an argument (``,``), a variable
expansion (``${``), or XML markup (``<``, quotes) never reaches a renderer: the
renderers can then stay simple string templates.

Format (docs/routing.md has the full reference)::

    sites:
      - {id: a, host: 10.77.0.11, port: 5060}
      - {id: b, host: 10.77.0.12, port: 5060}
    carriers:
      - name: telco1
        trunks:
          - {name: t1-a, site: a, host: 192.0.2.10, auth: {username: acct1, password: {env: T1_PW}},
             register: true, codecs: [alaw, ulaw], qualify_s: 30}
    outbound: {a: [t1-a, t2-a], b: [t1-b]}      # failover order per site
    intersite: {codecs: [ulaw], qualify_s: 5}
    queues: [{name: ccdr-sales}]
    dids:
      - number: "4930100"
        queue: ccdr-sales
        split: {a: 60, b: 40}
        areas:
          - {prefix: "0201", site: a}
          - {prefix: "020", split: {a: 20, b: 80}}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from controlplane.errors import ConfigError
from controlplane.names import EXTENSION, SAFE_ID, SAFE_NAME, SIP_USER
from controlplane.settings import SecretRef
from controlplane.settings.loader import _join, _kind, _Reader, read_yaml

# Names become pjsip section names, dialplan labels, XML attribute values and
# dispatcher attributes: letters, digits, '-', '_' only (no '.', which Asterisk
# treats specially in extension patterns).
NAME = SAFE_ID
QUEUE = SAFE_NAME
HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
CIDR = re.compile(r"^[0-9A-Fa-f.:]{2,45}(/[0-9]{1,3})?$")
DIGITS = re.compile(r"^[0-9]{1,20}$")
# A secret that is written into pjsip.conf and XML: no whitespace, ';' (a comment
# in Asterisk configs), ',', quotes, '<', '>', '&', '$', '{', '}' or backslash.
SECRET_VALUE = re.compile(r"^[A-Za-z0-9_.@%+=:/!#*^~?()\[\]|-]{1,128}$")
CODECS = ("ulaw", "alaw", "g722", "g729", "gsm", "opus", "ilbc", "speex")
TRANSPORTS = ("udp", "tcp", "tls")
STRATEGIES = ("ringall", "leastrecent", "fewestcalls", "random", "rrmemory", "linear", "wrandom")

Transport = Literal["udp", "tcp", "tls"]


@dataclass(frozen=True)
class PolicySite:
    id: str
    host: str
    port: int = 5060
    transport: Transport = "udp"


@dataclass(frozen=True)
class TrunkAuth:
    username: str
    password: SecretRef
    path: str  # where the password reference was given, for errors at render time


@dataclass(frozen=True)
class Trunk:
    name: str
    carrier: str
    site: str
    host: str
    port: int = 5060
    transport: Transport = "udp"
    auth: TrunkAuth | None = None
    trust: tuple[str, ...] = ()  # addresses/CIDRs the carrier sends from (identify)
    register: bool = False
    codecs: tuple[str, ...] = ("ulaw", "alaw")
    qualify_s: int = 30
    qualify_timeout_s: float = 3.0


@dataclass(frozen=True)
class Carrier:
    name: str
    trunks: tuple[Trunk, ...]


@dataclass(frozen=True)
class Intersite:
    codecs: tuple[str, ...] = ("ulaw", "alaw")
    qualify_s: int = 5
    qualify_timeout_s: float = 1.0
    dial_timeout_s: int = 30


@dataclass(frozen=True)
class Area:
    prefix: str
    split: tuple[tuple[str, int], ...]  # (site, percent); one site at 100 for "site: X"


@dataclass(frozen=True)
class Did:
    number: str
    queue: str
    split: tuple[tuple[str, int], ...]
    areas: tuple[Area, ...] = ()  # longest prefix first


@dataclass(frozen=True)
class Queue:
    name: str
    strategy: str = "rrmemory"
    timeout_s: int = 15
    wrapup_s: int = 0


@dataclass(frozen=True)
class Phone:
    """A phone endpoint at one site (from the inventory's device_lines)."""

    site: str
    extension: str
    sip_username: str
    sip_password: str

    def __repr__(self) -> str:  # never shows the password
        return f"Phone(site={self.site!r}, extension={self.extension!r}, sip_username={self.sip_username!r})"


@dataclass(frozen=True)
class Policy:
    sites: tuple[PolicySite, ...]
    carriers: tuple[Carrier, ...]
    outbound: Mapping[str, tuple[str, ...]]
    intersite: Intersite
    queues: tuple[Queue, ...]
    dids: tuple[Did, ...]

    def site(self, sid: str) -> PolicySite:
        for s in self.sites:
            if s.id == sid:
                return s
        raise ConfigError([f"--site: {sid!r} is not a site of the policy ({', '.join(s.id for s in self.sites)})"])

    def trunks(self, site: str | None = None) -> list[Trunk]:
        return [t for c in self.carriers for t in c.trunks if site is None or t.site == site]

    def peers(self, site: str) -> list[PolicySite]:
        return [s for s in self.sites if s.id != site]


class _PolicyReader(_Reader):
    def boolean(self, m: Mapping[str, Any], path: str, key: str, default: bool) -> bool:
        v = m.get(key, default)
        if not isinstance(v, bool):
            self.bad(_join(path, key), f"must be true or false, got {_kind(v)}")
            return default
        return v

    def seq(self, v: Any, path: str, *, required: bool = False) -> list[Any]:
        if v is None:
            if required:
                self.bad(path, "required, a non-empty list")
            return []
        if not isinstance(v, list):
            self.bad(path, f"must be a list, got {_kind(v)}")
            return []
        if required and not v:
            self.bad(path, "must not be empty")
        return v

    def codecs(self, m: Mapping[str, Any], path: str, default: tuple[str, ...]) -> tuple[str, ...]:
        p = _join(path, "codecs")
        if "codecs" not in m:
            return default
        out: list[str] = []
        for i, c in enumerate(self.seq(m["codecs"], p, required=True)):
            if c not in CODECS:
                self.bad(f"{p}[{i}]", f"must be one of {', '.join(CODECS)}, got {_kind(c)}")
            elif c in out:
                self.bad(f"{p}[{i}]", f"duplicate codec {c!r}")
            else:
                out.append(c)
        return tuple(out) or default

    def pattern(self, v: Any, path: str, pattern: re.Pattern[str], what: str) -> str:
        # Numbers written unquoted in YAML (a DID, a prefix) arrive as int: a leading
        # zero would already be lost, so only strings are accepted.
        if not isinstance(v, str) or not pattern.match(v):
            self.bad(path, f"must be {what}, got {_kind(v)}")
            return ""
        return v


def _split(r: _PolicyReader, v: Any, path: str, sites: Sequence[str]) -> tuple[tuple[str, int], ...]:
    m = r.mapping(v, path, set(sites))
    if not m:
        if v is not None and isinstance(v, Mapping):
            r.bad(path, "must name at least one site")
        return ()
    total = 0
    out: list[tuple[str, int]] = []
    for sid in sites:  # policy site order: the rendered order does not depend on YAML key order
        if sid not in m:
            continue
        pct = m[sid]
        if isinstance(pct, bool) or not isinstance(pct, int) or not 0 <= pct <= 100:
            r.bad(f"{path}.{sid}", f"must be a whole percentage 0..100, got {_kind(pct)}")
            continue
        total += pct
        if pct:
            out.append((sid, pct))
    if out and total != 100:
        r.bad(path, f"percentages must total 100, got {total}")
    return tuple(out)


def _site(r: _PolicyReader, v: Any, path: str) -> PolicySite:
    m = r.mapping(v, path, {"id", "host", "port", "transport"})
    return PolicySite(
        id=r.string(m, path, "id", pattern=NAME, what="lowercase letters, digits, - or _ (max 32)"),
        host=r.string(m, path, "host", pattern=HOST, what="a host name or address"),
        port=r.integer(m, path, "port", 5060, 1, 65535),
        transport=r.choice(m, path, "transport", TRANSPORTS, "udp"),  # type: ignore[arg-type]
    )


def _trunk(r: _PolicyReader, v: Any, path: str, carrier: str, sites: Sequence[str]) -> Trunk:
    m = r.mapping(v, path, {"name", "site", "host", "port", "transport", "auth", "trust", "register", "codecs",
                            "qualify_s", "qualify_timeout_s"})
    name = r.string(m, path, "name", pattern=NAME, what="lowercase letters, digits, - or _ (max 32)")
    site = r.string(m, path, "site", pattern=NAME, what="a site id")
    if site and NAME.match(site) and site not in sites:
        r.bad(_join(path, "site"), f"not a site of the policy: {site!r}")
    auth: TrunkAuth | None = None
    if "auth" in m:
        ap = _join(path, "auth")
        am = r.mapping(m["auth"], ap, {"username", "password"})
        user = r.string(am, ap, "username", pattern=SIP_USER, what="letters, digits, '.', '-' or '_'")
        if "password" not in am:
            r.bad(_join(ap, "password"), "required ({env: NAME} or {file: PATH})")
        auth = TrunkAuth(user, r.secret(am, ap, "password", "CCDR_TRUNK_PASSWORD"), _join(ap, "password"))
    trust = tuple(r.pattern(x, f"{path}.trust[{i}]", CIDR, "an IP address or CIDR")
                  for i, x in enumerate(r.seq(m.get("trust"), _join(path, "trust"))))
    register = r.boolean(m, path, "register", False)
    if register and auth is None:
        r.bad(_join(path, "register"), "outbound registration needs auth")
    if auth is None and not trust and "host" in m:
        # Without auth the carrier is recognised by its address; default to its host.
        trust = (str(m["host"]),) if isinstance(m["host"], str) and CIDR.match(m["host"]) else ()
    if auth is None and not trust:
        r.bad(path, "needs auth or trust (the addresses the carrier sends from)")
    return Trunk(
        name=name,
        carrier=carrier,
        site=site,
        host=r.string(m, path, "host", pattern=HOST, what="a host name or address"),
        port=r.integer(m, path, "port", 5060, 1, 65535),
        transport=r.choice(m, path, "transport", TRANSPORTS, "udp"),  # type: ignore[arg-type]
        auth=auth,
        trust=trust,
        register=register,
        codecs=r.codecs(m, path, ("ulaw", "alaw")),
        qualify_s=r.integer(m, path, "qualify_s", 30, 0, 86400),
        qualify_timeout_s=r.number(m, path, "qualify_timeout_s", 3.0, 0.1, 60),
    )


def _did(r: _PolicyReader, v: Any, path: str, sites: Sequence[str], queues: set[str]) -> Did:
    m = r.mapping(v, path, {"number", "queue", "split", "areas"})
    number = r.pattern(m.get("number"), _join(path, "number"), DIGITS, "a string of 1..20 digits")
    queue = r.string(m, path, "queue", pattern=QUEUE, what="a queue name (letters, digits, '.', '-', '_')")
    if queue and QUEUE.match(queue) and queue not in queues:
        r.bad(_join(path, "queue"), f"not a queue of the policy or the inventory: {queue!r}")
    if "split" not in m:
        r.bad(_join(path, "split"), "required, e.g. {a: 50, b: 50}")
    split = _split(r, m.get("split"), _join(path, "split"), sites)
    areas: list[Area] = []
    seen: dict[str, int] = {}
    for i, a in enumerate(r.seq(m.get("areas"), _join(path, "areas"))):
        ap = f"{path}.areas[{i}]"
        am = r.mapping(a, ap, {"prefix", "site", "split"})
        prefix = r.pattern(am.get("prefix"), _join(ap, "prefix"), DIGITS, "a string of 1..20 digits")
        if prefix in seen:
            r.bad(_join(ap, "prefix"), f"duplicate of {path}.areas[{seen[prefix]}].prefix {prefix!r}")
        seen.setdefault(prefix, i)
        if ("site" in am) == ("split" in am):
            r.bad(ap, "needs exactly one of site, split")
            continue
        if "site" in am:
            s = r.pattern(am["site"], _join(ap, "site"), NAME, "a site id")
            if s and s not in sites:
                r.bad(_join(ap, "site"), f"not a site of the policy: {s!r}")
            asplit: tuple[tuple[str, int], ...] = ((s, 100),)
        else:
            asplit = _split(r, am["split"], _join(ap, "split"), sites)
        areas.append(Area(prefix, asplit))
    # Longest prefix wins: rendered longest first. Two prefixes of one length never
    # both match, so ties are ordered by digits, making the output independent of file order.
    areas.sort(key=lambda a: (-len(a.prefix), a.prefix))
    return Did(number=number, queue=queue, split=split, areas=tuple(areas))


def _queue(r: _PolicyReader, v: Any, path: str) -> Queue:
    m = r.mapping(v, path, {"name", "strategy", "timeout_s", "wrapup_s"})
    return Queue(
        name=r.string(m, path, "name", pattern=QUEUE, what="a queue name (letters, digits, '.', '-', '_')"),
        strategy=r.choice(m, path, "strategy", STRATEGIES, "rrmemory"),
        timeout_s=r.integer(m, path, "timeout_s", 15, 1, 3600),
        wrapup_s=r.integer(m, path, "wrapup_s", 0, 0, 3600),
    )


def parse_policy(data: Any, source: str | None = None, *, inventory_queues: Sequence[str] = ()) -> Policy:
    """Validate a decoded policy document. Raises ConfigError with every problem, by path.

    ``inventory_queues`` are queue names that exist in the inventory: a DID may name
    one of them instead of a queue listed in the policy.
    """
    r = _PolicyReader()
    if data is None:
        r.bad("(file)", "empty")
    top = r.mapping(data, "", {"sites", "carriers", "outbound", "intersite", "queues", "dids"})
    sites = tuple(_site(r, s, f"sites[{i}]") for i, s in enumerate(r.seq(top.get("sites"), "sites", required=True)))
    ids = [s.id for s in sites]
    for i, sid in enumerate(ids):
        if sid and ids.index(sid) != i:
            r.bad(f"sites[{i}].id", f"duplicate of sites[{ids.index(sid)}].id {sid!r}")
    carriers: list[Carrier] = []
    trunk_at: dict[str, str] = {}
    for ci, c in enumerate(r.seq(top.get("carriers"), "carriers")):
        cp = f"carriers[{ci}]"
        cm = r.mapping(c, cp, {"name", "trunks"})
        cname = r.string(cm, cp, "name", pattern=NAME, what="lowercase letters, digits, - or _ (max 32)")
        trunks: list[Trunk] = []
        for ti, t in enumerate(r.seq(cm.get("trunks"), _join(cp, "trunks"), required=True)):
            tp = f"{cp}.trunks[{ti}]"
            trunk = _trunk(r, t, tp, cname, ids)
            if trunk.name in trunk_at:
                r.bad(f"{tp}.name", f"duplicate of {trunk_at[trunk.name]}.name {trunk.name!r}")
            trunk_at.setdefault(trunk.name, tp)
            trunks.append(trunk)
        carriers.append(Carrier(cname, tuple(trunks)))
    by_name = {t.name: t for c in carriers for t in c.trunks}
    om = r.mapping(top.get("outbound"), "outbound", set(ids))
    outbound: dict[str, tuple[str, ...]] = {}
    for sid in ids:
        names: list[str] = []
        for i, n in enumerate(r.seq(om.get(sid), f"outbound.{sid}")):
            p = f"outbound.{sid}[{i}]"
            n = r.pattern(n, p, NAME, "a trunk name")
            if not n:
                continue
            t = by_name.get(n)
            if t is None:
                r.bad(p, f"not a trunk of the policy: {n!r}")
            elif t.site != sid:
                r.bad(p, f"trunk {n!r} is at site {t.site!r}, not {sid!r}")
            elif n in names:
                r.bad(p, f"duplicate trunk {n!r}")
            else:
                names.append(n)
        outbound[sid] = tuple(names)
    im = r.mapping(top.get("intersite"), "intersite", {"codecs", "qualify_s", "qualify_timeout_s", "dial_timeout_s"})
    d = Intersite()
    intersite = Intersite(
        codecs=r.codecs(im, "intersite", d.codecs),
        qualify_s=r.integer(im, "intersite", "qualify_s", d.qualify_s, 1, 3600),
        qualify_timeout_s=r.number(im, "intersite", "qualify_timeout_s", d.qualify_timeout_s, 0.1, 60),
        dial_timeout_s=r.integer(im, "intersite", "dial_timeout_s", d.dial_timeout_s, 1, 600),
    )
    queues = tuple(_queue(r, q, f"queues[{i}]") for i, q in enumerate(r.seq(top.get("queues"), "queues")))
    qnames = [q.name for q in queues]
    for i, qn in enumerate(qnames):
        if qn and qnames.index(qn) != i:
            r.bad(f"queues[{i}].name", f"duplicate of queues[{qnames.index(qn)}].name {qn!r}")
    known_queues = set(qnames) | set(inventory_queues)
    dids = tuple(_did(r, x, f"dids[{i}]", ids, known_queues) for i, x in enumerate(r.seq(top.get("dids"), "dids")))
    numbers = [x.number for x in dids]
    for i, num in enumerate(numbers):
        if num and numbers.index(num) != i:
            r.bad(f"dids[{i}].number", f"duplicate of dids[{numbers.index(num)}].number {num!r}")
    if r.problems:
        raise ConfigError(r.problems, source)
    return Policy(sites=sites, carriers=tuple(carriers), outbound=outbound, intersite=intersite, queues=queues,
                  dids=dids)


def load_policy(path: str | Path, *, inventory_queues: Sequence[str] = ()) -> Policy:
    """Read and validate a routing policy YAML file."""
    return parse_policy(read_yaml(path), str(path), inventory_queues=inventory_queues)


def check_phones(phones: Sequence[Phone], sites: Sequence[str], source: str = "inventory") -> None:
    """Refuse phone endpoints whose fields could inject config (they come from a DB, not the policy)."""
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for i, ph in enumerate(phones):
        p = f"phones[{i}]"
        if ph.site not in sites:
            problems.append(f"{p}.site: not a site of the policy: {ph.site!r}")
        if not EXTENSION.match(ph.extension):
            problems.append(f"{p}.extension: must be letters, digits, '.', '-' or '_', got {ph.extension!r}")
        if not SIP_USER.match(ph.sip_username) or ph.sip_username.startswith(("ccdr-", "trunk-")):
            problems.append(f"{p}.sip_username: must be letters, digits, '.', '-' or '_' and not start with "
                            f"ccdr- or trunk-, got {ph.sip_username!r}")
        if not SECRET_VALUE.match(ph.sip_password):
            # Never echo the value.
            problems.append(f"{p}.sip_password: contains characters that cannot go into a PBX config")
        if (ph.site, ph.sip_username) in seen:
            problems.append(f"{p}.sip_username: duplicate at site {ph.site!r}: {ph.sip_username!r}")
        seen.add((ph.site, ph.sip_username))
    if problems:
        raise ConfigError(problems, source)


def check_queue_names(names: Sequence[str], source: str = "inventory") -> None:
    problems = [f"queues[{i}]: not a safe queue name: {n!r}" for i, n in enumerate(names) if not QUEUE.match(n)]
    if problems:
        raise ConfigError(problems, source)
