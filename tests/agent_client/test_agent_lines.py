"""The agent's phone lines: a dual-line phone (``backup_lines``) keeps its line at the other
site registered, fails over without a REGISTER, and keeps the failed site's line for later;
a single-line softphone registers at the new site when it moves. SIP through the real
stack against scripted registrars on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from agent_client.agent import Agent, AgentTimings, _Session
from agent_client.sip.message import SipMessage, parse
from agent_client.sip.transport import SipTransport, new_branch
from agent_client.sip.ua import LineEventKind, LineState

from .test_sip_pure import FakeClock, FakeRegistrar

A, B = ("10.0.0.97", 5060), ("10.0.0.98", 5060)


def _line(site: str, host: str, ext: str = "2001") -> dict[str, Any]:
    return {"site": site, "extension": ext, "registrar": {"host": host, "port": 5060},
            "sip": {"username": ext, "password": "pw"}}


class _Sites:
    """Two registrars on one fake network; a dead one drops what it is sent."""

    def __init__(self, t: SipTransport) -> None:
        self.regs = {A[0]: FakeRegistrar(t, "pw"), B[0]: FakeRegistrar(t, "pw")}
        self.dead: set[str] = set()
        self.sent: list[str] = []  # the host of every REGISTER sent
        self.answers: list[SipMessage] = []  # what the agent answers the registrars' requests
        t._sendto = self

    def __call__(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = parse(data)
        if msg.method is None:
            self.answers.append(msg)
            return
        self.sent.append(addr[0])
        if addr[0] not in self.dead:
            self.regs[addr[0]](data, addr)


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition not reached")


def _ready_at_a(timings: AgentTimings) -> tuple[Agent, SipTransport, FakeClock, _Sites, _Session]:
    clock = FakeClock()
    t = SipTransport(clock=clock, local_addr=("10.77.0.1", 5070))
    net = _Sites(t)
    agent = Agent("u1", "pw", "00:11:22:33:44:55", ["http://a", "http://b"], t, None,  # type: ignore[arg-type]
                  timings=timings)
    body = {**_line("a", A[0]), "other_lines": [_line("b", B[0])], "session_id": "s", "token": "t"}
    agent._learn(body)
    agent.site = "a"
    return agent, t, clock, net, _Session("http://a", body)


def _options_from(host: str) -> bytes:
    m = SipMessage(method="OPTIONS", uri="sip:2001@10.77.0.1:5070")
    for k, v in [("Via", f"SIP/2.0/UDP {host}:5060;branch={new_branch()}"), ("From", "<sip:q@x>;tag=1"),
                 ("To", "<sip:2001@x>"), ("Call-ID", new_branch()), ("CSeq", "1 OPTIONS")]:
        m.add(k, v)
    return m.encode()


async def test_a_dual_line_phone_fails_over_on_its_backup_line_without_a_register() -> None:
    agent, t, clock, net, sess = _ready_at_a(AgentTimings(backup_retry_s=0.01))
    agent.line = agent._new_line("2001", "pw", A)
    assert (await agent._register_line(agent.line, A)).kind is LineEventKind.REGISTERED
    assert not agent.lines_registered()  # the backup line is not registered yet
    agent._keep_backups()
    await _until(agent.lines_registered)
    backup = agent.backups["b"]
    assert backup.registrar == B and net.sent.count(B[0]) == 2  # challenged, then registered
    # The same extension at both sites: each site's requests reach its own line.
    t.datagram_received(_options_from(A[0]), (A[0], 5060))
    t.datagram_received(_options_from(B[0]), (B[0], 5060))
    assert (agent.line.options_answered, backup.options_answered) == (1, 1)

    # Site a dies; the failover takes the backup line as it is: no REGISTER anywhere.
    net.dead.add(A[0])
    sent = len(net.sent)
    agent._preregister(sess)
    assert agent._pre is not None and agent._pre.line is backup
    ev = await agent._pre.task
    assert ev.kind is LineEventKind.REGISTERED and "already" in ev.detail and len(net.sent) == sent
    # The line left at the failed site stays, as its backup line, without refreshes into the
    # dead site; it tries again after the retry interval, and is registered once a is back.
    old = agent.line
    agent.line, agent.site = backup, "b"
    agent._shelve(old, failed=True)
    assert agent.backups == {"a": old} and "b" not in agent.backups
    await _until(lambda: A[0] in net.sent[sent:])  # the retry, a retry interval later
    clock.advance(4.0)  # each try gives up at backup_register_limit_s, not at Timer F (32 s)
    await _until(lambda: old.state is LineState.FAILED)
    assert net.sent[sent:].count(A[0]) == 4  # 0, 0.5, 1.5, 3.5 s: no retransmission at 4 s
    net.dead.clear()
    await _until(lambda: net.sent[sent:].count(A[0]) > 4)  # tried again, a retry interval later
    await _until(lambda: old.state is LineState.REGISTERED)
    assert agent.lines_registered()
    await agent.stop(logout=False)
    assert not agent.backups and agent.line.state is LineState.UNREGISTERED


async def test_a_single_line_phone_registers_at_the_new_site_when_it_moves() -> None:
    agent, _t, _clock, net, sess = _ready_at_a(AgentTimings(backup_lines=False))
    agent.line = agent._new_line("2001", "pw", A)
    assert (await agent._register_line(agent.line, A)).kind is LineEventKind.REGISTERED
    agent._keep_backups()
    await asyncio.sleep(0.01)
    assert agent.backups == {} and agent.lines_registered() and B[0] not in net.sent
    net.dead.add(A[0])
    agent._preregister(sess)
    assert agent._pre is not None and agent._pre.line is agent.line  # the same line moves
    ev = await agent._pre.task
    assert ev.kind is LineEventKind.REGISTERED and net.sent.count(B[0]) == 2
    agent.line.close()
