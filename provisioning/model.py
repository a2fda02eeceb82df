"""What a phone is told: its SIP lines, primary (home site) first, backup second."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from provisioning.errors import ProvisioningError

Transport = Literal["udp", "tcp", "tls"]
Vendor = Literal["yealink", "polycom", "grandstream", "cisco_spa"]
VENDORS: tuple[Vendor, ...] = ("yealink", "polycom", "grandstream", "cisco_spa")


@dataclass(frozen=True)
class LineConfig:
    """One SIP account on the phone: where it registers and as whom."""

    site: str
    registrar_host: str
    registrar_port: int
    transport: Transport
    extension: str
    sip_username: str
    # repr=False: a LineConfig in a log line or a traceback must not show the secret.
    sip_password: str = field(repr=False)


@dataclass(frozen=True)
class PhoneConfig:
    mac: str  # 12 lowercase hex digits, no separators
    model: str  # free text from the inventory, e.g. "Yealink T54W" or "yealink-t46"
    label: str  # what the phone shows as its name, e.g. the home extension
    lines: tuple[LineConfig, ...]  # primary (home site) first, backup second


# The inventory only allows [A-Za-z0-9_.-] in a model name, so "Cisco SPA504G" arrives
# as "cisco_spa504g" or "Cisco-SPA504G".  Separators become one space before matching,
# so "_" (a word character for \b) splits words like "-" and " " do.
_SEPARATORS = re.compile(r"[\s_.\-/]+")
# Vendor names are tried before product families: "Cisco SPA" must not be read as a
# Yealink because of a "t" followed by digits somewhere later in the string.
_BY_NAME: tuple[tuple[Vendor, re.Pattern[str]], ...] = (
    ("yealink", re.compile(r"\byealink")),
    ("polycom", re.compile(r"\bpolycom")),
    ("grandstream", re.compile(r"\bgrandstream")),
    # Only the SPA line of Cisco phones uses this format; a Cisco 7900/8800 does not.
    ("cisco_spa", re.compile(r"\b(cisco|linksys|sipura) ?spa")),
)
_BY_FAMILY: tuple[tuple[Vendor, re.Pattern[str]], ...] = (
    ("polycom", re.compile(r"\b(vvx|soundpoint|spip|ssip)")),
    ("grandstream", re.compile(r"\b(gxp|grp|gxv)\d")),
    ("cisco_spa", re.compile(r"\bspa ?\d")),
    # "SIP-T46S" normalizes to "sip t46s"; "T54W", "t4x" and "T2x" are the families.
    ("yealink", re.compile(r"\b(sip ?)?t[2-5][0-9x]")),
)


def vendor_of(model: str) -> Vendor:
    """The provisioning format a phone model speaks. Raises :class:`ProvisioningError` if unknown."""
    text = _SEPARATORS.sub(" ", model.lower()).strip()
    for table in (_BY_NAME, _BY_FAMILY):
        for vendor, pattern in table:
            if pattern.search(text):
                return vendor
    raise ProvisioningError(
        f"unknown phone model {model!r}: expected a Yealink, Polycom, Grandstream or Cisco SPA model")
