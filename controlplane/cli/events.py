"""``ccdr events ...``: parse recorded AMI/ESL traffic."""

from __future__ import annotations

import json
import sys

import click

from controlplane.protocols.ami import AmiParser
from controlplane.protocols.esl import EslParser
from controlplane.protocols.frame import Frame


@click.group()
def events() -> None:
    """PBX events: parse recordings."""


@events.command("parse")
@click.option("--protocol", type=click.Choice(["ami", "esl"]), required=True)
@click.argument("file", type=click.File("rb"))
def parse(protocol: str, file: click.utils.LazyFile) -> None:
    """Print one JSON object per frame (keys as sent; repeated keys as lists; a body
    under "_body"); a count on stderr. Malformed frames are reported with their byte
    offset on stderr and make the exit status 1."""
    parser: AmiParser | EslParser = AmiParser() if protocol == "ami" else EslParser()
    count = 0

    def emit(frames: list[Frame]) -> None:
        nonlocal count
        for f in frames:
            obj: dict[str, object] = dict(f.to_json_obj())
            if f.body:
                obj["_body"] = f.body
            sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
            count += 1

    while chunk := file.read(65536):
        emit(parser.feed(chunk))
    emit(parser.finish() if isinstance(parser, AmiParser) else parser.feed(b"\n\n"))
    for err in parser.errors:
        click.echo(f"{file.name}: {err}", err=True)
    click.echo(f"{file.name}: {count} frames, {len(parser.errors)} malformed", err=True)
    if parser.errors:
        sys.exit(1)
