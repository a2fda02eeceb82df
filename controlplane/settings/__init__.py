"""Typed settings: the topology file (sites, PBX links, stores) and controller timings.

Timings are data with defaults in code; a topology file may override any of them.
"""

from controlplane.settings.loader import load_topology, parse_topology
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

__all__ = [
    "AmiLink",
    "Backoff",
    "EslLink",
    "GcPolicy",
    "MoveWave",
    "SecretRef",
    "SipRegistrar",
    "Site",
    "Timings",
    "Topology",
    "load_topology",
    "parse_topology",
]
