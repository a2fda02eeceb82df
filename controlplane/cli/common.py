"""Options shared by command groups: where the topology and the stores are."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from controlplane.settings import Topology, load_topology

DEFAULT_TOPOLOGY = os.environ.get("CCDR_TOPOLOGY", "/var/lib/ccdr/lab/topology.yaml")
F = TypeVar("F", bound=Callable[..., Any])


def topology_option(f: F) -> F:
    return click.option("--topology", default=DEFAULT_TOPOLOGY, show_default=True,
                        type=click.Path(dir_okay=False), help="Topology file (env CCDR_TOPOLOGY).")(f)


def dsn_options(f: F) -> F:
    f = click.option("--dsn", default=None, help="PostgreSQL DSN (default: env CCDR_DSN, else the topology's).")(f)
    return topology_option(f)


def resolve_dsn(dsn: str | None, topology: str) -> str:
    if dsn:
        return dsn
    if os.environ.get("CCDR_DSN"):
        return os.environ["CCDR_DSN"]
    topo: Topology = load_topology(topology)
    return topo.postgres_dsn
