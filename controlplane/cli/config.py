"""``ccdr config ...``: check a topology file."""

from __future__ import annotations

import sys

import click

from controlplane.errors import ConfigError
from controlplane.settings import load_topology


@click.group()
def config() -> None:
    """Topology settings."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def check(file: str) -> None:
    """Validate FILE; print every bad field by its path. Secrets are never printed."""
    try:
        topo = load_topology(file)
    except ConfigError as exc:
        for p in exc.problems:
            click.echo(f"{file}: {p}", err=True)
        click.echo(f"{file}: {len(exc.problems)} problem(s)", err=True)
        sys.exit(1)
    sites = ", ".join(f"{s.id} ({s.pbx}, {s.region})" for s in topo.sites)
    click.echo(f"{file}: ok: {len(topo.sites)} site(s): {sites}")
