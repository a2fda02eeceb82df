"""The FreeSWITCH ESL client against the fake server (loopback, port 0, small timings)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controlplane.errors import LinkLost, PbxCommandError, ProtocolError
from controlplane.pbx.base import EventKind, LinkState, PbxEvent
from controlplane.pbx.freeswitch import FreeswitchClient, tcp_connect
from controlplane.settings import Backoff, Timings
from controlplane.testing.fake_freeswitch import FakeFreeswitch, event_json, event_plain

FAST = Timings(
    probe_interval_s=0.05,
    probe_timeout_s=0.1,
    connect_timeout_s=1.0,
    command_timeout_s=1.0,
    reconnect=Backoff(initial_s=0.01, max_s=0.05, jitter=0.0),
)
WAIT = 3.0  # upper bound for awaited events; tests finish as soon as they happen


@pytest.fixture
async def fake() -> AsyncIterator[FakeFreeswitch]:
    f = FakeFreeswitch(password="s3cret")
    await f.start()
    yield f
    await f.stop()


async def _client(
    fake: FakeFreeswitch, password: str = "s3cret", fmt: str = "plain"
) -> FreeswitchClient:
    c = FreeswitchClient("fs-a", tcp_connect("127.0.0.1", fake.port), password, FAST,
                         event_format=fmt)
    await c.start()
    return c


async def _next(q: asyncio.Queue[PbxEvent], kind: EventKind) -> PbxEvent:
    async def loop() -> PbxEvent:
        while True:
            ev = await q.get()
            if ev.kind is kind:
                return ev
    return await asyncio.wait_for(loop(), WAIT)


async def test_auth_ok_subscribes_and_reads_state(fake: FakeFreeswitch) -> None:
    c = await _client(fake)
    try:
        assert c.state is LinkState.UP
        assert fake.commands[:5] == [
            "auth s3cret",
            "event plain BACKGROUND_JOB CUSTOM sofia::register sofia::unregister "
            "sofia::expire callcenter::info",
            "api callcenter_config tier list",
            "api callcenter_config agent list",
            "api show registrations",
        ]
        (m,) = c.members
        assert (m.queue, m.interface, m.penalty, m.paused, m.status) == (
            "sales@default", "1001", 0, False, "Waiting")
        (reg,) = c.registrations
        assert reg.endpoint == "1001@example.org"
        assert reg.uri == "sofia/internal/sip:1001@10.0.0.5:5060"
    finally:
        await c.close()


async def test_bad_password_is_auth_failed_without_retry(fake: FakeFreeswitch) -> None:
    c = FreeswitchClient("fs-a", tcp_connect("127.0.0.1", fake.port), "wrong", FAST)
    q = c.events().queue
    await c.start()
    try:
        assert c.state is LinkState.AUTH_FAILED
        ev = await _next(q, EventKind.PBX_AUTH_FAILED)
        assert "wrong" not in repr(ev)
        await asyncio.sleep(0.1)  # several backoff periods: no silent retry
        assert fake.connections == 1
    finally:
        await c.close()


async def test_api_commands_exact_and_pipelined(fake: FakeFreeswitch) -> None:
    c = await _client(fake)
    try:
        n = len(fake.commands)
        fake.api_answers["callcenter_config tier add sales@default 1002 3 1"] = "+OK\n"
        fake.api_answers["callcenter_config tier del sales@default 1002"] = "+OK\n"
        fake.api_answers["callcenter_config agent set status 1002 'On Break'"] = "+OK\n"
        await asyncio.gather(
            c.queue_add("sales@default", "1002", penalty=2),
            c.queue_remove("sales@default", "1002"),
            c.queue_pause("sales@default", "1002", True),
            c.api("status"),
        )
        cmds = [x for x in fake.commands[n:] if x != "api status"]
        assert cmds == [
            "api callcenter_config tier add sales@default 1002 3 1",
            "api callcenter_config tier del sales@default 1002",
            "api callcenter_config agent set status 1002 'On Break'",
        ]
        with pytest.raises(PbxCommandError, match="command not found"):
            await c.api("no_such_thing")
        with pytest.raises(ProtocolError, match="interface must be one word"):
            await c.queue_remove("sales", "1002 bad")
    finally:
        await c.close()


async def test_bgapi_matched_by_job_uuid(fake: FakeFreeswitch) -> None:
    c = await _client(fake)
    try:
        ev = await asyncio.wait_for(c.bgapi("originate user/1001 &park()"), WAIT)
        assert ev["Event-Name"] == "BACKGROUND_JOB"
        assert ev.body.startswith("+OK ")
        assert "bgapi originate user/1001 &park()" in fake.commands
    finally:
        await c.close()


@pytest.mark.parametrize("fmt", ["plain", "json"])
async def test_events_normalized(fake: FakeFreeswitch, fmt: str) -> None:
    c = await _client(fake, fmt=fmt)
    q = c.events().queue
    make = event_plain if fmt == "plain" else event_json
    try:
        assert fake.event_format == fmt
        await fake.push(make([
            ("Event-Name", "CUSTOM"), ("Event-Subclass", "sofia::register"),
            ("profile-name", "internal"), ("username", "1001"), ("from-host", "example.org"),
            ("contact", "\"1001\" <sip:1001@10.0.0.5:5060>"),
        ]))
        ev = await _next(q, EventKind.PHONE_REGISTERED)
        assert ev.data["endpoint"] == "1001@example.org"
        assert ev.data["contact"] == "\"1001\" <sip:1001@10.0.0.5:5060>"
        assert ev.raw is not None and ev.raw["Event-Subclass"] == "sofia::register"
        await fake.push(make([
            ("Event-Name", "CUSTOM"), ("Event-Subclass", "sofia::expire"),
            ("username", "1001"), ("from-host", "example.org"),
        ]))
        ev = await _next(q, EventKind.PHONE_UNREGISTERED)
        assert ev.data["reason"] == "expire"
        await fake.push(make([
            ("Event-Name", "CUSTOM"), ("Event-Subclass", "callcenter::info"),
            ("CC-Action", "agent-status-change"), ("CC-Agent", "1001"),
            ("CC-Agent-Status", "On Break"),
        ]))
        ev = await _next(q, EventKind.QUEUE_MEMBER_PAUSED)
        assert ev.data == {"interface": "1001", "action": "agent-status-change",
                           "status": "On Break", "paused": True}
    finally:
        await c.close()


async def test_disconnect_notice_reconnects_and_rereads(fake: FakeFreeswitch) -> None:
    c = await _client(fake)
    q = c.events().queue
    try:
        fake.authed.clear()
        await fake.disconnect()
        await _next(q, EventKind.PBX_DOWN)
        await _next(q, EventKind.PBX_UP)
        assert c.state is LinkState.UP
        # the first, the check that the port still accepts (it does: not killed), the new one
        assert fake.connections == 3
        assert fake.commands.count("api callcenter_config tier list") == 2
        assert fake.commands.count("auth s3cret") == 2
    finally:
        await c.close()


async def test_long_lived_link_is_retried_at_once_when_it_drops_a_young_one_backs_off(
        fake: FakeFreeswitch) -> None:
    t = dataclasses.replace(FAST, reconnect=Backoff(initial_s=5.0, max_s=5.0, jitter=0.0),
                            reconnect_at_once_after_s=0.2)
    c = FreeswitchClient("fs-a", tcp_connect("127.0.0.1", fake.port), "s3cret", t)
    await c.start()
    q = c.events().queue
    try:
        await asyncio.sleep(0.3)  # up longer than reconnect_at_once_after_s
        await fake.disconnect()
        await _next(q, EventKind.PBX_DOWN)
        await _next(q, EventKind.PBX_UP)  # within WAIT (3 s), not the backoff's 5 s
        await fake.disconnect()  # up for less: the backoff
        await _next(q, EventKind.PBX_DOWN)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_next(q, EventKind.PBX_UP), 1.0)
    finally:
        await c.close()


async def test_killed_server_is_refused_a_disconnect_notice_is_not(fake: FakeFreeswitch) -> None:
    c = await _client(fake)
    q = c.events().queue
    try:
        await fake.disconnect()  # goodbye, still listening
        ev = await _next(q, EventKind.PBX_DOWN)
        assert ev.data["refused"] is False
        await _next(q, EventKind.PBX_UP)
        await fake.stop()  # killed: the links close and the port refuses
        ev = await _next(q, EventKind.PBX_DOWN)
        assert ev.data["refused"] is True and c.refused
    finally:
        await c.close()


async def test_a_killed_server_whose_listener_still_accepts_is_refused(fake: FakeFreeswitch) -> None:
    c = await _client(fake)
    q = c.events().queue
    try:
        fake.dying = True  # the knock is accepted, then closed before auth/request
        await fake.disconnect()
        ev = await _next(q, EventKind.PBX_DOWN)
        assert ev.data["refused"] is True and c.refused
    finally:
        await c.close()


async def test_silent_server_goes_unreachable_and_inflight_fails(
    fake: FakeFreeswitch,
) -> None:
    c = await _client(fake)
    q = c.events().queue
    try:
        fake.silent = True  # TCP stays open, nothing answers
        inflight = asyncio.create_task(c.api("status"))
        ev = await _next(q, EventKind.PBX_DOWN)
        assert ev.data["reason"] == "PbxUnreachable"
        with pytest.raises(LinkLost):
            await asyncio.wait_for(inflight, WAIT)
        assert c.state in (LinkState.UNREACHABLE, LinkState.CONNECTING)
    finally:
        await c.close()


# -- driven by the recorded traces (tests/fixtures/esl, provenance in PROVENANCE.tsv) ------

FIX = __import__("pathlib").Path(__file__).parent / "fixtures" / "esl"


async def test_recorded_session_auth_then_disconnect_notice() -> None:
    """tests__data__eventstream.txt: auth/request, +OK accepted, +OK, then a real
    text/disconnect-notice: the client authenticates with exactly our command, and the
    notice takes the link down (PBX_DOWN), never leaving it UP."""
    from controlplane.testing.replay import EslReplay, serve_once

    rep = EslReplay((FIX / "tests__data__eventstream.txt").read_bytes())
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve_once(rep, "127.0.0.1", 0, ready))
    port = await ready
    c = FreeswitchClient("fs-a", tcp_connect("127.0.0.1", port), "ClueCon", FAST)
    q = c.events().queue
    await c.start()
    try:
        await _next(q, EventKind.PBX_DOWN)
        assert rep.served[:2] == [
            "auth ClueCon",
            "event plain BACKGROUND_JOB CUSTOM sofia::register sofia::unregister "
            "sofia::expire callcenter::info",
        ]
        assert c.state is not LinkState.UP
    finally:
        await c.close()
        server.cancel()
        with __import__("contextlib").suppress(asyncio.CancelledError):
            await server


async def test_recorded_frames_pass_through_without_dropping_the_link(fake: FakeFreeswitch) -> None:
    """Every frame of the real traces pushed at a live client: events we do not
    normalize are ignored, real BACKGROUND_JOB events with unknown Job-UUIDs are
    dropped, and the link stays up (a probe still answers)."""
    from controlplane.protocols.esl import parse_esl

    c = await _client(fake)
    try:
        for name in ("tests__data__eventstream2.txt", "cgrates-fsock__test_data.txt"):
            for f in parse_esl((FIX / name).read_bytes())[0]:
                if (f.get("Content-Type") or "") != "text/event-plain":
                    continue
                body = f.body.encode()
                await fake.push(b"Content-Type: text/event-plain\nContent-Length: %d\n\n" % len(body) + body)
        assert await asyncio.wait_for(c.ping(), WAIT) >= 0
        assert c.state is LinkState.UP
    finally:
        await c.close()


async def test_render_push_to_freeswitch_reloads_and_restores_on_error(fake: FakeFreeswitch, tmp_path: Any) -> None:
    """`ccdr render --push --target freeswitch`: files written, reloadxml and friends sent
    through ESL; a -ERR from reloadxml puts the previous files back and reloads again."""
    from controlplane.cli.render import push_freeswitch
    from controlplane.errors import RenderError

    fake.api_answers.update({"reloadxml": "+OK [Success]\n", "sofia profile external rescan": "+OK scan\n",
                             "reload mod_callcenter": "+OK Reloading XML\n"})
    (tmp_path / "dialplan").mkdir()
    (tmp_path / "dialplan" / "ccdr.xml").write_text("<old/>")
    c = await _client(fake)
    try:
        await push_freeswitch(c, tmp_path, {"dialplan/ccdr.xml": "<new/>"})
        assert (tmp_path / "dialplan" / "ccdr.xml").read_text() == "<new/>"
        assert fake.commands[-3:] == ["api reloadxml", "api sofia profile external rescan",
                                      "api reload mod_callcenter"]
        fake.api_answers["reloadxml"] = "-ERR [dialplan/ccdr.xml:1 parse error]\n"
        with pytest.raises(RenderError, match="previous files restored"):
            await push_freeswitch(c, tmp_path, {"dialplan/ccdr.xml": "<broken", "directory/ccdr.xml": "<x/>"})
        assert (tmp_path / "dialplan" / "ccdr.xml").read_text() == "<new/>"
        assert not (tmp_path / "directory" / "ccdr.xml").exists()  # a file that was not there is removed again
    finally:
        await c.close()
