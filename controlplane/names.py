"""The character sets for names that end up in PBX configs, dialplans, XML or Redis keys.

One definition for the inventory importer, the routing policy and the renderers: no line
break, ';', ',', '${', quote, bracket, '<' or space can get through any of them.
"""

from __future__ import annotations

import re

SAFE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # sites, regions, policy object names
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # systems, skill groups, queues
ACCOUNT = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
EXTENSION = re.compile(r"^[0-9A-Za-z_.-]{1,32}$")
SIP_USER = re.compile(r"^[0-9A-Za-z_.-]{1,64}$")

_MAC_SEPARATORS = re.compile(r"[:.\-\s]")
_MAC_HEX = re.compile(r"^[0-9a-f]{12}$")


def normalize_mac(raw: str) -> str | None:
    """00:11:22:AA:BB:CC, 00-11-22-aa-bb-cc, 0011.22aa.bbcc, 001122aabbcc -> 001122aabbcc."""
    h = _MAC_SEPARATORS.sub("", raw).lower()
    return h if _MAC_HEX.match(h) else None
