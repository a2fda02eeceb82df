"""``ccdr db ...``: the inventory database."""

from __future__ import annotations

import asyncio

import asyncpg
import click

from controlplane.cli.common import dsn_options, resolve_dsn
from controlplane.inventory.migrate import migrate as run_migrations


@click.group()
def db() -> None:
    """The inventory database (PostgreSQL)."""


@db.command()
@dsn_options
def migrate(dsn: str | None, topology: str) -> None:
    """Apply pending schema migrations (idempotent; safe to run concurrently)."""

    async def run() -> list[str]:
        conn = await asyncpg.connect(resolve_dsn(dsn, topology))
        try:
            return await run_migrations(conn)
        finally:
            await conn.close()

    applied = asyncio.run(run())
    click.echo("applied: " + ", ".join(applied) if applied else "up to date")
