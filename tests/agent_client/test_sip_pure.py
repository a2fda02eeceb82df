"""Pure tests of the SIP stack: message, digest, transport timers with a fake clock, UA."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
from collections.abc import Callable
from typing import Any

import pytest

from agent_client.sip.digest import answer_challenge, compute, parse_challenge
from agent_client.sip.message import SipMessage, parse, uri_user
from agent_client.sip.transport import SipTimeout, SipTimers, SipTransport, response_to
from agent_client.sip.ua import LineEventKind, LineState, PhoneLine
from controlplane.errors import ProtocolError

REGISTER = (
    b"REGISTER sip:10.77.0.11:5060 SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 10.77.0.1:5070;branch=z9hG4bKaaa;rport\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKbbb\r\n"
    b"f: <sip:1001@10.77.0.11>;tag=abc\r\n"
    b"t: <sip:1001@10.77.0.11>\r\n"
    b"i: call-1\r\n"
    b"CSeq: 7 REGISTER\r\n"
    b"m: <sip:1001@10.77.0.1:5070>\r\n"
    b"l: 4\r\n\r\nbodyEXTRA"
)


def test_parse_compact_headers_and_multiple_via() -> None:
    m = parse(REGISTER)
    assert m.method == "REGISTER" and m.uri == "sip:10.77.0.11:5060"
    assert m.getall("via") == [
        "SIP/2.0/UDP 10.77.0.1:5070;branch=z9hG4bKaaa;rport",
        "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKbbb",
    ]
    assert m.top_branch == "z9hG4bKaaa"
    assert m.call_id == "call-1" and m.get("CALL-ID") == "call-1"
    assert m.cseq == (7, "REGISTER")
    assert m.get("Contact") == "<sip:1001@10.77.0.1:5070>"
    assert m.body == b"body"  # Content-Length (compact l) cuts trailing bytes


def test_round_trip_keeps_order_and_recomputes_length() -> None:
    m = parse(REGISTER)
    again = parse(m.encode())
    assert again.headers[:-1] == [h for h in m.headers if h[0] != "l"]
    assert again.get("Content-Length") == "4" and again.body == b"body"
    resp = response_to(m, 200, "OK", "tt")
    r2 = parse(resp.encode())
    assert r2.status == 200 and r2.reason == "OK"
    assert len(r2.getall("Via")) == 2 and r2.get("To") == "<sip:1001@10.77.0.11>;tag=tt"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"REGISTER sip:x SIP/2.0\r\nVia: x\r\n", "blank line"),
        (b"REGISTER sip:x\r\nVia: x\r\n\r\n", "request line"),
        (b"SIP/2.0 20x OK\r\nVia: x\r\n\r\n", "status code"),
        (b"OPTIONS sip:x SIP/2.0\r\nVia x\r\n\r\n", "line 2: malformed header"),
        (b"OPTIONS sip:x SIP/2.0\r\nVia: a\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nl: 99\r\n\r\nabc", "Content-Length 99"),
        (b"OPTIONS sip:x SIP/2.0\r\nVia: a\r\nCSeq: 1 OPTIONS\r\n\r\n", "Call-ID"),
        (b"OPTIONS sip:x SIP/2.0\r\nVia: a\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nl: x\r\n\r\n", "not a number"),
    ],
)
def test_malformed_datagram_error_names_the_problem(data: bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        parse(data)


def test_uri_user() -> None:
    assert uri_user("sip:1001@10.77.0.1:5070;transport=udp") == "1001"
    assert uri_user("<sip:2002@h>") == "2002"
    assert uri_user("sip:10.77.0.11") == ""


def test_digest_rfc2617_example() -> None:
    # RFC 2617 §3.5: Mufasa / "Circle Of Life", expected response 6629fae4...
    r = compute(
        username="Mufasa",
        password="Circle Of Life",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc=1,
        cnonce="0a4f113b",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
    )
    assert r.response == "6629fae49393a05397450978507c4ef1"
    assert "nc=00000001" in r.header and 'cnonce="0a4f113b"' in r.header


def test_digest_no_qop_rfc2069() -> None:
    # HA1=md5(Mufasa:testrealm@host.com:Circle Of Life), no qop: md5(HA1:nonce:HA2)
    import hashlib

    ha1 = hashlib.md5(b"Mufasa:testrealm@host.com:Circle Of Life").hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:h").hexdigest()
    want = hashlib.md5(f"{ha1}:n1:{ha2}".encode()).hexdigest()
    hdr = answer_challenge(
        'Digest realm="testrealm@host.com", nonce="n1"',
        username="Mufasa",
        password="Circle Of Life",
        method="REGISTER",
        uri="sip:h",
    )
    assert f'response="{want}"' in hdr and "qop" not in hdr


def test_parse_challenge_asterisk_style() -> None:
    ch = parse_challenge('Digest realm="asterisk",nonce="1700000000/abc",opaque="x1",algorithm=MD5,qop="auth"')
    assert ch == {"realm": "asterisk", "nonce": "1700000000/abc", "opaque": "x1", "algorithm": "MD5", "qop": "auth"}
    with pytest.raises(ProtocolError, match="Basic"):
        parse_challenge('Basic realm="x"')


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self._q: list[tuple[float, int, Callable[[], object], list[bool]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeHandle:
        h = FakeHandle()
        heapq.heappush(self._q, (self.now + delay, next(self._seq), callback, h.flag))
        return h

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while self._q and self._q[0][0] <= end:
            t, _, cb, flag = heapq.heappop(self._q)
            self.now = t
            if not flag[0]:
                cb()
        self.now = end


class FakeHandle:
    def __init__(self) -> None:
        self.flag = [False]

    def cancel(self) -> None:
        self.flag[0] = True


def _options(branch: str = "z9hG4bK1", uri: str = "sip:x@h") -> SipMessage:
    m = SipMessage(method="OPTIONS", uri=uri)
    m.add("Via", f"SIP/2.0/UDP 1.2.3.4:5;branch={branch}")
    m.add("Call-ID", "c")
    m.add("CSeq", "1 OPTIONS")
    return m


async def test_retransmission_t1_doubling_capped_and_timer_f() -> None:
    clock = FakeClock()
    sent: list[float] = []
    timers = SipTimers(t1=0.5, t2=4, timeout=32)
    t = SipTransport(clock=clock, sendto=lambda d, a: sent.append(clock.now), timers=timers)
    fut = t.request(_options(), ("h", 5060))
    clock.advance(31.9)
    # RFC 3261 §17.1.2.2 Timer E: 0, .5, 1.5, 3.5, 7.5, 11.5, 15.5, ... then every 4 s.
    assert sent == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert not fut.done()
    clock.advance(0.2)
    with pytest.raises(SipTimeout, match="32"):
        await fut
    assert t.pending == 0 and t.stats.timeouts == 1


async def test_no_retransmission_at_or_after_the_transactions_own_timeout() -> None:
    """A probe that gives up at 0.5 s (= T1) sends one datagram, not a second one at the
    instant it gives up: 10,000 of those into a dead registrar during a mass failover."""
    clock = FakeClock()
    sent: list[float] = []
    t = SipTransport(clock=clock, sendto=lambda d, a: sent.append(clock.now), timers=SipTimers(t1=0.5))
    probe = t.request(_options("z9hG4bKp1"), ("h", 5060), timeout=0.5)
    longer = t.request(_options("z9hG4bKp2"), ("h", 5060), timeout=1.2)
    clock.advance(2.0)
    assert sent == [0.0, 0.0, 0.5]  # both at once; the longer one again at T1, not at 1.5
    for fut in (probe, longer):
        with pytest.raises(SipTimeout):
            await fut
    assert t.stats.retransmissions == 1 and t.pending == 0


async def test_final_response_stops_retransmission() -> None:
    clock = FakeClock()
    sent: list[bytes] = []
    t = SipTransport(clock=clock, sendto=lambda d, a: sent.append(d))
    req = _options()
    fut = t.request(req, ("h", 5060))
    clock.advance(0.6)
    t.datagram_received(response_to(req, 100, "Trying").encode(), ("h", 5060))
    clock.advance(3.0)  # armed Timer E fires at 1.5, then T2 (4 s): next not before 5.5
    assert len(sent) == 3
    t.datagram_received(response_to(req, 200, "OK").encode(), ("h", 5060))
    assert (await fut).status == 200
    clock.advance(60)
    assert len(sent) == 3
    t.datagram_received(b"garbage\r\n\r\n", ("h", 5060))  # never crashes the transport
    assert t.stats.malformed == 1


class FakeRegistrar:
    """Answers REGISTER with 401 then checks the digest: a scripted Asterisk."""

    def __init__(self, t: SipTransport, password: str) -> None:
        self.t, self.password, self.seen = t, password, []  # type: ignore[var-annotated]

    def __call__(self, data: bytes, addr: tuple[str, int]) -> None:
        req = parse(data)
        self.seen.append(req)
        auth = req.get("Authorization")
        if auth is None:
            r = response_to(req, 401, "Unauthorized", "t1")
            r.add("WWW-Authenticate", 'Digest realm="asterisk",nonce="n1",opaque="o",algorithm=MD5,qop="auth"')
        else:
            ch = parse_challenge(auth)
            good = compute(
                username=ch["username"],
                password=self.password,
                realm="asterisk",
                nonce="n1",
                method="REGISTER",
                uri=ch["uri"],
                qop="auth",
                nc=1,
                cnonce=ch["cnonce"],
            )
            if good.response == ch["response"]:
                r = response_to(req, 200, "OK", "t1")
                r.add("Contact", f"{req.get('Contact')};expires={req.get('Expires')}")
            else:
                r = response_to(req, 403, "Forbidden", "t1")
        asyncio.get_running_loop().call_soon(self.t.datagram_received, r.encode(), addr)


async def test_ua_register_challenge_refresh_and_wrong_password() -> None:
    clock = FakeClock()
    t = SipTransport(clock=clock, local_addr=("10.77.0.1", 5070))
    reg = FakeRegistrar(t, "lab-1001")
    t._sendto = reg
    line = PhoneLine(t, "1001", "lab-1001")
    ev = await line.register(("10.77.0.11", 5060), expires=120)
    assert ev.kind is LineEventKind.REGISTERED and line.state is LineState.REGISTERED
    assert line.expires == 120 and [m.cseq[0] for m in reg.seen] == [1, 2]
    assert "lab-1001" not in repr(line)
    # refresh lands between 60 % and 80 % of the granted expiry
    clock.advance(120 * 0.6 - 0.01)
    assert len(reg.seen) == 2
    clock.advance(120 * 0.2 + 0.02)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(reg.seen) >= 3 and reg.seen[2].get("Expires") == "120"
    bad = PhoneLine(t, "1002", "wrong")
    ev2 = await bad.register(("10.77.0.11", 5060))
    assert ev2.kind is LineEventKind.REGISTRATION_FAILED and ev2.detail == "403 Forbidden"
    line.close()


async def test_ua_answers_options_and_invite() -> None:
    clock = FakeClock()
    out: list[SipMessage] = []
    t = SipTransport(clock=clock, sendto=lambda d, a: out.append(parse(d)), local_addr=("10.77.0.1", 5070))
    PhoneLine(t, "1001", "x")
    opt = _options()
    opt.uri = "sip:1001@10.77.0.1:5070"
    t.datagram_received(opt.encode(), ("10.77.0.11", 5060))
    assert out[-1].status == 200 and out[-1].cseq == (1, "OPTIONS")
    inv = SipMessage(method="INVITE", uri="sip:1001@10.77.0.1:5070")
    for k, v in [
        ("Via", "SIP/2.0/UDP 10.77.0.11;branch=z9hG4bKi"),
        ("From", "<sip:a@b>;tag=f"),
        ("To", "<sip:1001@b>"),
        ("Call-ID", "inv1"),
        ("CSeq", "1 INVITE"),
    ]:
        inv.add(k, v)
    t.datagram_received(inv.encode(), ("10.77.0.11", 5060))
    assert [m.status for m in out[1:]] == [100, 180, 200]
    assert out[-1].get("Content-Type") == "application/sdp" and b"m=audio" in out[-1].body
    clock.advance(0.6)  # no ACK yet: 200 retransmitted
    assert out[-1].status == 200 and len(out) == 5
    ack = parse(inv.encode().replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK"))
    t.datagram_received(ack.encode(), ("10.77.0.11", 5060))
    clock.advance(10)
    assert len(out) == 5
    bye = parse(inv.encode().replace(b"INVITE sip", b"BYE sip").replace(b"1 INVITE", b"2 BYE"))
    t.datagram_received(bye.encode(), ("10.77.0.11", 5060))
    assert out[-1].status == 200 and out[-1].cseq == (2, "BYE")


def test_token_bucket_spaces_reservations_after_burst() -> None:
    from agent_client.sip.fleet import TokenBucket

    now = [100.0]
    b = TokenBucket(rate=1000, burst=5, time=lambda: now[0])
    waits = [b.reserve() for _ in range(8)]
    # an idle bucket lets a burst through, then spaces callers 1/rate apart
    assert waits == pytest.approx([0.0] * 5 + [0.001, 0.002, 0.003], abs=1e-9)
    now[0] += 10  # idle again: the burst is back, not 10,000 saved tokens
    assert [b.reserve() for _ in range(6)][-1] == pytest.approx(0.001)


async def test_stale_nonce_is_answered_again_but_wrong_password_is_not() -> None:
    clock = FakeClock()
    t = SipTransport(clock=clock, local_addr=("10.77.0.1", 5070))
    answers: list[str] = []

    def registrar(data: bytes, addr: tuple[str, int]) -> None:
        req = parse(data)
        n = req.cseq[0]
        r = response_to(req, 401, "Unauthorized", "t")
        stale = ",stale=true" if n == 2 else ""
        r.add("WWW-Authenticate", f'Digest realm="asterisk",nonce="n{n}",qop="auth"{stale}')
        if n == 3:
            r = response_to(req, 200, "OK", "t")
        answers.append(str(r.status))
        asyncio.get_running_loop().call_soon(t.datagram_received, r.encode(), addr)

    t._sendto = registrar
    ev = await PhoneLine(t, "1001", "p").register(("h", 5060))
    assert ev.kind is LineEventKind.REGISTERED and answers == ["401", "401", "200"]


async def test_fleet_registers_and_moves_through_the_rate_limit() -> None:
    from agent_client.sip.fleet import FleetSettings, PhoneFleet

    clock = FakeClock()
    t = SipTransport(clock=clock, local_addr=("10.77.0.1", 5070))
    reg = FakeRegistrar(t, "pw")
    t._sendto = reg
    exts = [str(2000 + i) for i in range(30)]
    fleet = PhoneFleet(t, exts, lambda e: "pw" if e != "2007" else "bad", FleetSettings(register_rate=10_000, burst=5))
    rep = await fleet.register_all(("10.77.0.11", 5060))
    assert (rep.phones, rep.registered, rep.failures) == (30, 29, 1)
    assert rep.failure_details == ["2007: 403 Forbidden"]
    assert {m.uri for m in reg.seen} == {"sip:10.77.0.11:5060"}
    reg.seen.clear()
    rep = await fleet.re_register_all(("10.77.0.12", 5060))
    assert rep.registered == 29 and {m.uri for m in reg.seen} == {"sip:10.77.0.12:5060"}
    # a move opens a new registration (new Call-ID) at the new registrar
    assert fleet.lines[0].registrar == ("10.77.0.12", 5060)
    assert "registered" in rep.summary() and "failures 1" in rep.summary()
    fleet.close()


async def test_unregister_from_the_old_registrar_leaves_the_move_alone() -> None:
    """A failover moves the line to b while un-registering at a (dead: no answer). The
    un-registration has its own dialog: the line ends at b, with b's Call-ID."""
    clock = FakeClock()
    t = SipTransport(clock=clock, local_addr=("10.77.0.1", 5070))
    reg = FakeRegistrar(t, "lab-1001")

    def send(data: bytes, addr: tuple[str, int]) -> None:
        if addr[0] != "10.77.0.11":  # site a is dead
            reg(data, addr)
        else:
            reg.seen.append(parse(data))

    t._sendto = send
    line = PhoneLine(t, "1001", "lab-1001")
    a, b = ("10.77.0.11", 5060), ("10.77.0.12", 5060)
    line.registrar = a  # registered at a before it died
    gone = asyncio.ensure_future(line.unregister_from(a, limit_s=2.0))
    ev = await line.register(b, expires=120)
    assert ev.kind is LineEventKind.REGISTERED
    clock.advance(2.1)  # the un-registration at a times out
    assert await gone is False
    assert line.registrar == b and line.state is LineState.REGISTERED
    to_a = [m for m in reg.seen if m.uri.startswith("sip:10.77.0.11")]
    to_b = [m for m in reg.seen if m.uri.startswith("sip:10.77.0.12")]
    assert to_a[0].get("Expires") == "0" and to_a[0].call_id != to_b[-1].call_id
    line.close()


async def test_a_refresh_in_flight_to_a_dead_registrar_does_not_undo_the_move() -> None:
    """The refresh at a left just before a died; the line moves to b meanwhile. Waiting out
    Timer F at a (32 s), the old refresh used to mark the line failed: no more refreshes at
    b, the contact there expired (~300 of 10,000 agents lost in the failover bench)."""
    clock = FakeClock()
    t = SipTransport(clock=clock, local_addr=("10.77.0.1", 5070))
    reg = FakeRegistrar(t, "lab-1001")
    a, b = ("10.77.0.11", 5060), ("10.77.0.12", 5060)
    a_dead = [False]

    def send(data: bytes, addr: tuple[str, int]) -> None:
        if addr == a and a_dead[0]:
            reg.seen.append(parse(data))  # swallowed
        else:
            reg(data, addr)

    t._sendto = send
    line = PhoneLine(t, "1001", "lab-1001")
    assert (await line.register(a, expires=100)).kind is LineEventKind.REGISTERED
    a_dead[0] = True
    clock.advance(81)  # the refresh (60-80 s) goes out to a, now dead
    await asyncio.sleep(0)
    assert line._refresh_task is not None and not line._refresh_task.done()
    assert (await line.register(b, expires=100)).kind is LineEventKind.REGISTERED
    clock.advance(33)  # the old refresh's Timer F would have fired
    for _ in range(5):
        await asyncio.sleep(0)
    assert line.registrar == b and line.state is LineState.REGISTERED
    assert [e.kind for e in line.events] == [LineEventKind.REGISTERED, LineEventKind.REGISTERED]
    before = len([m for m in reg.seen if m.uri.startswith("sip:10.77.0.12")])
    clock.advance(80)  # and b's registration is refreshed as usual
    for _ in range(5):
        await asyncio.sleep(0)
    assert len([m for m in reg.seen if m.uri.startswith("sip:10.77.0.12")]) > before
    line.close()


async def test_a_refresh_after_the_transport_closed_fails_cleanly() -> None:
    """Seen in the failover bench: a registration refresh starting after its fleet's
    socket closed raised AttributeError from inside asyncio, in a task nobody awaited."""
    t = await SipTransport.open("127.0.0.1", 0)
    line = PhoneLine(t, "1001", "lab-1001")
    t.close()
    ev = await line.register(("127.0.0.1", 9), expires=60)
    assert ev.kind is LineEventKind.REGISTRATION_FAILED and "closed" in ev.detail
    line.close()


async def test_transport_drains_a_burst_in_one_wakeup_not_one_datagram_per_loop_turn() -> None:
    import socket as _socket

    from agent_client.sip.transport import SipTransport

    t = await SipTransport.open("127.0.0.1", 0)
    try:
        with _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) as s:
            for _ in range(500):  # a registrar's burst while our loop was busy
                s.sendto(b"\r\n\r\n", t.local_addr)
        for _ in range(3):  # three loop turns: asyncio's datagram transport read three datagrams
            await asyncio.sleep(0)
        assert t.stats.received == 500
    finally:
        t.close()


def _closed_port() -> int:
    import socket as _socket

    with _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: the kernel answers datagrams to it with ICMP port unreachable


async def test_a_port_nobody_listens_on_ends_the_transaction_at_once() -> None:
    """A killed registrar's host answers with ICMP port unreachable: the transaction ends
    then (RFC 3261 §18.4), not when the probe's timeout or Timer F fires. Only the
    transaction that datagram belonged to; the socket stays usable."""
    from agent_client.sip.transport import SipUnreachable, new_branch

    t = await SipTransport.open("127.0.0.1", 0)
    peer = await SipTransport.open("127.0.0.1", 0)  # a live registrar: answers OPTIONS
    peer.bind_user("", lambda msg, src: peer.send(response_to(msg, 200, "OK"), src))
    try:
        dead = ("127.0.0.1", _closed_port())
        waiting = t.request(_options(new_branch(), "sip:127.0.0.1"), peer.local_addr, timeout=30)
        # Two at once, then one elsewhere, with no loop turn between: on loopback each ICMP
        # error is queued before sendto returns and fails the next send (the datagram not
        # sent), which is sent again; the error queue is still drained (a readable socket
        # with nothing to read would spin the loop).
        gone = [t.request(_options(new_branch(), "sip:127.0.0.1"), dead, timeout=30) for _ in range(2)]
        after = t.request(_options(new_branch(), "sip:127.0.0.1"), peer.local_addr, timeout=30)
        assert (await asyncio.wait_for(after, 5)).status == 200
        for fut in gone:
            with pytest.raises(SipUnreachable, match=rf"OPTIONS to 127.0.0.1:{dead[1]}: Connection refused"):
                await asyncio.wait_for(fut, 5)  # Timer F here is 30 s
        assert t.stats.unreachable == 2
        # Each went out when asked, not 0.5 s later as a retransmission.
        assert t.stats.retransmissions == 0 and t.stats.resent == 2
        assert (await asyncio.wait_for(waiting, 5)).status == 200  # untouched by the errors
        assert t.pending == 0
    finally:
        t.close()
        peer.close()


async def test_probe_any_final_answer_proves_the_registrar_alive_silence_times_out() -> None:
    """``send_probe`` (what the agent reads in a callback) and ``probe`` (its round trip):
    one OPTIONS to the line's registrar; a 404 is an answer; nothing within the limit is
    SipTimeout; a line with no registrar has nothing to probe."""
    clock = FakeClock()
    t = SipTransport(clock=clock, local_addr=("10.77.0.1", 5070))
    reg = FakeRegistrar(t, "lab-1001")
    answer = [True]
    options: list[SipMessage] = []

    def wire(data: bytes, addr: tuple[str, int]) -> None:
        req = parse(data)
        if req.method != "OPTIONS":
            reg(data, addr)
            return
        options.append(req)
        if answer[0]:
            asyncio.get_running_loop().call_soon(t.datagram_received, response_to(req, 404, "Not Found").encode(), addr)

    t._sendto = wire
    line = PhoneLine(t, "1001", "lab-1001")
    with pytest.raises(ProtocolError):
        line.send_probe(0.5)
    await line.register(("10.77.0.11", 5060), expires=120)
    resp = await line.send_probe(0.5)
    assert resp.status == 404 and options[0].uri == "sip:10.77.0.11:5060"
    assert await line.probe(0.5) >= 0.0 and len(options) == 2
    answer[0] = False
    fut = line.send_probe(0.5)
    clock.advance(0.49)
    assert not fut.done()
    clock.advance(0.02)
    with pytest.raises(SipTimeout):
        await fut


async def test_one_wake_up_reads_a_whole_burst_of_icmp_errors() -> None:
    """A killed site answers 10,000 probes with 10,000 "port unreachable" at once. Read
    1,000 per wake-up, most waited behind a saturated loop's passes until their timeouts
    fired (5,923 of 10,002 probes in a single-line failover): one wake-up reads them all."""
    import errno
    import socket as _socket

    from agent_client.sip.transport import (
        _EXTENDED_ERR,
        ICMP_DEST_UNREACH,
        IP_RECVERR,
        SO_EE_ORIGIN_ICMP,
        SipUnreachable,
    )

    clock = FakeClock()
    t = SipTransport(clock=clock, local_addr=("10.77.0.1", 5070))
    sent: list[bytes] = []
    t._sendto = lambda data, addr: sent.append(data)
    dead = ("10.77.0.11", 5060)
    futs = [t.request(_options(f"z9hG4bKburst{i}"), dead, timeout=0.5) for i in range(3000)]
    err = _EXTENDED_ERR.pack(errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP, ICMP_DEST_UNREACH, 3, 0, 0)

    class Burst:
        def __init__(self) -> None:
            self.queue = list(sent)

        def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
            raise BlockingIOError

        def recvmsg(self, size: int, ancsize: int, flags: int) -> tuple[bytes, list[Any], int, tuple[str, int]]:
            if not self.queue:
                raise BlockingIOError
            return self.queue.pop(0), [(_socket.IPPROTO_IP, IP_RECVERR, err)], 0, dead

    t._sock = Burst()  # type: ignore[assignment]
    t._drain()
    assert t.stats.unreachable == 3000 and t.pending == 0
    for f in futs:
        with pytest.raises(SipUnreachable):
            f.result()


def test_tokens_come_from_blocks_of_os_randomness_and_never_repeat() -> None:
    """Branches, tags and Call-IDs: random bytes read a block at a time (one system call per
    4,096 bytes, not one per token), each byte handed out once; a forked child drops the
    rest of its parent's block."""
    from agent_client.sip.tokens import _TokenPool

    reads: list[int] = []

    def read(n: int) -> bytes:
        reads.append(n)
        return os.urandom(n)

    pool = _TokenPool(read)
    tokens = [pool.hex(8) for _ in range(1024)]  # 8 KiB: two blocks
    assert all(len(t) == 16 and int(t, 16) >= 0 for t in tokens)
    assert len(set(tokens)) == len(tokens)
    assert reads == [_TokenPool.BLOCK, _TokenPool.BLOCK]
    pool.hex(3)
    assert len(reads) == 3
    before = pool.hex(4)
    pool.drop()  # what the child does after a fork
    assert pool.hex(4) != before and len(reads) == 4
    assert len(pool.hex(5000)) == 10000 and reads[-1] == 5000  # bigger than a block


async def test_on_done_runs_where_the_transaction_is_settled_not_a_loop_pass_later(
        caplog: pytest.LogCaptureFixture) -> None:
    """The probe's outcome is the second signal of a confirmation: ``on_done`` is called by
    the code that settles the future (an answer read, the timer, an ICMP error, close), with
    the future already done; one that raises is logged and the read goes on."""
    import errno
    import socket as _socket

    from agent_client.sip.transport import _EXTENDED_ERR, ICMP_DEST_UNREACH, IP_RECVERR, SO_EE_ORIGIN_ICMP

    clock = FakeClock()
    t = SipTransport(clock=clock, local_addr=("10.77.0.1", 5070))
    sent: list[bytes] = []
    t._sendto = lambda data, addr: sent.append(data)
    seen: list[tuple[str, bool]] = []

    def note(name: str) -> Any:
        return lambda f: seen.append((name, f.done()))

    peer, dead = ("10.77.0.12", 5060), ("10.77.0.11", 5060)
    answered = t.request(_options("z9hG4bKans"), peer, timeout=0.5, on_done=note("answer"))
    t.datagram_received(response_to(parse(sent[-1]), 200, "OK").encode(), peer)
    assert seen == [("answer", True)] and answered.result().status == 200

    t.request(_options("z9hG4bKsilent"), peer, timeout=0.5, on_done=note("timeout"))
    clock.advance(0.51)
    assert seen[-1] == ("timeout", True)

    def boom(f: Any) -> None:
        raise RuntimeError("a broken callback")

    t.request(_options("z9hG4bKboom"), dead, timeout=0.5, on_done=boom)
    t.request(_options("z9hG4bKicmp"), dead, timeout=0.5, on_done=note("icmp"))
    err = _EXTENDED_ERR.pack(errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP, ICMP_DEST_UNREACH, 3, 0, 0)
    queue = sent[-2:]

    class Errors:
        def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
            raise BlockingIOError

        def recvmsg(self, size: int, ancsize: int, flags: int) -> tuple[bytes, list[Any], int, tuple[str, int]]:
            if not queue:
                raise BlockingIOError
            return queue.pop(0), [(_socket.IPPROTO_IP, IP_RECVERR, err)], 0, dead

    t._sock = Errors()  # type: ignore[assignment]
    with caplog.at_level("ERROR"):
        t._drain()
    assert seen[-1] == ("icmp", True) and "on_done callback failed" in caplog.text
    t._sock = None
    t.request(_options("z9hG4bKopen"), peer, timeout=0.5, on_done=note("closed"))
    t.close()
    assert seen[-1] == ("closed", True) and len(seen) == 4
