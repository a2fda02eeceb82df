"""Root of the ``ccdr`` command line.

Each command group lives in its own module under :mod:`controlplane.cli` and is
registered here, so a reader finds ``ccdr lab ...`` in ``cli/lab.py`` and so on.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from controlplane import __version__
from controlplane.cli.config import config
from controlplane.cli.db import db
from controlplane.cli.drill import drill
from controlplane.cli.events import events
from controlplane.cli.events_live import record, tail
from controlplane.cli.inventory import inventory
from controlplane.cli.lab import lab
from controlplane.cli.login import login
from controlplane.cli.provision import provision
from controlplane.cli.render import render
from controlplane.errors import CcdrError


class _Root(click.Group):
    """Any ccdr error that reaches the top is a one-line message naming what was wrong
    (a topology field, a file and line), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CcdrError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Root)
@click.version_option(__version__, prog_name="ccdr")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """ccdr: keep every call-center agent working when a site fails."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


cli.add_command(config)
cli.add_command(events)
events.add_command(tail)
events.add_command(record)
cli.add_command(lab)
cli.add_command(db)
cli.add_command(inventory)
cli.add_command(login)
cli.add_command(drill)
cli.add_command(render)
cli.add_command(provision)
