"""One asyncio UDP socket shared by many SIP user agents.

10,000 phone lines share a single socket: responses are matched to their client
transaction by the top Via branch, incoming requests are handed to the line whose
user part is in the request-URI. Retransmission follows RFC 3261 §17.1.2 (non-INVITE
client transaction: Timer E from T1 doubling up to T2, Timer F = 64*T1); the timer
values are data (:class:`SipTimers`) and every timer goes through a :class:`Clock`,
so tests drive time by hand instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.errors import PbxUnreachable, ProtocolError

from .message import SipMessage, parse, uri_user
from .tokens import token_hex

log = logging.getLogger(__name__)

Addr = tuple[str, int]
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux
RECEIVE_BUFFER = 32 * 1024 * 1024
DRAIN_MAX = 1000  # datagrams read per wake-up at most
#: a send that fails on an earlier datagram's ICMP error is tried again (_attach): a new
#: error can arrive in between, a third failure is the send's own (no route)
SEND_TRIES = 3
#: ICMP errors read per wake-up at most. Each is cheap (no parse, one future failed) and ends
#: a transaction its timer would end later: at 1,000, a killed site's 10,000 "port
#: unreachable" took ten passes of a saturated loop, and 5,923 of 10,002 probes timed out
#: (0.5 s) with their error still queued (single-line 10,000-agent failover).
ERRORS_MAX = 20000
# ICMP errors about datagrams we sent (Linux, ip(7) IP_RECVERR): struct sock_extended_err.
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
SO_EE_ORIGIN_ICMP = 2
ICMP_DEST_UNREACH = 3
_EXTENDED_ERR = struct.Struct("=IBBBxII")  # ee_errno, ee_origin, ee_type, ee_code, pad, ee_info, ee_data
_BRANCH = re.compile(rb"branch=([^;,\s]+)")


@dataclass(frozen=True)
class SipTimers:
    """RFC 3261 §17 timer values, in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    #: Timer F / Timer B: give up on a transaction after this long (64*T1 by default).
    timeout: float = 32.0


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the stack needs of time: asyncio's loop satisfies it, tests pass a fake."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle: ...


class LoopClock:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()

    def time(self) -> float:
        return self._loop.time()

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        return self._loop.call_later(delay, callback)


class SipTimeout(PbxUnreachable):
    """No final response before Timer F fired."""


class SipUnreachable(SipTimeout):
    """The kernel reported an ICMP destination-unreachable for the request (a registrar's
    port with nothing listening: its Asterisk was killed). RFC 3261 §18.4 and §17.1.4: a
    transport error ends the transaction at once, without waiting for Timer F."""


class SipTransportClosed(SipTimeout):
    """The transport was closed: no request can be sent or answered any more."""


def new_branch() -> str:
    return "z9hG4bK" + token_hex(8)


def new_tag() -> str:
    return token_hex(6)


RequestHandler = Callable[[SipMessage, Addr], None]


@dataclass
class _ClientTx:
    data: bytes
    addr: Addr
    future: asyncio.Future[SipMessage]
    interval: float
    on_provisional: Callable[[SipMessage], None] | None = None
    #: called at once when the transaction ends, future settled (see ``request``)
    on_done: Callable[[asyncio.Future[SipMessage]], None] | None = None
    retransmit: TimerHandle | None = None
    give_up: TimerHandle | None = None
    sent: int = 1
    deadline: float = float("inf")  # when the transaction gives up (Timer F, or the caller's timeout)


@dataclass
class TransportStats:
    sent: int = 0
    received: int = 0
    retransmissions: int = 0
    malformed: int = 0
    unmatched: int = 0
    timeouts: int = 0
    unreachable: int = 0  # transactions ended by an ICMP destination-unreachable
    resent: int = 0  # sends failed by an earlier datagram's ICMP error, and sent again
    last_error: str = ""
    by_status: dict[int, int] = field(default_factory=dict)
    #: datagrams sent per "host METHOD" (responses as "host SIP/2.0"), retransmissions
    #: included: where a fleet's traffic goes during a failover (bench/failover)
    sent_to: dict[str, int] = field(default_factory=dict)


class SipTransport(asyncio.DatagramProtocol):
    """The shared socket. Create with :meth:`open`, or construct with a fake ``sendto`` in tests."""

    def __init__(
        self,
        *,
        timers: SipTimers | None = None,
        clock: Clock | None = None,
        sendto: Callable[[bytes, Addr], None] | None = None,
        local_addr: Addr = ("0.0.0.0", 0),
    ) -> None:
        self.timers = timers or SipTimers()
        self._clock = clock
        self._sendto = sendto
        self.local_addr = local_addr
        self._tx: dict[str, _ClientTx] = {}
        self._users: dict[str, RequestHandler] = {}
        #: lines bound to one peer host: a dual-line phone has the same extension at two
        #: sites (the lab's numbering), one line registered at each; the site's requests
        #: (its qualify OPTIONS, its INVITEs) must reach that site's line
        self._peer_users: dict[tuple[str, str], RequestHandler] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = TransportStats()

    @classmethod
    async def open(
        cls, host: str = "0.0.0.0", port: int = 0, *, timers: SipTimers | None = None, advertise: str | None = None
    ) -> SipTransport:
        """Bind the socket. ``advertise`` is the address put in Via/Contact (needed if ``host`` is 0.0.0.0).

        Not asyncio's datagram transport: it reads one datagram per event-loop iteration, so
        a loop busy with thousands of agents read ~1,000 datagrams a second while a registrar
        answered a mass move with several thousand; the kernel dropped the rest, the lines
        retransmitted, and a 1,000-agent move took 8 s to register instead of 1. Here every
        wake-up drains the socket."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # Thousands of lines share this socket: room for a registrar's burst. As root,
            # past net.core.rmem_max (SO_RCVBUFFORCE); otherwise as much as it allows.
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            except OSError:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            # The ICMP errors our datagrams cause, with the datagram they are about: a
            # killed registrar's port unreachable ends its transactions at once (RFC 3261
            # §18.4) instead of after the probe's timeout. Without it, an unconnected UDP
            # socket hears nothing of them.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        proto = cls(timers=timers)
        proto._attach(loop, sock)
        sock_host, sock_port = sock.getsockname()[:2]
        proto.local_addr = (advertise or sock_host, sock_port)
        return proto

    def _attach(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = loop

        def sendto(data: bytes, addr: Addr) -> None:
            for tries_left in reversed(range(SEND_TRIES)):
                try:
                    sock.sendto(data, addr)
                    return
                except (BlockingIOError, InterruptedError):  # a full send buffer: the retransmission covers it
                    self.stats.last_error = "send buffer full"
                    return
                except OSError as exc:
                    # With IP_RECVERR, an ICMP error about an earlier datagram, to any peer,
                    # fails the next send, and that datagram is not sent: each "port
                    # unreachable" from a killed site ate the next probe or REGISTER, to b
                    # as well (3 % of a drill's probes to a healthy b timed out). Reporting
                    # it cleared it: send again.
                    self.error_received(exc)
                    if tries_left:
                        self.stats.resent += 1

        self._sendto = sendto
        loop.add_reader(sock.fileno(), self._drain)

    def _drain(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(DRAIN_MAX):  # bounded: other work gets its turn
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.error_received(exc)
                continue
            self.datagram_received(data, addr)
        # Every wake-up, not only after recvfrom reported an error: a sendto can take the
        # socket's pending error first, and a non-empty error queue keeps the socket
        # readable (EPOLLERR) while recvfrom finds nothing: the loop would spin.
        self._drain_errors(sock)

    def _drain_errors(self, sock: socket.socket) -> None:
        for _ in range(ERRORS_MAX):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(2048, 512, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # no error queue here (not Linux)
                self.stats.last_error = type(exc).__name__
                return
            for level, kind, payload in ancdata:
                if level != socket.IPPROTO_IP or kind != IP_RECVERR or len(payload) < _EXTENDED_ERR.size:
                    continue
                errno_, origin, icmp_type, _code, _info, _data = _EXTENDED_ERR.unpack_from(payload)
                if origin == SO_EE_ORIGIN_ICMP and icmp_type == ICMP_DEST_UNREACH:
                    self._unreachable(data, (str(addr[0]), int(addr[1])), errno_)

    def _unreachable(self, quoted: bytes, addr: Addr, errno_: int) -> None:
        """End the transaction whose datagram an ICMP unreachable quotes (the start of the
        request, up to ~500 bytes: its top Via and branch come first)."""
        m = _BRANCH.search(quoted)
        if m is None:
            return
        branch = m.group(1).decode("ascii", "replace")
        tx = self._tx.get(branch)
        if tx is None or tx.addr != addr:
            return
        del self._tx[branch]
        self._finish(tx)
        self.stats.unreachable += 1
        method = quoted.split(b" ", 1)[0].decode("ascii", "replace")
        self._settle(tx, SipUnreachable(f"{method} to {addr[0]}:{addr[1]}: {os.strerror(errno_)} (ICMP)"))

    @property
    def clock(self) -> Clock:
        if self._clock is None:
            self._clock = LoopClock()
        return self._clock

    # -- asyncio.DatagramProtocol ---------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        udp: asyncio.DatagramTransport = transport  # type: ignore[assignment]
        self._udp = udp
        self._sendto = udp.sendto

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable and the like: the transaction's timer will report it.
        self.stats.last_error = type(exc).__name__

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        src: Addr = (str(addr[0]), int(addr[1]))
        self.stats.received += 1
        if not data.strip():  # RFC 5626 keep-alive CRLF
            return
        try:
            msg = parse(data)
        except ProtocolError as e:
            self.stats.malformed += 1
            log.debug("dropped malformed SIP datagram from %s: %s", src, e)
            return
        if msg.is_request:
            self._dispatch_request(msg, src)
        else:
            self._dispatch_response(msg)

    def close(self) -> None:
        for tx in list(self._tx.values()):
            self._finish(tx)
            self._settle(tx, None)
        self._tx.clear()
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            self._sendto = None
        if self._udp is not None:
            self._udp.close()
            # A refresh that starts after this gets SipTransportClosed (a failed
            # registration), not an AttributeError from inside a closed asyncio transport.
            self._sendto = None

    # -- users ------------------------------------------------------------------
    def bind_user(self, user: str, handler: RequestHandler, peer: str | None = None) -> None:
        """Requests for ``user`` go to ``handler``; with ``peer``, only those from that host
        (a binding to a peer comes before the user's binding for any peer)."""
        if peer is None:
            self._users[user] = handler
        else:
            self._peer_users[(user, peer)] = handler

    def unbind_user(self, user: str, peer: str | None = None) -> None:
        if peer is None:
            self._users.pop(user, None)
        else:
            self._peer_users.pop((user, peer), None)

    def _dispatch_request(self, msg: SipMessage, src: Addr) -> None:
        user = uri_user(msg.uri or "")
        handler = self._peer_users.get((user, src[0])) if self._peer_users else None
        if handler is None:
            handler = self._users.get(user)
        if handler is None:
            self.stats.unmatched += 1
            if msg.method != "ACK":
                self.send(response_to(msg, 404, "Not Found"), src)
            return
        handler(msg, src)

    # -- sending ----------------------------------------------------------------
    def send(self, msg: SipMessage | bytes, addr: Addr) -> None:
        if self._sendto is None:
            raise SipTransportClosed("SIP transport is closed")
        self.stats.sent += 1
        data = msg if isinstance(msg, bytes) else msg.encode()
        key = f"{addr[0]} {data[:data.find(b' ')].decode('ascii', 'replace')}"
        self.stats.sent_to[key] = self.stats.sent_to.get(key, 0) + 1
        self._sendto(data, addr)

    def request(
        self, msg: SipMessage, addr: Addr, on_provisional: Callable[[SipMessage], None] | None = None,
        timeout: float | None = None, on_done: Callable[[asyncio.Future[SipMessage]], None] | None = None,
    ) -> asyncio.Future[SipMessage]:
        """Start a non-INVITE client transaction; the future gets the final response or :class:`SipTimeout`.

        ``timeout`` shortens Timer F for this transaction (a liveness probe wants an answer
        within a second, not 32 s). ``on_done(future)`` is called as soon as the future is
        settled, from the code that settles it (the read of the answer or ICMP error, the
        timer, ``close``): a future's own done-callbacks run one pass of the event loop
        later, and in a 10,000-agent failover a pass of the simulator's saturated loop took
        most of a second (the probe's outcome is the second signal of a confirmation)."""
        branch = msg.top_branch
        if not branch:
            raise ValueError("request needs a Via with a branch")
        fut: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()
        tx = _ClientTx(msg.encode(), addr, fut, self.timers.t1, on_provisional, on_done)
        self._tx[branch] = tx
        self.send(tx.data, addr)
        limit = self.timers.timeout if timeout is None else timeout
        tx.deadline = self.clock.time() + limit
        self._schedule_retransmit(branch, tx)
        tx.give_up = self.clock.call_later(limit, lambda: self._timeout(branch, msg.method or "", limit))
        return fut

    def _schedule_retransmit(self, branch: str, tx: _ClientTx) -> None:
        """Timer E, unless the transaction is over by then: a liveness probe's timeout (0.5 s)
        equals T1, and each of 10,000 probes to a dead registrar sent one more datagram into
        it at the instant it gave up, in the seconds a mass failover is confirmed."""
        if self.clock.time() + tx.interval < tx.deadline:
            tx.retransmit = self.clock.call_later(tx.interval, lambda: self._retransmit(branch))

    def _retransmit(self, branch: str) -> None:
        tx = self._tx.get(branch)
        if tx is None:
            return
        self.stats.retransmissions += 1
        tx.sent += 1
        self.send(tx.data, tx.addr)
        tx.interval = min(tx.interval * 2, self.timers.t2)
        self._schedule_retransmit(branch, tx)

    def _timeout(self, branch: str, method: str, limit: float) -> None:
        tx = self._tx.pop(branch, None)
        if tx is None:
            return
        self._finish(tx)
        self.stats.timeouts += 1
        self._settle(tx, SipTimeout(f"no final response to {method} from {tx.addr[0]}:{tx.addr[1]} in {limit} s"))

    @staticmethod
    def _finish(tx: _ClientTx) -> None:
        for h in (tx.retransmit, tx.give_up):
            if h is not None:
                h.cancel()

    def _dispatch_response(self, msg: SipMessage) -> None:
        tx = self._tx.get(msg.top_branch)
        if tx is None:
            self.stats.unmatched += 1  # late retransmission of a final response
            return
        assert msg.status is not None
        self.stats.by_status[msg.status] = self.stats.by_status.get(msg.status, 0) + 1
        if msg.status < 200:
            # Proceeding: keep retransmitting, but at T2 (RFC 3261 §17.1.2.2).
            tx.interval = self.timers.t2
            if tx.on_provisional is not None:
                tx.on_provisional(msg)
            return
        del self._tx[msg.top_branch]
        self._finish(tx)
        self._settle(tx, msg)

    @staticmethod
    def _settle(tx: _ClientTx, outcome: SipMessage | Exception | None) -> None:
        """End a transaction's future (a response, an error, or cancelled: None), then tell
        its ``on_done`` at once."""
        if not tx.future.done():
            if outcome is None:
                tx.future.cancel()
            elif isinstance(outcome, Exception):
                tx.future.set_exception(outcome)
            else:
                tx.future.set_result(outcome)
        if tx.on_done is None:
            return
        try:
            tx.on_done(tx.future)
        except Exception:  # as asyncio does for a callback: logged, the read goes on
            log.exception("SIP transaction's on_done callback failed")

    @property
    def pending(self) -> int:
        return len(self._tx)


def response_to(req: SipMessage, status: int, reason: str, to_tag: str | None = None) -> SipMessage:
    """A response copying Via/From/To/Call-ID/CSeq from ``req`` (RFC 3261 §8.2.6.2)."""
    resp = SipMessage(status=status, reason=reason)
    for v in req.getall("Via"):
        resp.add("Via", v)
    resp.add("From", req.get("From") or "")
    to = req.get("To") or ""
    if to_tag and ";tag=" not in to:
        to = f"{to};tag={to_tag}"
    resp.add("To", to)
    resp.add("Call-ID", req.call_id)
    resp.add("CSeq", req.get("CSeq") or "")
    return resp
