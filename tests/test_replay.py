"""`ccdr lab replay` and the replay servers: a client sees the recorded answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from controlplane.pbx.asterisk import AsteriskClient
from controlplane.protocols.esl import EslParser, decode_event_plain, serialize_command
from controlplane.settings import AmiLink, SecretRef, Timings
from controlplane.testing.replay import AmiReplay, EslReplay, serve_once

FIX = Path(__file__).parent / "fixtures"


async def _serve(rep: AmiReplay | EslReplay) -> tuple[asyncio.Task[None], int]:
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_once(rep, "127.0.0.1", 0, ready))
    return task, await ready


async def test_ami_replay_answers_actions_by_actionid_from_the_trace() -> None:
    # panoramisk's queue_status fixture: the QueueStatus action, then its EventList.
    rep = AmiReplay((FIX / "ami" / "tests__fixtures__queue_status.yaml").read_bytes())
    task, port = await _serve(rep)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    from controlplane.protocols.ami import AmiParser, serialize_action

    writer.write(serialize_action("QueueStatus", [("ActionID", "mine-1")]))
    await writer.drain()
    p = AmiParser()
    frames = []
    while not any(f.get("Event") == "QueueStatusComplete" for f in frames):
        frames += p.feed(await asyncio.wait_for(reader.read(65536), 2))
    assert p.banner is not None and p.banner.startswith("Asterisk Call Manager/")
    assert frames[0]["Response"] == "Success"
    assert all(f.get("ActionID") == "mine-1" for f in frames)  # rewritten to the client's
    assert sum(1 for f in frames if f.get("Event") == "QueueMember") >= 1
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(task, 2)
    assert rep.served[0]["ActionID"] == "mine-1"


async def test_ami_replay_drives_the_adapter() -> None:
    # Two panoramisk recordings that both used ActionID .../1/1: give the second its own.
    qs = (FIX / "ami" / "tests__fixtures__queue_status.yaml").read_bytes()
    rep = AmiReplay((FIX / "ami" / "tests__fixtures__login_ok.yaml").read_bytes()
                    + qs.replace(b"action/transaction_uid/1/1", b"recorded-qs"))
    task, port = await _serve(rep)
    link = AmiLink("127.0.0.1", port, "user", SecretRef(env="X"))
    c = AsteriskClient("r", link, Timings(probe_interval_s=30), secret="pw")
    await c.start()
    for _ in range(100):  # the reconcile after login reads the recorded QueueStatus
        if c.members:
            break
        await asyncio.sleep(0.01)
    assert c.members and all(m.interface for q in c.members.values() for m in q.values())
    actions = [f["Action"] for f in rep.served]
    assert actions.count("Login") == 2 and "QueueStatus" in actions  # the link, and PJSIPShowContacts aside
    await c.close()
    await asyncio.wait_for(task, 2)


async def test_esl_replay_serves_auth_reply_and_events() -> None:
    rep = EslReplay((FIX / "esl" / "tests__data__eventstream.txt").read_bytes())
    task, port = await _serve(rep)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    p = EslParser()
    got = p.feed(await asyncio.wait_for(reader.read(65536), 2))
    assert got[0]["Content-Type"] == "auth/request"
    writer.write(serialize_command("auth ClueCon"))
    await writer.drain()
    while len(got) < 2:
        got += p.feed(await asyncio.wait_for(reader.read(65536), 2))
    assert got[1]["Reply-Text"] == "+OK accepted"
    writer.write(serialize_command("exit"))
    await writer.drain()
    while not any(f.get("Content-Type") == "text/event-plain" for f in got):
        got += p.feed(await asyncio.wait_for(reader.read(65536), 2))
    ev = decode_event_plain(next(f for f in got if f.get("Content-Type") == "text/event-plain"))
    assert ev["Event-Name"] == "CHANNEL_CREATE"
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(task, 2)
    assert rep.served == ["auth ClueCon", "exit"]
