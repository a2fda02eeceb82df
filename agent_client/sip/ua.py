"""A phone line: one SIP user agent on a shared :class:`SipTransport`.

It registers (answering 401/407 digest challenges), refreshes before expiry with
jitter so a fleet's refreshes spread out, unregisters (Expires: 0), answers OPTIONS
with 200 and INVITE with 100/180/200 + minimal SDP, then handles ACK and BYE.
State changes are :class:`LineEvent` values with timestamps, handed to listeners.
"""

from __future__ import annotations

import asyncio
import enum
import random
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from controlplane.errors import ProtocolError

from .digest import answer_challenge, parse_challenge
from .message import SipMessage, param
from .tokens import token_hex
from .transport import Addr, SipTimeout, SipTransport, TimerHandle, new_branch, new_tag, response_to

USER_AGENT = "ccdr-agent-client/0.1"


class LineState(enum.Enum):
    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "registration_failed"


class LineEventKind(enum.Enum):
    REGISTERED = "registered"
    REGISTRATION_FAILED = "registration_failed"
    UNREGISTERED = "unregistered"


@dataclass(frozen=True)
class LineEvent:
    kind: LineEventKind
    at: float
    registrar: Addr
    detail: str = ""
    #: seconds from sending the first REGISTER to this outcome
    latency: float = 0.0


@dataclass(frozen=True)
class RefreshPolicy:
    """When to refresh: at ``fraction`` of the granted expiry, minus up to ``jitter`` of it."""

    fraction: float = 0.8
    jitter: float = 0.2


@dataclass
class _Dialog:
    invite: SipMessage
    src: Addr
    response: bytes
    interval: float
    timer: TimerHandle | None = None
    to_tag: str = ""


Gate = Callable[[], Awaitable[None]]


class PhoneLine:
    """One extension. ``gate`` (optional) is awaited before every REGISTER: the fleet's rate limit.
    ``peer`` (optional): the registrar host this line belongs to (one line of a dual-line
    phone); it then gets only that host's requests, and another line of the same extension
    can be registered at another site."""

    def __init__(
        self,
        transport: SipTransport,
        ext: str,
        password: str,
        *,
        refresh: RefreshPolicy | None = None,
        gate: Gate | None = None,
        rng: random.Random | None = None,
        peer: str | None = None,
    ) -> None:
        self.transport = transport
        self.peer = peer
        self.ext = ext
        self._password = password
        self.refresh_policy = refresh or RefreshPolicy()
        self.gate = gate
        self._rng = rng or random.Random()
        self.state = LineState.UNREGISTERED
        self.registrar: Addr | None = None
        self.expires = 0
        self._gen = 0  # registrations started: only the latest one's outcome counts
        self.events: list[LineEvent] = []
        self.listeners: list[Callable[[LineEvent], None]] = []
        self._call_id = ""
        self._cseq = 0
        self._from_tag = new_tag()
        self._refresh: TimerHandle | None = None
        self._refresh_task: asyncio.Task[LineEvent] | None = None
        self.dialogs: dict[str, _Dialog] = {}
        self.answered_calls = 0
        self.options_answered = 0
        transport.bind_user(ext, self._on_request, peer)

    def __repr__(self) -> str:  # never the password
        return f"PhoneLine(ext={self.ext!r}, state={self.state.value})"

    # -- events -------------------------------------------------------------
    def _emit(self, kind: LineEventKind, registrar: Addr, detail: str = "", latency: float = 0.0) -> LineEvent:
        ev = LineEvent(kind, self.transport.clock.time(), registrar, detail, latency)
        self.events.append(ev)
        for cb in list(self.listeners):
            cb(ev)
        return ev

    # -- registration -------------------------------------------------------
    def _register_request(self, registrar: Addr, expires: int, auth: tuple[str, str] | None,
                          other: list[Any] | None = None) -> SipMessage:
        """A REGISTER in this line's registration dialog, or in ``other`` ([call-id, cseq]),
        a separate one (un-registering at a registrar the line has left)."""
        host, port = registrar
        lhost, lport = self.transport.local_addr
        if other is None:
            self._cseq += 1
            call_id, cseq = self._call_id, self._cseq
        else:
            other[1] += 1
            call_id, cseq = other[0], other[1]
        uri = f"sip:{host}:{port}"
        m = SipMessage(method="REGISTER", uri=uri)
        m.add("Via", f"SIP/2.0/UDP {lhost}:{lport};branch={new_branch()};rport")
        m.add("Max-Forwards", "70")
        m.add("From", f"<sip:{self.ext}@{host}>;tag={self._from_tag}")
        m.add("To", f"<sip:{self.ext}@{host}>")
        m.add("Call-ID", call_id)
        m.add("CSeq", f"{cseq} REGISTER")
        m.add("Contact", f"<sip:{self.ext}@{lhost}:{lport}>")
        m.add("Expires", str(expires))
        m.add("User-Agent", USER_AGENT)
        if auth is not None:
            m.add(auth[0], auth[1])
        return m

    async def _exchange(self, registrar: Addr, expires: int, limit_s: float | None = None,
                        other: list[Any] | None = None) -> SipMessage:
        resp = await self.transport.request(self._register_request(registrar, expires, None, other), registrar,
                                            timeout=limit_s)
        # A second challenge is final (wrong password) unless it says the nonce went stale,
        # which a registrar slowed by a storm does: then answer the fresh nonce once more.
        for attempt in range(2):
            if resp.status not in (401, 407):
                break
            hdr = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
            challenge = resp.get(hdr)
            if challenge is None:
                raise ProtocolError(f"{resp.status} without a {hdr} header")
            if attempt > 0 and parse_challenge(challenge).get("stale", "").lower() != "true":
                break
            value = answer_challenge(
                challenge,
                username=self.ext,
                password=self._password,
                method="REGISTER",
                uri=f"sip:{registrar[0]}:{registrar[1]}",
            )
            auth_hdr = "Authorization" if resp.status == 401 else "Proxy-Authorization"
            resp = await self.transport.request(
                self._register_request(registrar, expires, (auth_hdr, value), other), registrar, timeout=limit_s
            )
        return resp

    async def register(self, registrar: Addr, expires: int = 300, limit_s: float | None = None) -> LineEvent:
        """Register (or move) to ``registrar``; returns the REGISTERED or REGISTRATION_FAILED event.
        ``limit_s``: give up sooner than Timer F (a backup line trying a site that may be down).

        A newer registration supersedes one in flight: a refresh sent to a registrar that
        died a moment before the move waits out Timer F (32 s), and its failure then marked
        the moved line failed (no more refreshes: the contact at the new site expired) and
        told the agent its registration had failed. 10,000 agents moving: ~300 of them."""
        self._cancel_refresh()
        refresh = self._refresh_task
        if refresh is not None and not refresh.done() and refresh is not asyncio.current_task():
            refresh.cancel()
        self._gen += 1
        gen = self._gen
        if registrar != self.registrar or not self._call_id:
            self._call_id = token_hex(12)
            self._cseq = 0
        self.registrar = registrar
        self.state = LineState.REGISTERING
        if self.gate is not None:  # rate limit: latency counts from when we may send
            await self.gate()
        started = self.transport.clock.time()
        try:
            resp: SipMessage | None = await self._exchange(registrar, expires, limit_s)
            error = ""
        except (SipTimeout, ProtocolError) as e:
            resp, error = None, str(e)
        latency = self.transport.clock.time() - started
        if gen != self._gen:  # superseded meanwhile: its outcome is not the line's, and not told
            return LineEvent(LineEventKind.REGISTRATION_FAILED, self.transport.clock.time(), registrar,
                             f"superseded: {error}" if error else "superseded", latency)
        if resp is None:
            self.state = LineState.FAILED
            return self._emit(LineEventKind.REGISTRATION_FAILED, registrar, error, latency)
        if resp.status != 200:
            self.state = LineState.FAILED
            return self._emit(LineEventKind.REGISTRATION_FAILED, registrar, f"{resp.status} {resp.reason}", latency)
        self.expires = self._granted(resp, expires)
        self.state = LineState.REGISTERED
        self._schedule_refresh()
        return self._emit(LineEventKind.REGISTERED, registrar, f"expires={self.expires}", latency)

    def _granted(self, resp: SipMessage, asked: int) -> int:
        lhost, lport = self.transport.local_addr
        mine = f"{self.ext}@{lhost}:{lport}"
        for c in resp.getall("Contact"):
            for one in c.split(","):
                if mine in one:
                    e = param(one, "expires")
                    if e and e.isdigit():
                        return int(e)
        e2 = resp.get("Expires")
        return int(e2) if e2 and e2.strip().isdigit() else asked

    def refresh_delay(self) -> float:
        p = self.refresh_policy
        return self.expires * (p.fraction - self._rng.uniform(0.0, p.jitter))

    def _schedule_refresh(self) -> None:
        if self.expires <= 0:
            return
        self._refresh = self.transport.clock.call_later(self.refresh_delay(), self._do_refresh)

    def _do_refresh(self) -> None:
        if self.registrar is not None and self.state is LineState.REGISTERED:
            self._refresh_task = asyncio.get_running_loop().create_task(
                self.register(self.registrar, self.expires or 300), name=f"sip-refresh-{self.ext}"
            )

    def hold(self) -> None:
        """No more refreshes until the next :meth:`register` (a line left at a failed site)."""
        self._cancel_refresh()

    def _cancel_refresh(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None

    async def unregister(self) -> LineEvent:
        self._cancel_refresh()
        registrar = self.registrar
        if registrar is None:
            raise ProtocolError(f"line {self.ext} was never registered")
        if self.gate is not None:
            await self.gate()
        try:
            resp = await self._exchange(registrar, 0)
            detail = f"{resp.status} {resp.reason}"
        except (SipTimeout, ProtocolError) as e:
            detail = str(e)
        self.state = LineState.UNREGISTERED
        return self._emit(LineEventKind.UNREGISTERED, registrar, detail)

    async def probe(self, limit_s: float) -> float:
        """One OPTIONS to the current registrar; its round trip. Any final answer (even
        401 or 404) proves the registrar alive; no answer within ``limit_s`` raises SipTimeout."""
        started = self.transport.clock.time()
        await self.send_probe(limit_s)
        return self.transport.clock.time() - started

    def send_probe(self, limit_s: float,
                   on_done: Callable[[asyncio.Future[SipMessage]], None] | None = None) -> asyncio.Future[SipMessage]:
        """:meth:`probe` without a coroutine: the transaction's future (a fleet's agents
        read it in a callback, not a task each: 10,000 probes in a failover's first second);
        ``on_done`` as in :meth:`SipTransport.request`."""
        if self.registrar is None:
            raise ProtocolError(f"line {self.ext} has no registrar to probe")
        host, port = self.registrar
        lhost, lport = self.transport.local_addr
        m = SipMessage(method="OPTIONS", uri=f"sip:{host}:{port}")
        m.add("Via", f"SIP/2.0/UDP {lhost}:{lport};branch={new_branch()};rport")
        m.add("Max-Forwards", "70")
        m.add("From", f"<sip:{self.ext}@{host}>;tag={new_tag()}")
        m.add("To", f"<sip:{host}:{port}>")
        m.add("Call-ID", token_hex(12))
        m.add("CSeq", "1 OPTIONS")
        m.add("User-Agent", USER_AGENT)
        return self.transport.request(m, self.registrar, timeout=limit_s, on_done=on_done)

    async def unregister_from(self, registrar: Addr, limit_s: float = 2.0) -> bool:
        """Remove this line's contact at a registrar it has left (Expires: 0, a new Call-ID),
        without touching the current registration. True if the registrar said 200.

        ``limit_s`` is short: the registrar left behind is usually the dead one, and a full
        32 s transaction per agent kept retransmitting into it (a third of the simulator's
        CPU in a 1,000-agent move)."""
        # Its own dialog: the line's registration (moving to the new registrar at the same
        # time) is not touched. An earlier version swapped the line's registrar and Call-ID
        # for the duration and put them back after, pointing the line at the dead site again.
        try:
            resp = await self._exchange(registrar, 0, limit_s, other=[token_hex(12), 0])
            return resp.status == 200
        except (SipTimeout, ProtocolError):
            return False

    def close(self) -> None:
        self._cancel_refresh()
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        for d in self.dialogs.values():
            if d.timer is not None:
                d.timer.cancel()
        self.transport.unbind_user(self.ext, self.peer)

    # -- incoming requests --------------------------------------------------
    def _on_request(self, req: SipMessage, src: Addr) -> None:
        method = req.method
        if method == "OPTIONS":
            r = response_to(req, 200, "OK", new_tag())
            r.add("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, NOTIFY")
            r.add("Accept", "application/sdp")
            self.options_answered += 1
            self.transport.send(r, src)
        elif method == "INVITE":
            self._on_invite(req, src)
        elif method == "ACK":
            d = self.dialogs.get(req.call_id)
            if d is not None and d.timer is not None:
                d.timer.cancel()
                d.timer = None
        elif method == "BYE":
            d = self.dialogs.pop(req.call_id, None)
            if d is not None and d.timer is not None:
                d.timer.cancel()
            self.transport.send(response_to(req, 200, "OK"), src)
        elif method == "CANCEL":
            self.transport.send(response_to(req, 200, "OK"), src)
        elif method == "NOTIFY":
            self.transport.send(response_to(req, 200, "OK"), src)
        else:
            self.transport.send(response_to(req, 501, "Not Implemented"), src)

    def _on_invite(self, req: SipMessage, src: Addr) -> None:
        known = self.dialogs.get(req.call_id)
        if known is not None:  # retransmitted INVITE: resend our final answer
            self.transport.send(known.response, src)
            return
        tag = new_tag()
        self.transport.send(response_to(req, 100, "Trying"), src)
        self.transport.send(response_to(req, 180, "Ringing", tag), src)
        ok = response_to(req, 200, "OK", tag)
        lhost, lport = self.transport.local_addr
        ok.add("Contact", f"<sip:{self.ext}@{lhost}:{lport}>")
        ok.add("Content-Type", "application/sdp")
        ok.body = minimal_sdp(lhost).encode()
        data = ok.encode()
        d = _Dialog(req, src, data, self.transport.timers.t1, to_tag=tag)
        self.dialogs[req.call_id] = d
        self.answered_calls += 1
        self.transport.send(data, src)
        # 2xx retransmission until ACK (RFC 3261 §13.3.1.4), gone after 64*T1.
        started = self.transport.clock.time()

        def again() -> None:
            if self.dialogs.get(req.call_id) is not d:
                return
            if self.transport.clock.time() - started >= self.transport.timers.timeout:
                d.timer = None
                return
            self.transport.send(data, src)
            d.interval = min(d.interval * 2, self.transport.timers.t2)
            d.timer = self.transport.clock.call_later(d.interval, again)

        d.timer = self.transport.clock.call_later(d.interval, again)


def minimal_sdp(host: str) -> str:
    """An audio offer answer with PCMU only; the phone never sends media."""
    sid = secrets.randbelow(10**9)
    return (
        f"v=0\r\no=- {sid} {sid} IN IP4 {host}\r\ns=ccdr\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
