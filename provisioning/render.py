"""Render per-MAC configuration files for desk phones, keyed by the path the phone requests.

Every value is validated before it reaches a template, even though the inventory
already restricts most fields to safe character sets: the renderer is the last
place that can stop a value from turning into a second configuration line.

* A control character (newline, NUL, ...) is refused in every format: it would
  end a ``key = value`` line and XML 1.0 cannot carry most of them at all.
* In the XML formats (Polycom, Grandstream, Cisco SPA) ``< > & " '`` are escaped
  by the template engine's autoescape.
* The Yealink format is ``key = value`` text with no documented quoting or
  escaping, so anything outside printable ASCII is refused there, and so are the
  XML markup characters ``< > & " '``: how each Yealink firmware treats them is
  not documented, and refusing is loud where guessing would fail silently (a
  phone that does not register).  A password with one of them must be changed
  before it can go to a Yealink.

Output is deterministic: same phones, same bytes (no timestamps, ordered input).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import jinja2

from provisioning.errors import ProvisioningError
from provisioning.model import LineConfig, PhoneConfig, Vendor, vendor_of

# fullmatch, not match with "$": "$" also matches before a trailing newline.
MAC = re.compile(r"[0-9a-f]{12}")
# C0 controls and DEL: refused everywhere.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Yealink: printable ASCII (space included) without XML markup characters.
_YEALINK_OK = re.compile(r"[\x20-\x7e]*")
_YEALINK_MARKUP = re.compile(r"[<>&\"']")
# A line is primary + backup; the formats below number accounts 1 and 2 only.
MAX_LINES = 2

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("provisioning", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    # Templates named *.xml.j2 are escaped; the Yealink *.cfg.j2 is not (and cannot be:
    # its values are validated instead).  select_autoescape matches on the suffix.
    autoescape=jinja2.select_autoescape(enabled_extensions=("xml.j2",), default_for_string=True),
)

# Per-vendor transport spellings.
_YEALINK_TRANSPORT = {"udp": 0, "tcp": 1, "tls": 2}
_POLYCOM_TRANSPORT = {"udp": "UDPOnly", "tcp": "TCPOnly", "tls": "TLS"}
_GRANDSTREAM_TRANSPORT = {"udp": 0, "tcp": 1, "tls": 2}
_CISCO_TRANSPORT = {"udp": "UDP", "tcp": "TCP", "tls": "TLS"}


@dataclass(frozen=True)
class _Line:
    """A line as the templates see it: the config plus the derived, vendor-neutral bits."""

    n: int  # account number on the phone, 1-based
    cfg: LineConfig
    key_label: str  # the line key's text, e.g. "2001 (a)": which site this line reaches


def _check(phone: PhoneConfig, name: str, value: str, yealink: bool) -> None:
    # The message names the MAC and the field, never the value: it may be a password.
    if _CONTROL.search(value):
        raise ProvisioningError(f"phone {phone.mac}: {name} contains a control character (newline, NUL, ...)")
    if yealink and not _YEALINK_OK.fullmatch(value):
        raise ProvisioningError(f"phone {phone.mac}: {name} has characters outside printable ASCII, "
                                "which the Yealink key = value format cannot carry")
    if yealink and _YEALINK_MARKUP.search(value):
        raise ProvisioningError(f"phone {phone.mac}: {name} contains one of < > & \" ', refused for Yealink")


def validate(phone: PhoneConfig) -> Vendor:
    """Check every value of ``phone``; return its vendor. Raises :class:`ProvisioningError`."""
    if not MAC.fullmatch(phone.mac):
        # repr() is safe here: a MAC is not a secret, and repr shows a stray newline.
        raise ProvisioningError(f"phone {phone.mac!r}: mac must be 12 lowercase hex digits")
    vendor = vendor_of(phone.model)
    if not 1 <= len(phone.lines) <= MAX_LINES:
        raise ProvisioningError(f"phone {phone.mac}: has {len(phone.lines)} lines, expected 1 to {MAX_LINES}")
    yealink = vendor == "yealink"
    _check(phone, "label", phone.label, yealink)
    for i, line in enumerate(phone.lines, 1):
        for name in ("site", "registrar_host", "extension", "sip_username", "sip_password"):
            _check(phone, f"line {i} {name}", getattr(line, name), yealink)
        for name in ("site", "registrar_host", "sip_username"):
            if not getattr(line, name):
                raise ProvisioningError(f"phone {phone.mac}: line {i} {name} is empty")
        if line.transport not in _YEALINK_TRANSPORT:
            raise ProvisioningError(f"phone {phone.mac}: line {i} transport must be udp, tcp or tls")
        if not 1 <= line.registrar_port <= 65535:
            raise ProvisioningError(f"phone {phone.mac}: line {i} registrar_port out of range")
    sites = [line.site for line in phone.lines]
    if len(set(sites)) != len(sites):
        raise ProvisioningError(f"phone {phone.mac}: two lines for the same site")
    return vendor


def _lines(phone: PhoneConfig) -> list[_Line]:
    return [_Line(n, line, f"{line.extension} ({line.site})") for n, line in enumerate(phone.lines, 1)]


def _tpl(name: str, **ctx: object) -> bytes:
    return _env.get_template(name).render(**ctx).encode("utf-8")


def render(phone: PhoneConfig) -> dict[str, bytes]:
    """The files for one phone: the path it requests (lowercase MAC) -> the file's bytes."""
    vendor = validate(phone)
    ctx: dict[str, object] = {"phone": phone, "lines": _lines(phone)}
    mac = phone.mac
    if vendor == "yealink":
        # Yealink asks for y0000000000xx.cfg (per model, common) then <mac>.cfg.
        return {f"/{mac}.cfg": _tpl("yealink.cfg.j2", transport=_YEALINK_TRANSPORT, **ctx)}
    if vendor == "polycom":
        # Polycom asks for <mac>.cfg (the master file), which names the files to load next.
        return {
            f"/{mac}.cfg": _tpl("polycom_master.xml.j2", **ctx),
            f"/phone-{mac}.cfg": _tpl("polycom_phone.xml.j2", transport=_POLYCOM_TRANSPORT, **ctx),
        }
    if vendor == "grandstream":
        return {f"/cfg{mac}.xml": _tpl("grandstream.xml.j2", transport=_GRANDSTREAM_TRANSPORT,
                                       pkeys=_GRANDSTREAM_KEYS, **ctx)}
    # cisco_spa: the usual Profile_Rule is .../spa$MA.xml ($MA = lowercase MAC).
    return {f"/spa{mac}.xml": _tpl("cisco_spa.xml.j2", transport=_CISCO_TRANSPORT, **ctx)}


# Grandstream P-values of accounts 1 and 2 (GXP/GRP firmware): they follow no pattern
# between account 1 and the others, hence a table.  server takes host:port.
_GRANDSTREAM_KEYS: Mapping[int, Mapping[str, str]] = {
    1: {"active": "P271", "name": "P270", "server": "P47", "user": "P35", "auth": "P36",
        "password": "P34", "display": "P3", "transport": "P130"},
    2: {"active": "P401", "name": "P417", "server": "P402", "user": "P404", "auth": "P405",
        "password": "P406", "display": "P407", "transport": "P448"},
}


def render_all(phones: Iterable[PhoneConfig]) -> dict[str, bytes]:
    """Render every phone, sorted by path. Raises if two phones share a MAC or a path.

    A clash would serve one phone another phone's credentials, so it is an error,
    not a "last one wins".
    """
    out: dict[str, bytes] = {}
    owner: dict[str, str] = {}
    macs: set[str] = set()
    for phone in phones:
        if phone.mac in macs:
            raise ProvisioningError(f"phone {phone.mac}: listed twice")
        macs.add(phone.mac)
        for path, body in render(phone).items():
            if path in owner:
                raise ProvisioningError(f"phones {owner[path]} and {phone.mac} both render {path}")
            owner[path] = phone.mac
            out[path] = body
    return dict(sorted(out.items()))
