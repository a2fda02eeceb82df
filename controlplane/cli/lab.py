"""``ccdr lab ...``: the native two-site lab (root, no Docker)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from controlplane.errors import CcdrError


def _fail_clearly(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except CcdrError as exc:
        click.echo(f"ccdr lab: {exc}", err=True)
        sys.exit(1)


@click.group()
def lab() -> None:
    """The two-site lab: real Asterisk 22 sites in network namespaces."""


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def _print_status(st: dict[str, Any]) -> None:
    for k in ("postgres", "redis"):
        c = st[k]
        click.echo(f"{k:<9} {c['host']}:{c['port']:<6} {c['state']}")
    for sid, s in st["sites"].items():
        click.echo(
            f"site {sid} ({s['region']}): asterisk {s['asterisk']['state']}, link {s['link']}, "
            f"AMI {s['ami']['host']}:{s['ami']['port']} {s['ami']['state']}, "
            f"SIP udp {s['sip']['host']}:{s['sip']['port']} {s['sip']['state']}, "
            f"login {s['login_url']}"
        )
    if st.get("topology"):
        click.echo(f"topology: {st['topology']}")


@lab.command()
@click.option("--phones", type=click.IntRange(0, 50000), default=None,
              help="Lab phone endpoints per site (extensions 1001.., password lab-<ext>).")
def up(phones: int | None) -> None:
    """Start everything (idempotent): stores, both sites, their network."""
    from lab import manager

    st = _fail_clearly(lambda: manager.up(phones, say=_say))
    _print_status(st)


@lab.command()
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder to write into.")
@click.option("--phones", type=click.IntRange(0, 50000), default=20, show_default=True)
def configs(out: str, phones: int) -> None:
    """Write each site's generated Asterisk configuration (for lab/docker-compose.yml)."""
    from pathlib import Path

    from lab import manager

    for d in _fail_clearly(lambda: manager.export_configs(Path(out), phones)):
        click.echo(str(d))


@lab.command()
def down() -> None:
    """Stop all the lab started, and nothing else (idempotent)."""
    from lab import manager

    _fail_clearly(lambda: manager.down(say=_say))
    click.echo("lab down")


@lab.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Every component up or down."""
    from lab import manager

    st = _fail_clearly(manager.status)
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
    else:
        _print_status(st)


@lab.command()
@click.option("--protocol", type=click.Choice(["ami", "esl"]), required=True)
@click.option("--port", type=click.IntRange(1, 65535), required=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def replay(protocol: str, port: int, host: str, file: str) -> None:
    """Serve a recorded trace to one client, answering its actions from the trace."""
    import asyncio
    from pathlib import Path

    from controlplane.testing.replay import AmiReplay, EslReplay, serve_once

    data = Path(file).read_bytes()
    rep: AmiReplay | EslReplay = AmiReplay(data) if protocol == "ami" else EslReplay(data)
    click.echo(f"serving {file} ({protocol}) on {host}:{port} to one client", err=True)
    try:
        asyncio.run(serve_once(rep, host, port))
    except OSError as exc:
        click.echo(f"ccdr lab: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        sys.exit(1)


def _fault(verb: str, doc: str) -> click.Command:
    @click.argument("site")
    def cmd(site: str) -> None:
        from lab import manager

        _fail_clearly(lambda: getattr(manager, verb)(site))
        click.echo(f"{verb} {site}: done")

    cmd.__doc__ = doc
    return click.command(name=verb)(cmd)


for _verb, _doc in (
    ("kill", "SIGKILL the site's Asterisk, as a crash would."),
    ("freeze", "SIGSTOP the site's Asterisk: TCP stays open, nothing answers."),
    ("thaw", "SIGCONT a frozen site."),
    ("start", "Start a killed site's Asterisk again."),
    ("cut", "Unplug the site's network: nothing reaches it, it reaches nothing."),
    ("heal", "Plug the site's network back in."),
):
    lab.add_command(_fault(_verb, _doc))
