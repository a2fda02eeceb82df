"""``ccdr drill run SCENARIO.yaml``: a failover drill on the native lab, with a report."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from controlplane.errors import CcdrError


@click.group()
def drill() -> None:
    """Failover drills: faults injected into the lab while simulated agents work."""


@drill.command()
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False))
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Write report.json, report.html and timeline.png here.")
@click.option("--agents", type=int, default=None, help="Override the scenario's number of agents.")
def run(scenario: str, report_dir: str | None, agents: int | None) -> None:
    """Bring the lab up if needed, log the scenario's agents in, inject its faults, and
    report; exit 0 only if every expectation held."""

    from lab.drill.report import write
    from lab.drill.runner import run_drill
    from lab.drill.scenario import load_scenario

    try:
        sc = load_scenario(scenario)
    except CcdrError as exc:
        click.echo(f"ccdr drill: {exc}", err=True)
        sys.exit(2)
    if agents is not None:
        sc = sc.with_agents(agents)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            rep = asyncio.run(run_drill(sc, progress=progress))
        except CcdrError as exc:
            click.echo(f"ccdr drill: {exc}", err=True)
            sys.exit(1)
    if report_dir:
        write(rep, Path(report_dir))
    brief = {k: rep[k] for k in ("scenario", "agents", "lost_agents", "agents_at_both_sites", "moved_agents",
                                 "recovery_s", "passed")}
    click.echo(json.dumps(brief))
    for c in rep["expectations"]:
        if not c["ok"]:
            click.echo(f"FAIL {c['name']}: expected {c['expected']}, got {c['actual']}", err=True)
    sys.exit(0 if rep["passed"] else 1)
