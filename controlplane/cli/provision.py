"""``ccdr provision ...``: desk-phone configuration files, rendered or served."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import asyncpg
import click

from controlplane.cli.common import dsn_options, resolve_dsn
from controlplane.errors import CcdrError
from controlplane.settings import SipRegistrar, Topology, load_topology
from provisioning.http import cached, make_app
from provisioning.render import render_all
from provisioning.source import load_phones

# Written into every output directory: `render` only ever replaces a directory that
# carries it (or an empty one), so a mistyped --out cannot wipe an unrelated tree.
MARKER = ".ccdr-provision"


def _registrars(topo: Topology) -> dict[str, SipRegistrar]:
    return {s.id: s.sip for s in topo.sites}


async def _render(dsn: str, topo: Topology) -> dict[str, bytes]:
    conn = await asyncpg.connect(dsn)
    try:
        phones = await load_phones(conn, _registrars(topo))
    finally:
        await conn.close()
    return render_all(phones)


def write_tree(out: Path, files: Mapping[str, bytes]) -> None:
    """Replace ``out`` with exactly ``files``: all of them or, on any error, none.

    The files are written to a temporary directory beside ``out`` (same filesystem,
    so rename is atomic), then swapped in.  Between the two renames ``out`` is
    briefly absent; a phone asking right then gets a 404 and retries.
    """
    out = out.absolute()
    if out.exists() and not (out / MARKER).exists() and any(out.iterdir()):
        raise click.ClickException(f"{out} is not empty and was not written by ccdr provision; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # 0750/0640: the files hold SIP passwords; the web/TFTP server reads them via its group.
        tmp.chmod(0o750)
        for path, body in {MARKER: b"", **{p.lstrip("/"): b for p, b in files.items()}}.items():
            f = tmp / path
            f.write_bytes(body)
            f.chmod(0o640)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.rename(out, old / "tree")
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(old / "tree", out)
                raise
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@click.group()
def provision() -> None:
    """Desk-phone provisioning: line 1 at the home site, line 2 at the backup site."""


@provision.command()
@dsn_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to (re)write.")
def render(dsn: str | None, topology: str, out: str) -> None:
    """Render every phone's files into OUT, replacing what was there (all or nothing)."""
    try:
        topo = load_topology(topology)
        files = asyncio.run(_render(resolve_dsn(dsn, topology), topo))
        write_tree(Path(out), files)
    except CcdrError as exc:
        click.echo(f"ccdr provision render: {exc}", err=True)
        sys.exit(1)
    click.echo(f"wrote {len(files)} files to {out}")


@provision.command()
@dsn_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (the voice network).")
@click.option("--port", default=8088, show_default=True, type=int)
@click.option("--reload-s", default=10.0, show_default=True, type=float,
              help="Re-read the inventory at most this often.")
def serve(dsn: str | None, topology: str, host: str, port: int, reload_s: float) -> None:
    """Serve phone files over HTTP until interrupted."""
    from aiohttp import web

    topo = load_topology(topology)
    registrars = _registrars(topo)
    pg_dsn = resolve_dsn(dsn, topology)

    async def run() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)

        async def load() -> dict[str, bytes]:
            return render_all(await load_phones(pool, registrars))

        provider = cached(load, reload_s)
        await provider()  # fail at start, not at the first phone, if the inventory cannot be rendered
        runner = web.AppRunner(make_app(provider))
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        click.echo(f"provisioning on http://{host}:{port}", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            await pool.close()

    try:
        asyncio.run(run())
    except CcdrError as exc:
        click.echo(f"ccdr provision serve: {exc}", err=True)
        sys.exit(1)
