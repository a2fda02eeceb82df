"""``ccdr inventory ...``: import and export the inventory."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg
import click
import yaml

from controlplane.cli.common import dsn_options, resolve_dsn
from controlplane.errors import InventoryError
from controlplane.inventory import importer


@click.group()
def inventory() -> None:
    """Sites, skill groups, agents, devices, rules."""


@inventory.command("import")
@dsn_options
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def import_(dsn: str | None, topology: str, files: tuple[str, ...]) -> None:
    """Import FILES (YAML or CSV) in one transaction: all of it, or nothing."""
    from rich.progress import Progress

    async def run() -> importer.Summary:
        conn = await asyncpg.connect(resolve_dsn(dsn, topology))
        try:
            with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
                task = bar.add_task("importing", total=None)

                def progress(stage: str, done: int, total: int) -> None:
                    bar.update(task, description=stage, completed=done, total=total)

                return await importer.import_files(conn, [Path(f) for f in files], progress)
        finally:
            await conn.close()

    try:
        summary = asyncio.run(run())
    except InventoryError as exc:
        for p in exc.problems:
            click.echo(p, err=True)
        click.echo(f"ccdr inventory import: {exc}", err=True)
        sys.exit(1)
    click.echo(f"imported {summary}")


@inventory.command()
@dsn_options
def export(dsn: str | None, topology: str) -> None:
    """Print the whole inventory as YAML (passwords as argon2 hashes)."""

    async def run() -> dict[str, object]:
        conn = await asyncpg.connect(resolve_dsn(dsn, topology))
        try:
            return await importer.export(conn)
        finally:
            await conn.close()

    click.echo(yaml.safe_dump(asyncio.run(run()), sort_keys=False, allow_unicode=True), nl=False)
