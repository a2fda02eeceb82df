"""Serve a recorded AMI or ESL trace to one client, for tests (``ccdr lab replay``).

AMI traces hold both sides (panoramisk's fixtures list the action sent, then the
replies): for each action the client sends, the next recorded action of the
same name is found, and the server frames recorded with that action's ActionID
are sent back with the ActionID rewritten to the client's. Events recorded
without an ActionID are sent in order, right after the reply they follow.

Traces with only the server's side are answered group by group: the next
unused frames sharing one ActionID.

ESL traces hold only the server's side: the server opens with the recorded
``auth/request`` if there is one, then answers each command the client sends
with the next recorded ``command/reply`` or ``api/response``, followed by the
events recorded after it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from controlplane.protocols.ami import AmiParser
from controlplane.protocols.esl import parse_esl
from controlplane.protocols.frame import Frame

AMI_BANNER = "Asterisk Call Manager/9.0.0"


def ami_frame_bytes(f: Frame) -> bytes:
    text = "".join(f"{k}: {v}\r\n" for k, v in f.items)
    if f.body:
        text += f.body + "\r\n--END COMMAND--\r\n"
    return (text + "\r\n").encode()


def _esl_bytes(f: Frame) -> bytes:
    head = "".join(f"{k}: {v}\n" for k, v in f.items if k.lower() != "content-length")
    body = f.body.encode()
    if body or "Content-Length" in f:
        head += f"Content-Length: {len(body)}\n"
    return head.encode() + b"\n" + body


@dataclass
class AmiReplay:
    trace: bytes
    served: list[Frame] = field(default_factory=list)  # actions received from the client

    def __post_init__(self) -> None:
        p = AmiParser()
        frames = p.feed(self.trace) + p.finish()
        self.banner = p.banner or AMI_BANNER
        self.frames = frames
        self.used: set[int] = set()

    def fresh(self) -> AmiReplay:
        """The same trace for another connection (ccdr's adapter opens a side session for long
        actions such as PJSIPShowContacts)."""
        twin = AmiReplay(b"")
        twin.banner, twin.frames, twin.served = self.banner, self.frames, self.served
        return twin

    def answer(self, action: Frame) -> list[bytes]:
        name = (action.get("Action") or "").lower()
        client_id = action.get("ActionID") or ""
        if name == "filter":
            # Session set-up ccdr sends and the recorded clients did not (an event filter):
            # answered as Asterisk does, not with a recorded reply meant for another action.
            return [ami_frame_bytes(Frame([("Response", "Success"), ("ActionID", client_id),
                                           ("Message", "Success")]))]
        for i, f in enumerate(self.frames):
            if i in self.used or (f.get("Action") or "").lower() != name:
                continue
            self.used.add(i)
            rec_id = f.get("ActionID")
            out = []
            for j in range(i + 1, len(self.frames)):
                g = self.frames[j]
                if "Action" in g:  # the next action of the client: this reply is complete
                    break
                gid = g.get("ActionID")
                if rec_id and gid == rec_id:
                    items = [(k, client_id if k.lower() == "actionid" else v) for k, v in g.items]
                    out.append(ami_frame_bytes(Frame(items, g.body)))
                    self.used.add(j)
                elif gid is None and j not in self.used and out:
                    out.append(ami_frame_bytes(g))
                    self.used.add(j)
            return out
        # Traces with only the server's side (most of panoramisk's fixtures): answer
        # with the next unused group of frames that share an ActionID.
        for i, f in enumerate(self.frames):
            rec_id = f.get("ActionID")
            if i in self.used or "Action" in f or not rec_id:
                continue
            out = []
            for j in range(i, len(self.frames)):
                g = self.frames[j]
                if j in self.used or "Action" in g:
                    continue
                if g.get("ActionID") == rec_id:
                    items = [(k, client_id if k.lower() == "actionid" else v) for k, v in g.items]
                    out.append(ami_frame_bytes(Frame(items, g.body)))
                    self.used.add(j)
            return out
        aid = [("ActionID", client_id)] if client_id else []
        return [ami_frame_bytes(Frame([("Response", "Error"), *aid, ("Message", "not in the replayed trace")]))]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((self.banner + "\r\n").encode())
        parser = AmiParser(expect_banner=False)
        while data := await reader.read(65536):
            for f in parser.feed(data):
                self.served.append(f)
                for chunk in self.answer(f):
                    writer.write(chunk)
            await writer.drain()
        writer.close()
        await writer.wait_closed()


@dataclass
class EslReplay:
    trace: bytes
    served: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.frames, _ = parse_esl(self.trace)
        self.pos = 0

    def opening(self) -> list[bytes]:
        if self.frames and self.frames[0].get("Content-Type") == "auth/request":
            self.pos = 1
            return [_esl_bytes(self.frames[0])]
        return []

    def answer(self) -> list[bytes]:
        out = []
        while self.pos < len(self.frames):
            f = self.frames[self.pos]
            self.pos += 1
            out.append(_esl_bytes(f))
            if f.get("Content-Type") in ("command/reply", "api/response"):
                break
        while self.pos < len(self.frames) and self.frames[self.pos].get("Content-Type") not in (
            "command/reply", "api/response", "auth/request"
        ):
            out.append(_esl_bytes(self.frames[self.pos]))
            self.pos += 1
        return out

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for chunk in self.opening():
            writer.write(chunk)
        buf = b""
        while data := await reader.read(65536):
            buf += data
            while b"\n\n" in buf:
                cmd, buf = buf.split(b"\n\n", 1)
                self.served.append(cmd.decode("utf-8", "replace"))
                for chunk in self.answer():
                    writer.write(chunk)
            await writer.drain()
        writer.close()
        await writer.wait_closed()


async def serve_once(replay: AmiReplay | EslReplay, host: str, port: int,
                     ready: asyncio.Future[int] | None = None) -> None:
    """Serve the trace to one client (each of its connections gets the whole trace;
    ccdr's AMI adapter opens a side session for long actions); return when the first
    connection closes."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    first = True

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal first
        rep = replay if first or isinstance(replay, EslReplay) else replay.fresh()
        first = False
        try:
            await rep.serve(r, w)
        except ConnectionError:
            pass
        finally:
            w.close()
            if not done.done():
                done.set_result(None)

    server = await asyncio.start_server(handle, host, port)
    if ready is not None:
        ready.set_result(server.sockets[0].getsockname()[1])
    async with server:
        await done


__all__ = ["AmiReplay", "EslReplay", "serve_once"]
