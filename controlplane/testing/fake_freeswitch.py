"""A small protocol-accurate fake FreeSWITCH Event Socket server, for tests.

Frames are shaped as in the recorded traces: ``Content-Type: auth/request`` then
``Reply-Text: +OK accepted`` (``tests/fixtures/esl/tests__data__eventstream.txt``),
``api/response`` with ``Content-Length`` (``...NEventSocket...Example1.txt``), ``bgapi``
``+OK Job-UUID: ...`` then a ``BACKGROUND_JOB`` event with its own body
(``tests__data__eventstream2.txt``), and the ``text/disconnect-notice`` goodbye.
Listens on 127.0.0.1, port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from urllib.parse import quote

GOODBYE = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
TIER_LIST = "queue|agent|state|level|position\nsales@default|1001|Ready|1|1\n+OK\n"
AGENT_LIST = (
    "name|instance_id|uuid|type|contact|status|state|max_no_answer|wrap_up_time\n"
    "1001|single_box||callback|user/1001|Available|Waiting|3|10\n+OK\n"
)
REGISTRATIONS = (
    "reg_user,realm,token,url,expires,network_ip,network_port,network_proto,hostname,metadata\n"
    "1001,example.org,abc,sofia/internal/sip:1001@10.0.0.5:5060,1700000000,10.0.0.5,5060,udp,fs1,\n"
    "\n1 total.\n"
)


def _frame(headers: list[tuple[str, str]], body: str = "") -> bytes:
    raw = body.encode()
    lines = [f"{k}: {v}" for k, v in headers]
    if raw:
        lines.insert(0, f"Content-Length: {len(raw)}")
    return ("\n".join(lines) + "\n\n").encode() + raw


def event_plain(headers: list[tuple[str, str]], body: str = "") -> bytes:
    """A ``text/event-plain`` frame, values URL-encoded as FreeSWITCH sends them."""
    raw = body.encode()
    inner_lines = [f"{k}: {quote(v, safe='')}" for k, v in headers]
    if raw:
        inner_lines.append(f"Content-Length: {len(raw)}")
    inner = ("\n".join(inner_lines) + "\n\n").encode() + raw
    return (
        f"Content-Length: {len(inner)}\nContent-Type: text/event-plain\n\n".encode() + inner
    )


def event_json(headers: list[tuple[str, str]], body: str = "") -> bytes:
    obj: dict[str, str] = dict(headers)
    if body:
        obj["_body"] = body
    raw = json.dumps(obj).encode()
    return f"Content-Length: {len(raw)}\nContent-Type: text/event-json\n\n".encode() + raw


class FakeFreeswitch:
    """Answers auth, event, api and bgapi; tests can push events, go silent, disconnect."""

    def __init__(self, password: str = "ClueCon") -> None:
        self.password = password
        self.commands: list[str] = []  # every command received, in order
        self.silent = False  # read but never answer (a frozen FreeSWITCH)
        self.dying = False  # close new connections before the greeting (a killed one's last ms)
        self.event_format: str | None = None
        self.api_answers: dict[str, str] = {
            "status": "UP 0 years, 0 days, 0 hours, 1 minute\nFreeSWITCH is ready\n",
            "callcenter_config tier list": TIER_LIST,
            "callcenter_config agent list": AGENT_LIST,
            "show registrations": REGISTRATIONS,
        }
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.authed = asyncio.Event()
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """As a killed FreeSWITCH: the port refuses from the moment the links close."""
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        # Connection handlers outlive the server's close: end them here, or the loop
        # closes under them at the end of a test and asyncio logs a cancelled callback.
        # Closed links end their handlers by themselves (EOF); a cancelled one is logged.
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=0.5)
        for t in list(self._handlers):
            t.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def push(self, raw: bytes) -> None:
        for w in list(self._writers):
            w.write(raw)
            await w.drain()

    async def disconnect(self) -> None:
        """Say goodbye as FreeSWITCH does, then close every connection."""
        notice = _frame([("Content-Type", "text/disconnect-notice"),
                         ("Content-Disposition", "disconnect")], GOODBYE)
        for w in list(self._writers):
            w.write(notice)
            with contextlib.suppress(ConnectionError):
                await w.drain()
            w.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.dying:
            writer.close()
            return
        self.connections += 1
        self._writers.append(writer)
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
            me.add_done_callback(self._handlers.discard)
        authed = False
        try:
            writer.write(_frame([("Content-Type", "auth/request")]))
            await writer.drain()
            while True:
                try:
                    raw = await reader.readuntil(b"\n\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                cmd = raw.decode().strip()
                self.commands.append(cmd)
                if self.silent:
                    continue
                if not authed:
                    if cmd == f"auth {self.password}":
                        authed = True
                        self.authed.set()
                        writer.write(_frame([("Content-Type", "command/reply"),
                                             ("Reply-Text", "+OK accepted")]))
                    else:
                        writer.write(_frame([("Content-Type", "command/reply"),
                                             ("Reply-Text", "-ERR invalid")]))
                        await writer.drain()
                        writer.write(_frame([("Content-Type", "text/disconnect-notice")],
                                            GOODBYE))
                        await writer.drain()
                        writer.close()
                        return
                elif cmd.startswith("event "):
                    self.event_format = cmd.split()[1]
                    writer.write(_frame([("Content-Type", "command/reply"),
                                         ("Reply-Text", f"+OK event listener enabled "
                                                        f"{self.event_format}")]))
                    self.subscribed.set()
                elif cmd.startswith("api "):
                    answer = self.api_answers.get(cmd[4:], "-ERR command not found\n")
                    writer.write(_frame([("Content-Type", "api/response")], answer))
                elif cmd.startswith("bgapi "):
                    job = str(uuid.uuid4())
                    writer.write(_frame([("Content-Type", "command/reply"),
                                         ("Reply-Text", f"+OK Job-UUID: {job}"),
                                         ("Job-UUID", job)]))
                    await writer.drain()
                    result = f"+OK {uuid.uuid4()}\n"
                    ev = [("Event-Name", "BACKGROUND_JOB"), ("Job-UUID", job),
                          ("Job-Command", cmd.split()[1])]
                    writer.write(event_plain(ev, result) if self.event_format != "json"
                                 else event_json(ev, result))
                else:
                    writer.write(_frame([("Content-Type", "command/reply"),
                                         ("Reply-Text", "-ERR command not found")]))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
        finally:
            if writer in self._writers:
                self._writers.remove(writer)
            writer.close()
