"""``ccdr events tail`` and ``ccdr events record``: a site's live PBX traffic."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import IO

import click

from controlplane.errors import CcdrError
from controlplane.pbx.asterisk import AsteriskClient
from controlplane.settings import Site, load_topology

DEFAULT_TOPOLOGY = "/var/lib/ccdr/lab/topology.yaml"


def _site(topology: str, site_id: str) -> tuple[Site, AsteriskClient]:
    topo = load_topology(topology)
    s = topo.site(site_id)
    if s.ami is None:
        raise click.ClickException(f"site {site_id}: only Asterisk sites are supported by this command yet")
    return s, AsteriskClient(s.id, s.ami, topo.timings, event_mask="on")


@click.command("tail")
@click.option("--site", "site_id", required=True)
@click.option("--topology", default=DEFAULT_TOPOLOGY, show_default=True, type=click.Path(dir_okay=False))
@click.option("--count", type=int, default=0, help="Stop after this many events (0: run until interrupted).")
def tail(site_id: str, topology: str, count: int) -> None:
    """Print the site's normalized PBX events, one JSON object a line."""

    async def run() -> None:
        _, c = _site(topology, site_id)
        sub = c.events()
        await c.start()
        n = 0
        try:
            async for ev in sub:
                click.echo(json.dumps({"site": ev.site, "kind": ev.kind.value, "at": round(ev.at, 3),
                                       "data": ev.data}, default=str))
                n += 1
                if count and n >= count:
                    return
        finally:
            await c.close()

    try:
        asyncio.run(run())
    except CcdrError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass


@click.command("record")
@click.option("--site", "site_id", required=True)
@click.option("--topology", default=DEFAULT_TOPOLOGY, show_default=True, type=click.Path(dir_okay=False))
@click.option("--seconds", type=float, default=0, help="Stop after this long (0: run until interrupted).")
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
def record(site_id: str, topology: str, seconds: float, file: str) -> None:
    """Record the site's raw AMI traffic (as received, banner included) to FILE.

    The file is what `ccdr events parse --protocol ami` and `ccdr lab replay` read.
    The login action we send is not recorded, so no secret reaches the file.
    """
    out: IO[bytes] = Path(file).open("wb")  # closed in the finally below

    async def run() -> None:
        s = load_topology(topology).site(site_id)
        if s.ami is None:
            raise click.ClickException(f"site {site_id}: only Asterisk sites are supported by this command yet")
        def tap(data: bytes) -> None:
            out.write(data)

        c = AsteriskClient(s.id, s.ami, load_topology(topology).timings, event_mask="on", tap=tap)
        await c.start()
        t0 = time.monotonic()
        try:
            while not seconds or time.monotonic() - t0 < seconds:
                await asyncio.sleep(0.1)
                out.flush()
        finally:
            await c.close()

    try:
        asyncio.run(run())
    except CcdrError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass
    finally:
        out.close()
    click.echo(f"{file}: {Path(file).stat().st_size} bytes", err=True)


__all__ = ["record", "tail"]
