"""An asyncio FreeSWITCH Event Socket client (inbound mode) implementing :class:`PbxClient`.

One supervised task (``esl-link:<site>``) connects, authenticates, subscribes, re-reads
state, then reads frames while a probe task (``esl-probe:<site>``) sends ``api status``
every ``probe_interval_s``; no answer within ``probe_timeout_s`` means UNREACHABLE even
if TCP stays open.  The link reconnects with ``Timings.reconnect`` backoff (the first retry
at once when a link up for ``reconnect_at_once_after_s`` drops), except after a refused
password: that is AUTH_FAILED and stops (never a silent retry loop).

Replies: FreeSWITCH answers commands one by one, in order, so every command's reply
(``command/reply`` or ``api/response``) resolves the oldest waiting command (FIFO).
``bgapi`` replies carry ``Job-UUID``; its result arrives later in a ``BACKGROUND_JOB``
event matched by that id.  At most ``max_in_flight`` commands wait at once.  A command
waiting when the link drops fails with :class:`LinkLost`; nothing is re-sent
automatically (callers decide, knowing which commands are idempotent).

State re-read after each (re)connect: ``api callcenter_config tier list`` and
``api callcenter_config agent list`` (queue members) and ``api show registrations``
(contacts; one CSV table, simpler than ``sofia xmlstatus`` per profile).

Queue member mapping: interface = callcenter agent name; queue_add = ``tier add``
(penalty -> level), queue_remove = ``tier del``, queue_pause = ``agent set status``
``'On Break'`` / ``'Available'``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.errors import (
    LinkLost,
    PbxAuthError,
    PbxCommandError,
    PbxUnreachable,
    ProtocolError,
)
from controlplane.pbx.base import (
    Contact,
    EventKind,
    LinkState,
    PbxClient,
    PbxEvent,
    QueueMember,
    Subscription,
)
from controlplane.pbx.freeswitch.normalize import normalize
from controlplane.pbx.freeswitch.transport import Connect, Reader, Writer
from controlplane.protocols.esl import (
    EslParser,
    decode_event_json,
    decode_event_plain,
    serialize_command,
)
from controlplane.protocols.frame import Frame
from controlplane.settings import Timings

DEFAULT_EVENTS = (
    "BACKGROUND_JOB",
    "CUSTOM",
    "sofia::register",
    "sofia::unregister",
    "sofia::expire",
    "callcenter::info",
)
# A name passed as one api argument: no spaces or quotes, which would shift arguments.
_ARG = re.compile(r"^[A-Za-z0-9_.@+\-/:]+$")


@dataclass
class _Waiting:
    reply: asyncio.Future[Frame]
    bgapi: bool


class FreeswitchClient(PbxClient):
    def __init__(
        self,
        site: str,
        connect: Connect,
        password: str,
        timings: Timings | None = None,
        event_format: str = "plain",
        subscribe: tuple[str, ...] = DEFAULT_EVENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if event_format not in ("plain", "json"):
            raise ValueError("event_format must be 'plain' or 'json'")
        self.site = site
        self._connect = connect
        self._password = password  # never logged, never in messages
        self.timings = timings or Timings()
        self.event_format = event_format
        self.subscribe = subscribe
        self._clock = clock
        self._up_since = 0.0
        self._state = LinkState.CLOSED
        self._subscribers: list[asyncio.Queue[PbxEvent]] = []
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._jobs: dict[str, asyncio.Future[Frame]] = {}
        self._slots = asyncio.Semaphore(self.timings.max_in_flight)
        self._writer: Writer | None = None
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()
        self._closing = False
        self.members: list[QueueMember] = []
        self.registrations: list[Contact] = []
        self.sent: list[bytes] = []  # every command written, for tests and debugging

    # -- PbxClient ---------------------------------------------------------------------
    @property
    def state(self) -> LinkState:
        return self._state

    async def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._supervise(), name=f"esl-link:{self.site}")
        await self._first.wait()

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop_link()
        self._state = LinkState.CLOSED

    def events(self) -> Subscription:
        return Subscription(self._subscribers)

    async def ping(self) -> float:
        t0 = self._clock()
        await asyncio.wait_for(self.api("status"), self.timings.probe_timeout_s)
        return self._clock() - t0

    async def queue_add(
        self, queue: str, interface: str, name: str = "", penalty: int = 0, paused: bool = False
    ) -> None:
        q, a = _arg("queue", queue), _arg("interface", interface)
        await self.api(f"callcenter_config tier add {q} {a} {int(penalty) + 1} 1")
        if paused:
            await self.queue_pause(queue, interface, True)

    async def queue_remove(self, queue: str, interface: str) -> None:
        q, a = _arg("queue", queue), _arg("interface", interface)
        await self.api(f"callcenter_config tier del {q} {a}")

    async def queue_pause(
        self, queue: str, interface: str, paused: bool, reason: str = ""
    ) -> None:
        # mod_callcenter pauses an agent, not a tier: the queue is not part of the command.
        a = _arg("interface", interface)
        status = "'On Break'" if paused else "'Available'"
        await self.api(f"callcenter_config agent set status {a} {status}")

    async def queue_status(self, queue: str | None = None, member: str | None = None) -> list[QueueMember]:
        tiers = _rows(await self.api("callcenter_config tier list"), "|")
        agents = {r.get("name", ""): r for r in _rows(await self.api("callcenter_config agent list"), "|")}
        out = []
        for t in tiers:
            if (queue is not None and t.get("queue") != queue) or (member is not None and t.get("agent") != member):
                continue
            agent = agents.get(t.get("agent", ""), {})
            level = t.get("level", "1")
            out.append(
                QueueMember(
                    queue=t.get("queue", ""),
                    interface=t.get("agent", ""),
                    name=t.get("agent", ""),
                    penalty=max(0, int(level) - 1) if level.isdigit() else 0,
                    paused=agent.get("status", "").lower() == "on break",
                    status=agent.get("state", "") or t.get("state", ""),
                )
            )
        return out

    async def contacts(self) -> list[Contact]:
        rows = _rows(await self.api("show registrations"), ",")
        return [
            Contact(
                endpoint=f"{r.get('reg_user', '')}@{r.get('realm', '')}",
                uri=r.get("url", ""),
                status="registered",
            )
            for r in rows
        ]

    def known_contacts(self) -> set[str]:
        return {c.endpoint.split("@", 1)[0] for c in self.registrations}

    async def reload(self, module: str | None = None) -> None:
        await self.api(f"reload {_arg('module', module)}" if module else "reloadxml")

    async def originate(
        self,
        channel: str,
        context: str,
        exten: str,
        priority: int = 1,
        variables: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> Frame:
        for k, v in (variables or {}).items():
            if re.search(r"[,{}\s']", k + v):
                raise ProtocolError(f"originate variable {k!r} has a separator or space")
        vars_ = ",".join(f"{k}={v}" for k, v in (variables or {}).items())
        prefix = "{" + vars_ + "}" if vars_ else ""
        cmd = (
            f"originate {prefix}{_arg('channel', channel)} {_arg('exten', exten)} XML "
            f"{_arg('context', context)}"
        )
        return await asyncio.wait_for(self.bgapi(cmd), timeout_s)

    # -- commands ----------------------------------------------------------------------
    async def api(self, command: str) -> str:
        """``api COMMAND``; the reply body. ``-ERR ...`` raises PbxCommandError."""
        frame = await self._command(f"api {command}", bgapi=False)
        body = frame.body
        if body.startswith("-ERR") or body.startswith("-USAGE"):
            raise PbxCommandError(f"api {command.split(' ', 1)[0]}: {body.strip()[:200]}")
        return body

    async def bgapi(self, command: str) -> Frame:
        """``bgapi COMMAND``; the decoded BACKGROUND_JOB event (result in ``.body``)."""
        reply = await self._command(f"bgapi {command}", bgapi=True)
        job = reply.get("Job-UUID") or ""
        fut = self._jobs.get(job)
        if fut is None:
            raise PbxCommandError(f"bgapi: no Job-UUID in reply: {reply.get('Reply-Text')}")
        try:
            return await fut
        finally:
            self._jobs.pop(job, None)

    async def _command(self, command: str, bgapi: bool) -> Frame:
        async with self._slots:
            if self._state is not LinkState.UP or self._writer is None:
                raise PbxUnreachable(f"{self.site}: FreeSWITCH link is {self._state.value}")
            return await self._send(command, bgapi)

    async def _send(self, command: str, bgapi: bool = False) -> Frame:
        writer = self._writer
        if writer is None:
            raise LinkLost(f"{self.site}: link lost before sending")
        raw = serialize_command(command)
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(fut, bgapi))
        self.sent.append(raw)
        writer.write(raw)
        await writer.drain()
        return await fut

    # -- link --------------------------------------------------------------------------
    async def _supervise(self) -> None:
        attempt = 0
        while not self._closing:
            self._state = LinkState.CONNECTING
            was_up = False
            try:
                reader, writer = await asyncio.wait_for(
                    self._connect(), self.timings.connect_timeout_s
                )
                self._writer = writer
                was_up = await self._session(reader, writer)
                attempt = 0
            except PbxAuthError:
                self._drop_link()
                self._state = LinkState.AUTH_FAILED
                self._emit(EventKind.PBX_AUTH_FAILED, {})
                self._first.set()
                return
            except (OSError, TimeoutError, PbxUnreachable, LinkLost, ProtocolError) as exc:
                was_up = was_up or self._state is LinkState.UP
                self._drop_link()
                refused = isinstance(exc, ConnectionRefusedError)
                if was_up and isinstance(exc, LinkLost):
                    refused = await self._refuses()  # closed by FreeSWITCH: is it gone?
                self.refused = refused
                self._state = LinkState.UNREACHABLE
                self._emit(EventKind.PBX_DOWN, {"reason": type(exc).__name__, "refused": refused})
            self._first.set()
            if was_up:
                attempt = 0
            if was_up and self.timings.retry_at_once(self._clock() - self._up_since):
                continue
            await asyncio.sleep(self.timings.reconnect.delay(attempt, random.random()))
            attempt += 1

    async def _refuses(self) -> bool:
        """Whether the ESL port refuses a new connection now (the process is gone); see
        PbxClient.refused. A connection closed before FreeSWITCH's greeting (its
        ``auth/request``) counts as refused: a killed process's listener can outlive its
        sessions by milliseconds (seen with Asterisk in the lab; AsteriskClient._refuses).
        No greeting within ``refusal_check_s`` is not certain either way."""
        writer: Writer | None = None
        try:
            async with asyncio.timeout(self.timings.refusal_check_s):
                reader, writer = await self._connect()
                try:
                    return not await reader.read(1)
                except ConnectionResetError:
                    return True
        except ConnectionRefusedError:
            return True
        except (OSError, TimeoutError):
            return False
        finally:
            if writer is not None:
                writer.close()

    async def _session(self, reader: Reader, writer: Writer) -> bool:
        parser = EslParser()
        frames: asyncio.Queue[Frame | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    for f in parser.feed(data):
                        frames.put_nowait(f)
            finally:
                frames.put_nowait(None)

        pump_task = asyncio.create_task(pump(), name=f"esl-read:{self.site}")
        probe_task: asyncio.Task[None] | None = None
        try:
            first = await asyncio.wait_for(frames.get(), self.timings.connect_timeout_s)
            if first is None or first.get("Content-Type") != "auth/request":
                raise LinkLost(f"{self.site}: no auth/request from FreeSWITCH")
            dispatch = asyncio.create_task(self._dispatch(frames), name=f"esl-dispatch:{self.site}")
            try:
                reply = await asyncio.wait_for(
                    self._send(f"auth {self._password}"), self.timings.connect_timeout_s
                )
                if not (reply.get("Reply-Text") or "").startswith("+OK"):
                    raise PbxAuthError(f"{self.site}: FreeSWITCH refused the ESL password")
                subs = " ".join(self.subscribe)
                await asyncio.wait_for(
                    self._send(f"event {self.event_format} {subs}"), self.timings.connect_timeout_s
                )
                self._state = LinkState.UP
                self._up_since = self._clock()
                self.refused = False
                await asyncio.wait_for(self._reread(), self.timings.command_timeout_s)
                self._emit(EventKind.PBX_UP, {})
                self._first.set()  # start() returns once the link is up (or the first attempt failed)
                probe_task = asyncio.create_task(self._probe(), name=f"esl-probe:{self.site}")
                done, _ = await asyncio.wait(
                    {dispatch, probe_task}, return_when=asyncio.FIRST_COMPLETED
                )
                for finished in done:
                    finished.result()  # raise the reason the session ended
                raise LinkLost(f"{self.site}: FreeSWITCH closed the link")
            finally:
                dispatch.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await dispatch
        finally:
            for task in (pump_task, probe_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def _dispatch(self, frames: asyncio.Queue[Frame | None]) -> None:
        while True:
            frame = await frames.get()
            if frame is None:
                raise LinkLost(f"{self.site}: FreeSWITCH closed the link")
            ctype = (frame.get("Content-Type") or "").lower()
            if ctype in ("command/reply", "api/response"):
                if not self._waiting:
                    continue  # an unsolicited reply: nothing waits for it
                w = self._waiting.popleft()
                job = frame.get("Job-UUID")
                if w.bgapi and job:
                    self._jobs[job] = asyncio.get_running_loop().create_future()
                if not w.reply.done():
                    w.reply.set_result(frame)
            elif ctype in ("text/event-plain", "text/event-json"):
                try:
                    ev = decode_event_plain(frame) if ctype.endswith("plain") else (
                        decode_event_json(frame)
                    )
                except ProtocolError:
                    continue
                self._on_event(ev)
            elif ctype in ("text/disconnect-notice", "text/rude-rejection"):
                raise LinkLost(f"{self.site}: FreeSWITCH sent {ctype}")

    def _on_event(self, ev: Frame) -> None:
        if ev.get("Event-Name") == "BACKGROUND_JOB":
            fut = self._jobs.get(ev.get("Job-UUID") or "")
            if fut is not None and not fut.done():
                fut.set_result(ev)
            return
        pe = normalize(ev, self.site, self._clock())
        if pe is not None:
            self._publish(pe)

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self.timings.probe_interval_s)
            try:
                await asyncio.wait_for(self._send("api status"), self.timings.probe_timeout_s)
            except TimeoutError:
                raise PbxUnreachable(f"{self.site}: no answer to api status") from None

    async def _reread(self) -> None:
        self.members = await self.queue_status()
        self.registrations = await self.contacts()

    def _drop_link(self) -> None:
        err = LinkLost(f"{self.site}: link lost with the command in flight")
        while self._waiting:
            w = self._waiting.popleft()
            if not w.reply.done():
                w.reply.set_exception(err)
        for fut in self._jobs.values():
            if not fut.done():
                fut.set_exception(err)
        self._jobs.clear()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._writer = None

    def _emit(self, kind: EventKind, data: dict[str, object]) -> None:
        self._publish(PbxEvent(kind, self.site, self._clock(), dict(data)))

    def _publish(self, ev: PbxEvent) -> None:
        for q in self._subscribers:
            q.put_nowait(ev)


def _arg(field: str, value: str) -> str:
    if not _ARG.match(value):
        raise ProtocolError(f"{field} must be one word of [A-Za-z0-9_.@+-/:]")
    return value


def _rows(body: str, sep: str) -> list[dict[str, str]]:
    """A tabular ``api`` answer: a header line, rows, then a trailer. ``callcenter_config
    ... list`` separates with ``|`` and ends with ``+OK``; ``show ...`` is CSV and ends with a
    blank line and ``N total.``."""
    lines = [x for x in body.splitlines() if x and not x.startswith("+OK") and not x.endswith(" total.")]
    if not lines:
        return []
    head = lines[0].split(sep)
    return [dict(zip(head, row.split(sep), strict=False)) for row in lines[1:]]
