"""Phones from the inventory: which lines each desk phone gets, in which order.

Home site rule (line 1 = primary = home site; the other lines are backups):

1. A device whose ``location`` equals the id of a site it has a line at has that
   site as home.
2. Otherwise, a device whose ``location`` equals the region of sites it has lines
   at has the first of those sites (by id) as home.
3. Otherwise the first of its line sites by id is home.

Only sites the device has a line at can be home: a phone cannot register where it
has no account.  The remaining lines follow by site id.  Devices without a line
are left out (nothing to provision).  The registrar (host, port, transport) of
each line is the topology's ``sites[].sip`` of that line's site.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from controlplane.settings import SipRegistrar
from provisioning.errors import ProvisioningError
from provisioning.model import LineConfig, PhoneConfig

# One query, ordered so that grouping below is a single pass and output is stable.
_QUERY = """
SELECT d.mac, d.model, d.location, l.site, s.region, l.extension, l.sip_username, l.sip_password
FROM devices d
JOIN device_lines l ON l.mac = d.mac
JOIN sites s ON s.id = l.site
ORDER BY d.mac, l.site
"""


class Fetcher(Protocol):
    """What :func:`load_phones` needs of an asyncpg pool or connection."""

    async def fetch(self, query: str, *args: Any) -> Sequence[Any]: ...


def home_site(location: str, line_sites: Sequence[tuple[str, str]]) -> str:
    """The home site among ``line_sites`` ((site, region) pairs, sorted by site id)."""
    for site, _region in line_sites:
        if location == site:
            return site
    for site, region in line_sites:
        if location == region:
            return site
    return line_sites[0][0]


async def load_phones(pool: Fetcher, sites: Mapping[str, SipRegistrar]) -> list[PhoneConfig]:
    """Every device with at least one line, as a :class:`PhoneConfig`, sorted by MAC.

    ``sites`` maps site id -> registrar (``{s.id: s.sip for s in topology.sites}``).
    Raises :class:`ProvisioningError` if a line's site has no registrar there: a
    phone half-provisioned without its backup line would fail over to nothing.
    """
    rows = await pool.fetch(_QUERY)
    grouped: dict[str, list[Any]] = {}
    for r in rows:
        # char(12) comes back padded only if shorter; strip() anyway, the MAC is a key.
        grouped.setdefault(r["mac"].strip(), []).append(r)
    phones = []
    for mac, lines in grouped.items():
        home = home_site(lines[0]["location"], [(r["site"], r["region"]) for r in lines])
        ordered = sorted(lines, key=lambda r: (r["site"] != home, r["site"]))
        configs = []
        for r in ordered:
            reg = sites.get(r["site"])
            if reg is None:
                raise ProvisioningError(f"phone {mac}: site {r['site']!r} has a line in the inventory "
                                        "but no SIP registrar in the topology")
            configs.append(LineConfig(site=r["site"], registrar_host=reg.host, registrar_port=reg.port,
                                      transport=reg.transport, extension=r["extension"],
                                      sip_username=r["sip_username"], sip_password=r["sip_password"]))
        phones.append(PhoneConfig(mac=mac, model=lines[0]["model"], label=configs[0].extension,
                                  lines=tuple(configs)))
    return phones
