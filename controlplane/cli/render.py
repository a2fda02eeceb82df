"""``ccdr render``: one routing policy to Asterisk, FreeSWITCH or Kamailio files.

Rendering itself lives in :mod:`dialplans` and :mod:`sip_trunks` and never talks
to a PBX; this module adds what needs one: ``--diff`` (against the files the PBX
reads) and ``--push`` (write, reload through AMI, verify every object of ours is
loaded, and put the previous files back when that fails).
"""

from __future__ import annotations

import asyncio
import difflib
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import click

from controlplane.cli.common import topology_option
from controlplane.errors import CcdrError, PbxCommandError, RenderError
from controlplane.pbx.asterisk import AsteriskClient
from controlplane.pbx.base import LinkState
from controlplane.pbx.freeswitch import FreeswitchClient, tcp_connect
from controlplane.settings import Topology, load_topology
from dialplans.asterisk import render_asterisk
from dialplans.freeswitch import render_freeswitch
from dialplans.policy import Phone, Policy, check_phones, check_queue_names, load_policy
from sip_trunks.kamailio import render_kamailio

TARGETS = ("asterisk", "freeswitch", "kamailio")
# The modules that read the three Asterisk files, in the order they are reloaded:
# endpoints first, so the dialplan never points at a trunk that does not exist yet.
ASTERISK_MODULES = ("res_pjsip.so", "pbx_config.so", "app_queue.so")


def render_target(target: str, policy: Policy, site: str, phones: Sequence[Phone] = (),
                  inventory_queues: Sequence[str] = ()) -> dict[str, str]:
    if target == "asterisk":
        return render_asterisk(policy, site, phones, inventory_queues)
    if target == "freeswitch":
        return render_freeswitch(policy, site, phones, inventory_queues)
    if target == "kamailio":
        return render_kamailio(policy)
    raise RenderError(f"--target: must be one of {', '.join(TARGETS)}, got {target!r}")


def diff_files(out: Path, files: Mapping[str, str]) -> str:
    """A unified diff from what is in ``out`` to what would be written ('' = identical)."""
    chunks: list[str] = []
    for name, body in files.items():
        p = out / name
        old = p.read_text(encoding="utf-8") if p.exists() else ""
        chunks += difflib.unified_diff(old.splitlines(keepends=True), body.splitlines(keepends=True),
                                       fromfile=f"{p} (running)", tofile=f"{p} (rendered)")
    return "".join(chunks)


def write_files(out: Path, files: Mapping[str, str | bytes | None]) -> None:
    """Write each file atomically (rename over); None removes it."""
    out.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        p = out / name
        if body is None:
            p.unlink(missing_ok=True)
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.ccdr-tmp")
        tmp.write_bytes(body.encode() if isinstance(body, str) else body)
        tmp.replace(p)


def normalize_asterisk(text: str) -> list[str]:
    """A config file as Asterisk's GetConfig reports it: ``[category]`` and ``key=value`` lines.

    Comments, blank lines and spacing go; ``exten => x`` becomes ``exten=x``. Our
    values never contain ';' (the policy loader refuses it), so cutting at the first
    ';' only ever removes a comment.
    """
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and "]" in line:
            out.append(line[: line.index("]") + 1])
            continue
        key, _, value = line.partition("=")
        out.append(f"{key.strip()}={value.lstrip('>').strip()}")
    return out


async def pbx_config(client: AsteriskClient, filename: str) -> list[str]:
    """What the PBX reads from ``filename`` (relative to its config dir), via AMI GetConfig."""
    try:
        msg = await client.command("GetConfig", [("Filename", filename)])
    except PbxCommandError as exc:
        if "not found" in str(exc).lower():
            return []
        raise
    out: list[str] = []
    for key, value in msg.frame.items:
        if key.lower().startswith("category-"):
            out.append(f"[{value}]")
        elif key.lower().startswith("line-"):
            out.append(value)
    return out


async def diff_pbx(client: AsteriskClient, files: Mapping[str, str], subdir: str = "ccdr") -> str:
    """A diff from what the running PBX reads to what would be rendered ('' = identical)."""
    chunks: list[str] = []
    for name, body in files.items():
        running = await pbx_config(client, f"{subdir}/{name}")
        chunks += difflib.unified_diff([f"{x}\n" for x in running],
                                       [f"{x}\n" for x in normalize_asterisk(body)],
                                       fromfile=f"site {client.site}: {subdir}/{name} (running)",
                                       tofile=f"{subdir}/{name} (rendered)")
    return "".join(chunks)


async def ami_output(client: AsteriskClient, command: str) -> list[str] | None:
    """The output lines of a CLI command run through AMI; None when Asterisk answers Error."""
    try:
        msg = await client.command("Command", [("Command", command)])
    except PbxCommandError:
        return None
    return list(msg.frame.getall("Output"))


def _listed(lines: list[str] | None, kind: str) -> set[str]:
    # `pjsip list endpoints` rows: " Endpoint:  NAME   State ..."; identifies: " Identify:  NAME/ENDPOINT"
    out: set[str] = set()
    for line in lines or []:
        head, _, rest = line.partition(":")
        if head.strip() == kind and rest.split() and not rest.strip().startswith("<"):
            out.add(rest.split()[0].split("/")[0])
    return out


async def verify_asterisk(client: AsteriskClient, policy: Policy, site: str, phones: Sequence[Phone] = (),
                          inventory_queues: Sequence[str] = ()) -> list[str]:
    """Every object the rendered files define, checked as loaded through AMI; the problems."""
    problems: list[str] = []
    trunks = [f"trunk-{t.name}" for t in policy.trunks(site)]
    peers = [f"ccdr-intersite-{p.id}" for p in policy.peers(site)]
    mine = [p.sip_username for p in phones if p.site == site]
    endpoints = _listed(await ami_output(client, "pjsip list endpoints"), "Endpoint")
    aors = _listed(await ami_output(client, "pjsip list aors"), "Aor")
    for name in trunks + peers + mine:
        if name not in endpoints:
            problems.append(f"pjsip endpoint {name} not loaded")
        if name not in aors:
            problems.append(f"pjsip aor {name} not loaded")
    idents = _listed(await ami_output(client, "pjsip list identifies"), "Identify")
    for t in policy.trunks(site):
        if t.trust and f"trunk-{t.name}" not in idents:
            problems.append(f"pjsip identify trunk-{t.name} not loaded")
    regs = " ".join(await ami_output(client, "pjsip list registrations") or [])
    for t in policy.trunks(site):
        if t.register and f"trunk-{t.name}" not in regs:
            problems.append(f"pjsip registration trunk-{t.name} not loaded")
    contexts = ["ccdr-in", "ccdr-route", "ccdr-queue", "ccdr-from-peer", "ccdr-out", "ccdr-phones"]
    contexts += [f"ccdr-did-{d.number}" for d in policy.dids]
    for ctx in contexts:
        if await ami_output(client, f"dialplan show {ctx}") is None:
            problems.append(f"dialplan context {ctx} not loaded")
    in_ctx = " ".join(await ami_output(client, "dialplan show ccdr-in") or [])
    for d in policy.dids:
        if f"'{d.number}'" not in in_ctx:
            problems.append(f"dialplan extension {d.number}@ccdr-in not loaded")
    for q in [q.name for q in policy.queues] + list(inventory_queues):
        out = await ami_output(client, f"queue show {q}")
        if out is None or any(line.startswith("No such queue") for line in out):
            problems.append(f"queue {q} not loaded")
    return problems


Verifier = Callable[[], Awaitable[list[str]]]


async def push_files(site: str, out: Path, files: Mapping[str, str],
                     apply: Callable[[], Awaitable[list[str]]], reapply: Callable[[], Awaitable[list[str]]]) -> None:
    """Write ``files`` into ``out``, then ``apply`` (reload, verify: its problems).

    Any problem puts the previous files back and runs ``reapply`` (the reload alone),
    then raises RenderError: a bad render must not leave a site without its routing."""
    previous: dict[str, str | bytes | None] = {
        name: (out / name).read_bytes() if (out / name).exists() else None for name in files
    }
    write_files(out, dict(files))
    problems = await apply()
    if not problems:
        return
    write_files(out, previous)
    restore_problems = await reapply()
    tail = f"; restoring failed too: {'; '.join(restore_problems)}" if restore_problems else ""
    raise RenderError(f"site {site}: reload failed ({'; '.join(problems)}); previous files restored{tail}")


async def _each(steps: Sequence[Callable[[], Awaitable[object]]], stop_at_first: bool) -> list[str]:
    problems: list[str] = []
    for step in steps:
        try:
            await step()
        except PbxCommandError as exc:
            problems.append(str(exc))
            if stop_at_first:
                break
    return problems


async def push_asterisk(client: AsteriskClient, out: Path, files: Mapping[str, str], verify: Verifier) -> None:
    """Write into the PBX's ccdr/ include dir, reload its modules through AMI, verify
    every object of ours is loaded; restore the previous files on any failure."""
    reloads = [lambda m=m: client.reload(m) for m in ASTERISK_MODULES]

    async def apply() -> list[str]:
        return await _each(reloads, stop_at_first=True) or await verify()

    await push_files(client.site, out, files, apply, lambda: _each(reloads, stop_at_first=False))


# After the XML is re-read, the external profile picks up new or changed gateways.
FREESWITCH_RELOAD = ("reloadxml", "sofia profile external rescan", "reload mod_callcenter")


async def push_freeswitch(client: FreeswitchClient, out: Path, files: Mapping[str, str]) -> None:
    """Write into FreeSWITCH's conf dir and reload through ESL (``reloadxml`` answers
    ``-ERR`` when a file does not parse); restore the previous files on any ``-ERR``."""
    steps = [lambda c=c: client.api(c) for c in FREESWITCH_RELOAD]
    await push_files(client.site, out, files, lambda: _each(steps, stop_at_first=True),
                     lambda: _each(steps, stop_at_first=False))


async def _with_fs_client(topo: Topology, site: str, work: Callable[[FreeswitchClient], Awaitable[None]]) -> None:
    s = topo.site(site)
    if s.esl is None:
        raise RenderError(f"site {site}: --push --target freeswitch needs a FreeSWITCH site with esl: in the topology")
    client = FreeswitchClient(site, tcp_connect(s.esl.host, s.esl.port), s.esl.password.reveal(f"sites[{site}].esl"),
                              topo.timings)
    await client.start()
    try:
        if client.state is not LinkState.UP:
            raise RenderError(f"site {site}: FreeSWITCH ESL link is {client.state.value}")
        await work(client)
    finally:
        await client.close()


async def _load_inventory(dsn: str, site: str) -> tuple[list[Phone], list[str]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT site, extension, sip_username, sip_password FROM device_lines "
                                "WHERE site = $1 ORDER BY extension", site)
        qrows = await conn.fetch("SELECT DISTINCT queue FROM skill_group_queues WHERE site = $1 ORDER BY queue",
                                 site)
    finally:
        await conn.close()
    phones = [Phone(r["site"], r["extension"], r["sip_username"], r["sip_password"]) for r in rows]
    return phones, [r["queue"] for r in qrows]


async def _with_client(topo: Topology, site: str, work: Callable[[AsteriskClient], Awaitable[None]]) -> None:
    s = topo.site(site)
    if s.ami is None:
        raise RenderError(f"site {site}: --push needs an Asterisk site with ami: in the topology")
    client = AsteriskClient(site, s.ami, topo.timings)
    await client.start()
    try:
        await client.wait_up(topo.timings.connect_timeout_s)
        await work(client)
    finally:
        await client.close()


@click.command()
@click.option("--policy", "policy_path", required=True, type=click.Path(dir_okay=False), help="Routing policy YAML.")
@click.option("--target", required=True, type=click.Choice(TARGETS))
@click.option("--site", default=None, help="Site to render for (not needed for kamailio).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory to write (for --push: the PBX's ccdr/ include directory).")
@click.option("--dsn", default=None, help="Load phones and queues from this inventory database.")
@click.option("--diff", "show_diff", is_flag=True, help="Show what would change in OUT; write nothing.")
@click.option("--from-pbx", is_flag=True,
              help="With --diff (asterisk): compare with what the site's Asterisk reads (AMI GetConfig).")
@click.option("--push", is_flag=True,
              help="Write, reload (AMI for Asterisk, ESL for FreeSWITCH), verify; restore the old files on failure.")
@topology_option
def render(policy_path: str, target: str, site: str | None, out: str, dsn: str | None, show_diff: bool,
           from_pbx: bool, push: bool, topology: str) -> None:
    """Render the routing policy for one PBX target into OUT."""
    try:
        if target != "kamailio" and not site:
            raise RenderError(f"--site is required for --target {target}")
        phones: list[Phone] = []
        queues: list[str] = []
        if dsn:
            phones, queues = asyncio.run(_load_inventory(dsn, site or ""))
        policy = load_policy(policy_path, inventory_queues=queues)
        check_queue_names(queues)
        check_phones(phones, [s.id for s in policy.sites])
        files = render_target(target, policy, site or "", phones, queues)
        outp = Path(out)
        if show_diff:
            if from_pbx:
                if target != "asterisk":
                    raise RenderError(f"--from-pbx: only --target asterisk is supported so far, not {target}")
                found: list[str] = []

                async def fetch(client: AsteriskClient) -> None:
                    found.append(await diff_pbx(client, files))

                asyncio.run(_with_client(load_topology(topology), site or "", fetch))
                text = found[0]
            else:
                text = diff_files(outp, files)
            click.echo(text, nl=False)
            sys.exit(1 if text else 0)
        if push and target == "freeswitch":
            async def fs_work(client: FreeswitchClient) -> None:
                await push_freeswitch(client, outp, files)

            asyncio.run(_with_fs_client(load_topology(topology), site or "", fs_work))
            click.echo(f"pushed {len(files)} files to {out} and reloaded site {site}")
            return
        if push:
            if target != "asterisk":
                raise RenderError(f"--push: not for --target {target} (Kamailio reloads its list with "
                                  "`kamcmd dispatcher.reload`)")
            sid = site or ""

            async def work(client: AsteriskClient) -> None:
                await push_asterisk(client, outp, files,
                                    lambda: verify_asterisk(client, policy, sid, phones, queues))

            asyncio.run(_with_client(load_topology(topology), sid, work))
            click.echo(f"pushed {len(files)} files to {out} and reloaded site {sid}")
            return
        write_files(outp, dict(files))
    except CcdrError as exc:
        click.echo(f"ccdr render: {exc}", err=True)
        sys.exit(2)
    click.echo(f"wrote {len(files)} files to {out}")
