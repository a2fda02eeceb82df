"""A fake Asterisk Manager: real TCP on loopback, AMI framing, scripted behaviour.

It keeps queue members and contacts like Asterisk 22 does and answers with the
frames Asterisk 22 sends (captured in the lab: ``QueueMember`` with ``Location``
and ``Name``, ``No Contacts found`` as an Error). Tests can freeze it (TCP open,
no answers), drop connections, push events, and read every action received.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from controlplane.protocols.ami import AmiParser, serialize_action
from controlplane.protocols.frame import Frame

BANNER = b"Asterisk Call Manager/9.0.0\r\n"


def frame_bytes(items: list[tuple[str, str]]) -> bytes:
    return ("".join(f"{k}: {v}\r\n" for k, v in items) + "\r\n").encode()


@dataclass
class FakeAmi:
    username: str = "ccdr"
    secret: str = "s3cret"
    frozen: bool = False
    reply_queue_add: bool = True  # False: swallow QueueAdd (to test in-flight loss)
    #: the Filter action's forms this Asterisk takes: "advanced" (MatchCriteria, 21+) and the
    #: legacy regex, only "legacy", or "none" (an AMI user without the system permission)
    filters: str = "advanced"
    close_on: str | None = None  # close the connection when this action arrives
    #: close new connections before the banner (a killed Asterisk whose listener outlives
    #: its sessions for a few milliseconds)
    dying: bool = False
    slow: dict[str, float] = field(default_factory=dict)  # action -> seconds the session is busy
    members: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    contacts: dict[str, str] = field(default_factory=dict)  # endpoint -> uri
    received: list[Frame] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    server: asyncio.base_events.Server | None = None
    port: int = 0
    # Asterisk writes whole frames; a split push must not be interleaved with replies.
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self.drop_all()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def drop_all(self) -> None:
        for w in self.writers:
            w.close()
        self.writers.clear()

    def actions(self, name: str) -> list[Frame]:
        return [f for f in self.received if (f.get("Action") or "").lower() == name.lower()]

    async def push(self, items: list[tuple[str, str]], split_at: int | None = None) -> None:
        """Send an event to every client; ``split_at`` sends it in two writes at that byte."""
        data = frame_bytes(items)
        async with self.write_lock:
            await self._push(data, split_at)

    async def _push(self, data: bytes, split_at: int | None) -> None:
        for w in list(self.writers):
            if split_at is None:
                w.write(data)
            else:
                w.write(data[:split_at])
                await w.drain()
                await asyncio.sleep(0.02)
                w.write(data[split_at:])
            await w.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.dying:
            writer.close()
            return
        self.connections += 1
        self.writers.append(writer)
        writer.write(BANNER)
        parser = AmiParser(expect_banner=False)
        authed = False
        try:
            while data := await reader.read(65536):
                self.raw += data
                for f in parser.feed(data):
                    self.received.append(f)
                    if self.frozen:
                        continue
                    name = (f.get("Action") or "").lower()
                    if self.close_on and name == self.close_on.lower():
                        writer.close()
                        return
                    # Like Asterisk, a session handles its actions in order: a slow one
                    # holds up everything behind it on that session.
                    delay = self.slow.get(name, 0.0)
                    if delay:
                        await asyncio.sleep(delay)
                    out = self._answer(f, name, authed)
                    if name == "login" and out and out[0][0][1] == "Success":
                        authed = True
                    async with self.write_lock:
                        for items in out:
                            writer.write(frame_bytes(items))
                    if name == "login" and not authed:
                        await writer.drain()
                        writer.close()  # Asterisk ends the session after a failed login
                        return
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            if writer in self.writers:
                self.writers.remove(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, f: Frame, name: str, authed: bool) -> list[list[tuple[str, str]]]:
        aid = f.get("ActionID") or ""
        ok = [("Response", "Success"), ("ActionID", aid)]
        if name == "login":
            if f.get("Username") == self.username and f.get("Secret") == self.secret:
                return [[*ok, ("Message", "Authentication accepted")],
                        [("Event", "FullyBooted"), ("Privilege", "system,all"), ("Status", "Fully Booted")]]
            return [[("Response", "Error"), ("ActionID", aid), ("Message", "Authentication failed")]]
        if not authed:
            return [[("Response", "Error"), ("ActionID", aid), ("Message", "Permission denied")]]
        if name == "ping":
            return [[*ok, ("Ping", "Pong"), ("Timestamp", "1.0")]]
        if name == "queueadd":
            q, iface = f.get("Queue") or "", f.get("Interface") or ""
            if not self.reply_queue_add:
                return []
            if iface in self.members.setdefault(q, {}):
                return [[("Response", "Error"), ("ActionID", aid),
                         ("Message", "Unable to add interface: Already there")]]
            self.members[q][iface] = (f.get("MemberName") or iface, int(f.get("Penalty") or 0))
            return [[*ok, ("Message", "Added interface to queue")]]
        if name == "queueremove":
            q, iface = f.get("Queue") or "", f.get("Interface") or ""
            if self.members.get(q, {}).pop(iface, None) is None:
                return [[("Response", "Error"), ("ActionID", aid),
                         ("Message", "Unable to remove interface: Not there")]]
            return [[*ok, ("Message", "Removed interface from queue")]]
        if name == "queuestatus":
            qs = [f["Queue"]] if "Queue" in f else sorted(self.members)
            member = f.get("Member")
            out = [[*ok, ("EventList", "start"), ("Message", "Queue status will follow")]]
            n = 0
            for q in qs:
                out.append([("Event", "QueueParams"), ("Queue", q), ("ActionID", aid)])
                n += 1
                for iface, (mname, pen) in sorted(self.members.get(q, {}).items()):
                    if member and member != iface:
                        continue
                    out.append([("Event", "QueueMember"), ("Queue", q), ("Name", mname), ("Location", iface),
                                ("StateInterface", iface), ("Membership", "dynamic"), ("Penalty", str(pen)),
                                ("Status", "1"), ("Paused", "0"), ("PausedReason", ""), ("ActionID", aid)])
                    n += 1
            out.append([("Event", "QueueStatusComplete"), ("ActionID", aid), ("EventList", "Complete"),
                        ("ListItems", str(n))])
            return out
        if name == "pjsipshowcontacts":
            if not self.contacts:
                return [[("Response", "Error"), ("ActionID", aid), ("Message", "No Contacts found")]]
            out = [[*ok, ("EventList", "start"), ("Message", "A listing of Contacts follows")]]
            for ep, uri in sorted(self.contacts.items()):
                out.append([("Event", "ContactList"), ("ActionID", aid), ("ObjectType", "contact"),
                            ("Endpoint", ep), ("Uri", uri), ("Status", "NonQualified")])
            out.append([("Event", "ContactListComplete"), ("ActionID", aid), ("EventList", "Complete"),
                        ("ListItems", str(len(self.contacts)))])
            return out
        if name == "filter":
            advanced = f.get("MatchCriteria") is not None
            if self.filters == "none" or (advanced and self.filters != "advanced"):
                return [[("Response", "Error"), ("ActionID", aid), ("Message", "Permission denied")]]
            return [[*ok, ("Message", "Success")]]
        if name in ("reload", "originate", "queuepause"):
            return [[*ok, ("Message", "ok")]]
        return [[("Response", "Error"), ("ActionID", aid), ("Message", "Invalid/unknown command")]]


def action_bytes(name: str, fields: list[tuple[str, str]]) -> bytes:
    return serialize_action(name, fields)
