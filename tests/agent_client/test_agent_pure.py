"""The agent client without servers: its timing policy on a fake clock (probes, the failure
detector, backoff) and its side of a move over the session channel."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from types import SimpleNamespace
from typing import Any

import aiohttp

from agent_client.agent import (
    Agent,
    AgentState,
    AgentTimings,
    Backoff,
    FailureDetector,
    ProbeSchedule,
    Signal,
    _Session,
)
from agent_client.sip.ua import LineEvent, LineEventKind

T = AgentTimings()


def probes_sent(schedule: ProbeSchedule, start: float, end: float, step: float = 0.01) -> list[float]:
    sent, now = [], start
    while now < end:
        if schedule.take(now):
            sent.append(now)
        now += step
    return sent


def test_steady_probes_are_jittered_within_half_to_one_interval() -> None:
    s = ProbeSchedule(T, random.Random(1), 0.0)
    sent = probes_sent(s, 0.0, 300.0)
    # The first one too: not all at once when a thousand agents become ready together.
    assert T.sip_probe_interval_s * 0.5 - 0.02 <= sent[0] <= T.sip_probe_interval_s + 0.02
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= T.sip_probe_interval_s * 0.5 - 0.02
    assert max(gaps) <= T.sip_probe_interval_s + 0.02
    assert len(set(round(g, 1) for g in gaps)) > 5  # spread, not one fixed beat


def test_a_failing_signal_probes_at_once_then_fast_for_the_burst_only() -> None:
    s = ProbeSchedule(T, random.Random(1), 0.0)
    probes_sent(s, 0.0, 10.0)
    s.failing(frozenset({Signal.SIP_PROBE}), 10.0)  # and it keeps failing for a minute
    burst = probes_sent(s, 10.0, 10.0 + T.suspect_burst_s)
    assert burst[0] == 10.0  # at once: the active confirmation
    assert len(burst) >= T.suspect_burst_s / T.suspect_probe_interval_s - 1
    after = probes_sent(s, 10.0 + T.suspect_burst_s, 70.0)
    # Unbounded, this was 4 probes a second per agent for as long as the signal failed
    # (240 here); bounded, the steady rate: at most one per half interval.
    assert len(after) <= 60 / (T.sip_probe_interval_s * 0.5) + 1


def test_only_a_newly_failing_signal_restarts_the_burst() -> None:
    s = ProbeSchedule(T, random.Random(1), 0.0)
    s.failing(frozenset({Signal.SIP_PROBE}), 0.0)
    probes_sent(s, 0.0, 5.0)
    s.failing(frozenset({Signal.SIP_PROBE, Signal.PBX_STATE}), 5.0)  # a second signal joins
    assert s.take(5.0)
    assert len(probes_sent(s, 5.0, 5.0 + T.suspect_burst_s)) >= 6
    s.failing(frozenset({Signal.SIP_PROBE}), 8.0)  # one clears: no new burst
    assert len(probes_sent(s, 8.0, 10.0)) <= 1


def test_detector_reports_changes_and_when_it_will_confirm() -> None:
    now = [0.0]
    changes: list[int] = []
    d = FailureDetector(1.0, lambda: now[0], on_change=lambda: changes.append(1))
    assert d.confirm_at() == float("inf")
    d.fail(Signal.SIP_PROBE)
    d.fail(Signal.SIP_PROBE)  # again: no change
    assert len(changes) == 1
    now[0] = 0.4
    d.fail(Signal.PBX_STATE)
    assert d.confirm_at() == 1.4 and not d.confirmed()
    now[0] = 1.4
    assert d.confirmed()
    d.ok(Signal.PBX_STATE)
    d.ok(Signal.PBX_STATE)  # again: no change
    assert len(changes) == 3 and d.confirm_at() == float("inf")


def test_a_certain_signal_confirms_without_the_hold_but_still_needs_a_second_one() -> None:
    now = [0.0]
    changes: list[int] = []
    d = FailureDetector(1.0, lambda: now[0], on_change=lambda: changes.append(1))
    d.fail(Signal.PBX_STATE, certain=True)  # the service found the PBX's port refusing
    assert d.confirm_at() == float("inf") and not d.confirmed()  # one signal moves nobody
    now[0] = 0.5
    d.fail(Signal.SIP_PROBE)  # the agent's own probe agrees
    assert d.confirm_at() == 0.5 and d.confirmed()
    d.ok(Signal.PBX_STATE)
    assert not d.certain and d.confirm_at() == float("inf")
    # Failing first without certainty, then with it: the hold is dropped (and said so).
    d.fail(Signal.PBX_STATE)
    assert d.confirm_at() == 1.5
    n = len(changes)
    d.fail(Signal.PBX_STATE, certain=True)
    assert d.confirm_at() == 0.5 and len(changes) == n + 1
    d.fail(Signal.PBX_STATE)  # a later, uncertain report (it answers connections again)
    assert d.confirm_at() == 1.5
    d.reset()
    assert not d.certain


async def test_a_refused_pbx_push_is_certain_a_silent_one_is_not() -> None:
    ch = _Channel()
    agent = Agent("u1", "pw", "00:11:22:33:44:55", ["http://a", "http://b"], None, None)  # type: ignore[arg-type]
    sess = _Session("http://a", _line("a", "2001"), ws=ch)  # type: ignore[arg-type]
    agent.session = sess
    reader = asyncio.create_task(agent._read_channel(sess, ch))  # type: ignore[arg-type]
    ch.q.put_nowait({"type": "pbx", "site": "a", "state": "unreachable", "refused": False})
    await asyncio.sleep(0.01)
    assert Signal.PBX_STATE in agent.detector.failing and not agent.detector.certain
    ch.q.put_nowait({"type": "pbx", "site": "a", "state": "unreachable", "refused": True})
    await asyncio.sleep(0.01)
    assert agent.detector.certain == {Signal.PBX_STATE}
    ch.q.put_nowait({"type": "pbx", "site": "a", "state": "up", "refused": False})
    await asyncio.sleep(0.01)
    assert not agent.detector.failing and not agent.detector.certain
    ch.q.put_nowait(None)
    await reader


async def test_a_pbx_down_push_sends_the_probe_at_once_and_its_answer_confirms() -> None:
    """The push's reader asks the SIP probe itself (no pass through the watch loop between);
    the probe's ICMP "unreachable" is read in a callback and, with the refused push, confirms."""
    from agent_client.sip.transport import SipUnreachable

    ch = _Channel()
    agent = Agent("u1", "pw", "00:11:22:33:44:55", ["http://a", "http://b"], None, None)  # type: ignore[arg-type]
    sess = _Session("http://a", _line("a", "2001"), ws=ch)  # type: ignore[arg-type]
    agent.session, agent.state = sess, AgentState.READY
    probes: list[asyncio.Future[Any]] = []

    def send_probe(limit_s: float, on_done: Any) -> asyncio.Future[Any]:
        # As the transport does: on_done as soon as the future is settled, not a pass later.
        probes.append(asyncio.get_running_loop().create_future())
        probes[-1].add_done_callback(lambda f: None)
        settle[probes[-1]] = on_done
        return probes[-1]

    settle: dict[asyncio.Future[Any], Any] = {}

    def fail(fut: asyncio.Future[Any], exc: Exception) -> None:
        fut.set_exception(exc)
        settle[fut](fut)

    agent.line = SimpleNamespace(registrar=("10.0.0.1", 5060), send_probe=send_probe)  # type: ignore[assignment]
    reader = asyncio.create_task(agent._read_channel(sess, ch))  # type: ignore[arg-type]
    ch.q.put_nowait({"type": "pbx", "site": "a", "state": "unreachable", "refused": True})
    await asyncio.sleep(0.01)
    assert len(probes) == 1 and not agent.detector.confirmed()
    # SUSPECT at once; the watch loop is not woken for one signal: the probe's outcome will
    assert agent.state is AgentState.SUSPECT and not agent._wake.is_set()
    ch.q.put_nowait({"type": "pbx", "site": "a", "state": "unreachable", "refused": True})
    await asyncio.sleep(0.01)
    assert len(probes) == 1  # one probe at a time
    assert not agent._wake.is_set()
    fail(probes[0], SipUnreachable("OPTIONS to 10.0.0.1:5060: Connection refused (ICMP)"))
    # at once, in the call that settled the probe: no pass of the loop in between
    assert Signal.SIP_PROBE in agent.detector.failing and agent.detector.confirmed()
    assert agent._wake.is_set()
    agent.state = AgentState.MOVING  # no probes once moving
    ch.q.put_nowait({"type": "pbx", "site": "a", "state": "unreachable", "refused": True})
    await asyncio.sleep(0.01)
    assert len(probes) == 1
    # A probe's late outcome about the line the agent has left is not about the new one.
    agent.state, old_line = AgentState.READY, agent.line
    agent._probe()
    agent.detector.reset()
    agent.line = SimpleNamespace(registrar=("10.0.0.2", 5060), send_probe=send_probe)  # type: ignore[assignment]
    assert len(probes) == 2 and old_line is not agent.line
    fail(probes[1], SipUnreachable("OPTIONS to 10.0.0.1:5060: Connection refused (ICMP)"))
    assert not agent.detector.failing
    ch.q.put_nowait(None)
    await reader


async def test_a_pbx_down_push_wakes_the_watch_loop_itself_when_no_probe_can_answer_for_it() -> None:
    """No line to probe (or a closed transport): the push's change wakes the watch loop at
    once, as every other change does; so does a push that completes a confirmation."""
    ch = _Channel()
    agent = Agent("u1", "pw", "00:11:22:33:44:55", ["http://a", "http://b"], None, None)  # type: ignore[arg-type]
    sess = _Session("http://a", _line("a", "2001"), ws=ch)  # type: ignore[arg-type]
    agent.session, agent.state = sess, AgentState.READY
    reader = asyncio.create_task(agent._read_channel(sess, ch))  # type: ignore[arg-type]
    ch.q.put_nowait({"type": "pbx", "site": "a", "state": "unreachable", "refused": True})
    await asyncio.sleep(0.01)
    assert Signal.PBX_STATE in agent.detector.failing and agent._wake.is_set()
    # A probe under way, a second signal failing already: the push confirms; no waiting
    # for the probe then.
    agent._wake.clear()
    agent.detector.reset()
    agent.line = SimpleNamespace(registrar=("10.0.0.1", 5060),  # type: ignore[assignment]
                                 send_probe=lambda limit_s, on_done: asyncio.get_running_loop().create_future())
    assert agent._probe()
    agent.detector.fail(Signal.SIP_PROBE)
    agent._wake.clear()
    ch.q.put_nowait({"type": "pbx", "site": "a", "state": "unreachable", "refused": True})
    await asyncio.sleep(0.01)
    assert agent.detector.confirmed() and agent._wake.is_set()
    ch.q.put_nowait(None)
    await reader


async def test_the_signal_that_confirms_moves_the_agent_at_once_and_ends_the_watch() -> None:
    """MOVING is stamped by the signal that confirms (here the probe's ICMP error after a
    refused push), in the call that delivers it, before the watch loop's next pass; the
    loop then ends with that reason. Two uncertain signals wait out the hold in the loop."""
    from agent_client.sip.transport import SipTimeout, SipUnreachable

    for certain in (True, False):
        ch = _Channel()
        agent = Agent("u1", "pw", "00:11:22:33:44:55", ["http://a", "http://b"], None, None,  # type: ignore[arg-type]
                      timings=AgentTimings(confirm_hold_s=0.05))
        sess = _Session("http://a", _line("a", "2001"), ws=ch, last_server_hb=agent.clock())  # type: ignore[arg-type]
        agent.session, agent.state = sess, AgentState.READY
        probes: list[tuple[asyncio.Future[Any], Any]] = []

        def send_probe(limit_s: float, on_done: Any,
                       probes: list[tuple[asyncio.Future[Any], Any]] = probes) -> asyncio.Future[Any]:
            probes.append((asyncio.get_running_loop().create_future(), on_done))
            return probes[-1][0]

        agent.line = SimpleNamespace(registrar=("10.0.0.1", 5060), send_probe=send_probe)  # type: ignore[assignment]
        watch = asyncio.create_task(agent._watch(sess))
        reader = asyncio.create_task(agent._read_channel(sess, ch))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        ch.q.put_nowait({"type": "pbx", "site": "a", "state": "unreachable", "refused": certain})
        await asyncio.sleep(0.01)
        assert agent.state is AgentState.SUSPECT and len(probes) == 1
        fut, on_done = probes[0]
        fut.set_exception(SipUnreachable("ICMP") if certain else SipTimeout("silence"))
        on_done(fut)
        if certain:
            assert agent.state is AgentState.MOVING and not watch.done()
            assert agent.events[-1].detail == "confirmed: pbx_state, sip_probe"
        else:
            assert agent.state is AgentState.SUSPECT  # the hold runs
        assert await asyncio.wait_for(watch, 1) == "confirmed: pbx_state, sip_probe"
        assert [e.state for e in agent.events] == [AgentState.SUSPECT] + [AgentState.MOVING] * certain
        ch.q.put_nowait(None)
        await reader


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    b = Backoff(1.0, 30.0, random.Random(3))
    delays = [b.next() for _ in range(8)]
    for k, d in enumerate(delays):
        full = min(30.0, 2.0**k)
        assert full * 0.5 <= d <= full, (k, d)
    assert len({round(d, 3) for d in delays}) == 8  # jittered, not a fixed beat
    b.reset()
    assert 0.5 <= b.next() <= 1.0


class _Channel:
    """A session channel whose service answers a move with "moved" and, in the same read,
    the new site's CTI push (the phone was registered there before the move was served)."""

    def __init__(self, *answer: dict[str, Any]) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = False
        self.answer = answer
        self.q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def send_json(self, data: dict[str, Any]) -> None:
        self.sent.append(data)
        if data["type"] == "move":
            for m in self.answer:
                self.q.put_nowait(m)

    async def send_str(self, text: str) -> None:
        await self.send_json(json.loads(text))

    def __aiter__(self) -> _Channel:
        return self

    async def __anext__(self) -> Any:
        m = await self.q.get()
        if m is None:
            raise StopAsyncIteration
        return SimpleNamespace(type=aiohttp.WSMsgType.TEXT, data=json.dumps(m))


def _line(site: str, ext: str) -> dict[str, Any]:
    return {"site": site, "extension": ext, "registrar": {"host": f"10.0.0.{ord(site)}", "port": 5060},
            "sip": {"username": ext, "password": "pw"}}


async def test_a_move_answer_and_the_cti_push_right_behind_it_are_both_kept() -> None:
    moved = {"type": "moved", "session": {**_line("b", "3001"), "session_id": "s", "token": "t"}}
    ch = _Channel(moved, {"type": "cti", "state": "registered", "site": "b"})
    agent = Agent("u1", "pw", "00:11:22:33:44:55", ["http://a", "http://b"], None, None)  # type: ignore[arg-type]
    sess = _Session("http://a", {**_line("a", "2001"), "other_lines": [_line("b", "3001")]}, ws=ch)  # type: ignore[arg-type]
    agent._learn(sess.body)
    reader = asyncio.create_task(agent._read_channel(sess, ch))  # type: ignore[arg-type]
    assert await agent._move_in_channel(sess)
    assert ch.sent == [{"type": "move", "away_from": "a"}]
    assert (sess.site, sess.how, agent.site) == ("b", "move in channel", "b")
    assert sess.cti.is_set()  # the push was read as b's, not dropped as a's
    assert list(agent.lines) == ["a", "b"] and agent.lines["b"]["extension"] == "3001"
    ch.q.put_nowait(None)
    await reader


async def test_a_refused_move_in_the_channel_leaves_the_session_where_it_was() -> None:
    ch = _Channel({"type": "move_refused", "code": "busy"})
    agent = Agent("u1", "pw", "00:11:22:33:44:55", ["http://a", "http://b"], None, None)  # type: ignore[arg-type]
    sess = _Session("http://a", _line("a", "2001"), ws=ch)  # type: ignore[arg-type]
    reader = asyncio.create_task(agent._read_channel(sess, ch))  # type: ignore[arg-type]
    assert not await agent._move_in_channel(sess)
    assert sess.site == "a" and agent.events[-1].detail == "move in channel: busy"
    ch.q.put_nowait(None)
    await reader


class _SlowChannel(_Channel):
    """A busy service: it answers the move ``after`` seconds late, sending heartbeats
    every ``hb`` seconds meanwhile (or nothing if ``hb`` is None)."""

    def __init__(self, after: float, hb: float | None, *answer: dict[str, Any]) -> None:
        super().__init__(*answer)
        self.after, self.hb = after, hb

    async def send_json(self, data: dict[str, Any]) -> None:
        self.sent.append(data)
        if data["type"] == "move":
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        t = 0.0
        while self.hb is not None and t + self.hb < self.after:
            await asyncio.sleep(self.hb)
            t += self.hb
            self.q.put_nowait({"type": "heartbeat"})
        await asyncio.sleep(self.after - t)
        for m in self.answer:
            self.q.put_nowait(m)


def _slow_move(after: float, hb: float | None) -> tuple[Agent, _Session, _SlowChannel]:
    moved = {"type": "moved", "session": {**_line("b", "3001"), "session_id": "s", "token": "t"}}
    ch = _SlowChannel(after, hb, moved)
    timings = AgentTimings(login_timeout_s=0.1, move_timeout_s=2.0, heartbeat_misses=2.5)
    agent = Agent("u1", "pw", "00:11:22:33:44:55", ["http://a", "http://b"], None, None,  # type: ignore[arg-type]
                  timings=timings)
    body = {**_line("a", "2001"), "timings": {"heartbeat_s": 0.05}}
    sess = _Session("http://a", body, ws=ch, last_server_hb=agent.clock())  # type: ignore[arg-type]
    return agent, sess, ch


async def test_a_move_over_a_live_channel_waits_for_a_busy_service() -> None:
    """Answered after 0.5 s (five times the login timeout) while heartbeats still come:
    the client waits instead of asking the other site too."""
    agent, sess, ch = _slow_move(0.5, 0.05)
    reader = asyncio.create_task(agent._read_channel(sess, ch))  # type: ignore[arg-type]
    assert await agent._move_in_channel(sess)
    assert sess.site == "b"
    ch.q.put_nowait(None)
    await reader


async def test_a_move_over_a_silent_channel_gives_up_when_heartbeats_stop() -> None:
    agent, sess, ch = _slow_move(1.0, None)  # no heartbeat: silent beyond 2.5 x 0.05 s
    reader = asyncio.create_task(agent._read_channel(sess, ch))  # type: ignore[arg-type]
    t0 = agent.clock()
    assert not await agent._move_in_channel(sess)
    assert agent.clock() - t0 < 0.5 and agent.events[-1].detail == "move in channel: TimeoutError"
    ch.q.put_nowait(None)
    await reader


async def test_a_move_over_a_channel_that_closes_gives_up_at_once() -> None:
    agent, sess, ch = _slow_move(5.0, 0.05)
    reader = asyncio.create_task(agent._read_channel(sess, ch))  # type: ignore[arg-type]
    asyncio.get_running_loop().call_later(0.1, ch.q.put_nowait, None)  # the service closes it
    t0 = agent.clock()
    assert not await agent._move_in_channel(sess)
    assert agent.clock() - t0 < 0.5 and agent.events[-1].detail == "move in channel: ConnectionError"
    await reader


def test_a_failing_probe_looks_for_the_registrars_return_with_a_short_timeout() -> None:
    """Found gone with the full timeout; looked for back with a short one, shorter than the
    suspicion interval, so a 1 s blip never keeps the probe failing for the whole hold."""
    agent = Agent("u1", "pw", "00:11:22:33:44:55", ["http://a"], None, None)  # type: ignore[arg-type]
    t = agent.timings
    assert agent.probe_timeout() == t.sip_probe_timeout_s
    agent.detector.fail(Signal.SIP_PROBE)
    assert agent.probe_timeout() == t.sip_recovery_probe_timeout_s < t.suspect_probe_interval_s
    # The longest a cut of 1.05 s keeps the probe failing, from its first timeout to the first
    # answer after the cut: the cut, minus the full timeout, plus one suspicion interval.
    assert 1.05 - t.sip_probe_timeout_s + t.suspect_probe_interval_s < t.confirm_hold_s
    agent.detector.ok(Signal.SIP_PROBE)
    assert agent.probe_timeout() == t.sip_probe_timeout_s


def test_a_line_event_about_a_registrar_the_line_left_is_ignored() -> None:
    agent = Agent("u1", "pw", "00:11:22:33:44:55", ["http://a"], None, None)  # type: ignore[arg-type]
    agent.state = AgentState.READY
    agent.line = SimpleNamespace(registrar=("10.0.0.98", 5060))  # type: ignore[assignment]
    agent._on_line(LineEvent(LineEventKind.REGISTRATION_FAILED, 0.0, ("10.0.0.97", 5060), "timeout"))
    assert not agent.detector.failing
    agent._on_line(LineEvent(LineEventKind.REGISTRATION_FAILED, 0.0, ("10.0.0.98", 5060), "timeout"))
    assert Signal.REGISTRATION in agent.detector.failing


def _awaiting_cti(hb: float) -> tuple[Agent, _Session, _Channel]:
    ch = _Channel()
    timings = AgentTimings(cti_timeout_s=5.0, heartbeat_misses=2.5)
    agent = Agent("u1", "pw", "00:11:22:33:44:55", ["http://a", "http://b"], None, None,  # type: ignore[arg-type]
                  timings=timings)
    sess = _Session("http://a", {**_line("b", "3001"), "timings": {"heartbeat_s": hb}}, ws=ch,  # type: ignore[arg-type]
                    last_server_hb=agent.clock())
    return agent, sess, ch


async def _beat(ch: _Channel, every: float, times: int, then: dict[str, Any] | None = None) -> None:
    for _ in range(times):
        await asyncio.sleep(every)
        ch.q.put_nowait({"type": "heartbeat"})
    if then is not None:
        ch.q.put_nowait(then)


async def test_cti_is_awaited_while_the_channel_lives_past_a_fixed_timeout() -> None:
    """The survivor is slow to add the members but its channel keeps beating: the client
    waits (six heartbeat deadlines here) instead of moving again."""
    agent, sess, ch = _awaiting_cti(0.02)
    reader = asyncio.create_task(agent._read_channel(sess, ch))  # type: ignore[arg-type]
    beats = asyncio.create_task(_beat(ch, 0.02, 15, {"type": "cti", "state": "registered", "site": "b"}))
    await agent._await_cti(sess)
    assert sess.cti.is_set()
    # ... and keeps the session alive at the service meanwhile: a heartbeat per interval.
    assert len([m for m in ch.sent if m == {"type": "heartbeat"}]) >= 3
    await beats
    ch.q.put_nowait(None)
    await reader


async def test_cti_wait_ends_on_silence_or_a_failure_push() -> None:
    agent, sess, ch = _awaiting_cti(0.02)
    reader = asyncio.create_task(agent._read_channel(sess, ch))  # type: ignore[arg-type]
    t0 = agent.clock()
    await agent._await_cti(sess)  # nothing comes: silent beyond 2.5 heartbeats
    assert not sess.cti.is_set() and 0.04 < agent.clock() - t0 < 1.0
    # A failure at another site (the one left) is not this one's; this site's is.
    ch.q.put_nowait({"type": "cti", "state": "failed", "site": "a", "error": "x"})
    ch.q.put_nowait({"type": "heartbeat"})
    await asyncio.sleep(0.01)
    assert not sess.cti_failed.is_set()
    asyncio.get_running_loop().call_later(0.01, ch.q.put_nowait, {"type": "cti", "state": "failed", "site": "b"})
    sess.last_server_hb = agent.clock() + 10  # the channel looks alive: only the push ends the wait
    t0 = agent.clock()
    await agent._await_cti(sess)
    assert sess.cti_failed.is_set() and not sess.cti.is_set() and agent.clock() - t0 < 1.0
    ch.q.put_nowait(None)
    await reader
