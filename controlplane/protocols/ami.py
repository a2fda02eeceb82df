"""The AMI wire format: an incremental, lossless parser and an action serializer. Pure.

Framing, as seen in real traffic (files under tests/fixtures/ami/):
- a banner line ``Asterisk Call Manager/x.y.z`` opens every session;
- a frame is ``Key: Value`` lines ended by an empty line; lines end in CRLF on
  the wire, LF in some captures, and both are accepted;
- ``Response: Follows`` (Asterisk <= 13 ``Command``) carries raw output lines
  ended by ``--END COMMAND--``; that output may itself contain an empty line
  (``test__fixtures__ami.dump``), while some captures end a Follows frame at the
  first empty line with no marker (``getAmiFixtureQueues.raw``), so a Follows
  frame runs to the marker unless the next line after an empty one starts a new
  frame;
- two frames can arrive glued without their empty line (``getAmiFixtureQueues.raw``,
  frame 12: ``ListItems: 3`` then ``Response: Success``): a second ``Event`` or
  ``Response`` key starts a new frame, since no real frame carries two.

Bytes are decoded per complete frame, never per read, so a UTF-8 character split
across reads is kept. A malformed frame is reported (``errors``, with its byte
offset) and skipped; the next frame is parsed as usual.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from controlplane.errors import ProtocolError
from controlplane.protocols.frame import Frame

BANNER_PREFIX = b"Asterisk Call Manager"
END_COMMAND = b"--END COMMAND--"
_FOLLOWS = b"response: follows"
_KIND_KEYS = ("event", "response")
_EMPTY_LINE = re.compile(rb"\n\r?\n")
_NEW_FRAME = re.compile(rb"(?i)(event|response|action):")
_FOLLOWS_HEADERS = frozenset({"response", "privilege", "actionid", "message"})
DEFAULT_MAX_FRAME = 4 * 1024 * 1024


class AmiParser:
    """Feed bytes, get frames. ``errors`` collects malformed frames; ``on_error`` sees each."""

    __slots__ = ("_base", "_buf", "banner", "errors", "expect_banner", "max_frame", "on_error")

    def __init__(
        self,
        *,
        expect_banner: bool = True,
        max_frame: int = DEFAULT_MAX_FRAME,
        on_error: Callable[[ProtocolError], None] | None = None,
    ) -> None:
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self.banner: str | None = None
        self.expect_banner = expect_banner
        self.max_frame = max_frame
        self.errors: list[ProtocolError] = []
        self.on_error = on_error

    def _error(self, message: str, offset: int) -> None:
        err = ProtocolError(message, offset)
        self.errors.append(err)
        if self.on_error is not None:
            self.on_error(err)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        out: list[Frame] = []
        pos = 0
        n = len(buf)
        if self.expect_banner:
            nl = buf.find(b"\n")
            if nl < 0:
                return out
            if buf.startswith(BANNER_PREFIX):
                self.banner = buf[:nl].rstrip(b"\r").decode("utf-8", "replace")
                pos = nl + 1
            self.expect_banner = False
        while pos < n:
            c = buf[pos]
            if c == 10 or c == 13:  # empty lines between frames
                pos += 1
                continue
            if buf[pos : pos + 17].lower() == _FOLLOWS:
                end = self._follows_end(buf, pos)
                if end is None:
                    break
                self._parse_follows(bytes(buf[pos:end]), self._base + pos, out)
                pos = end
                continue
            # One search for the first empty line, whichever line ending: looking for
            # "\n\n" and "\n\r\n" separately scans to the end of the buffer for the style
            # that is absent, once per frame.
            m = _EMPTY_LINE.search(buf, pos)
            if m is None:
                if n - pos > self.max_frame:
                    self._error(f"AMI frame longer than {self.max_frame} bytes; dropped", self._base + pos)
                    pos = n
                break
            end = m.start() + 1
            self._parse(buf[pos:end], self._base + pos, out)
            pos = m.end()
        if pos:
            del buf[:pos]
            self._base += pos
        return out

    def finish(self) -> list[Frame]:
        """End of stream: whatever is buffered is taken as complete frames."""
        out: list[Frame] = []
        buf = bytes(self._buf).strip(b"\r\n")
        if buf:
            if buf[:17].lower() == _FOLLOWS:
                blank = min((i for i in (buf.find(b"\n\r\n"), buf.find(b"\n\n")) if i >= 0), default=-1)
                if END_COMMAND not in buf and blank >= 0:
                    self._parse_follows(buf[: blank + 1], self._base, out)
                    out += self.feed_rest(buf[blank + 1 :])
                else:
                    self._parse_follows(buf, self._base, out)
            else:
                out += self.feed_rest(buf)
        self._buf = bytearray()
        return out

    def feed_rest(self, data: bytes) -> list[Frame]:
        self._buf = bytearray()
        out = self.feed(data + b"\r\n\r\n")
        return out

    def _parse(self, chunk: bytearray | bytes, offset: int, out: list[Frame]) -> None:
        text = chunk.decode("utf-8", "replace")
        lines = text.split("\n")
        items: list[tuple[str, str]] = []
        append = items.append
        frame_offset = offset
        kinds = 0  # Event/Response keys seen in this frame
        for idx, line in enumerate(lines):
            if line and line[-1] == "\r":
                line = line[:-1]
            if not line or (line[0] in " \t" and line.isspace()):  # a lone " ": ..._agent_loggued_in.yaml
                continue
            key, sep, value = line.partition(":")
            if not sep or not key or key[0] in " \t":
                where = frame_offset if not items else offset + _line_offset(text, idx)
                self._error(f"malformed AMI frame: no 'Key: value' in line {line[:60]!r}", where)
                return
            # Only 5- and 8-letter keys can be Event/Response: skip lower() for the rest.
            if (len(key) == 5 or len(key) == 8) and key.lower() in _KIND_KEYS:
                if kinds and items:  # glued frames (see module docstring)
                    out.append(Frame(items, "", frame_offset))
                    items = []
                    append = items.append
                    frame_offset = offset + _line_offset(text, idx)
                kinds += 1
            append((key, value[1:] if value[:1] == " " else value))
        if items:
            out.append(Frame(items, "", frame_offset))

    @staticmethod
    def _follows_end(buf: bytearray, pos: int) -> int | None:
        """End (exclusive) of the Follows frame at ``pos``, or None if more bytes are needed."""
        search = pos
        while True:
            m = _EMPTY_LINE.search(buf, search)
            if m is None:
                return None
            blank, after = m.start(), m.end()
            marker = buf.find(END_COMMAND, pos, blank + 1)
            if marker >= 0:
                eol = buf.find(b"\n", marker)
                return eol + 1 if eol >= 0 else None
            # No marker before this empty line: does a new frame start after it?
            nxt = after
            while nxt < len(buf) and buf[nxt] in (10, 13):
                nxt += 1
            if nxt >= len(buf):
                return None  # output may go on, or a frame may come: the next read decides
            if _NEW_FRAME.match(bytes(buf[nxt : nxt + 16])):
                return blank + 1
            search = after

    def _parse_follows(self, raw: bytes, offset: int, out: list[Frame]) -> None:
        text = raw.decode("utf-8", "replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        items: list[tuple[str, str]] = []
        i = 0
        while i < len(lines):
            line = lines[i].rstrip("\r")
            key, sep, value = line.partition(":")
            if sep and key.lower() in _FOLLOWS_HEADERS:
                items.append((key, value[1:] if value.startswith(" ") else value))
                i += 1
                continue
            break
        body_lines = [ln.rstrip("\r") for ln in lines[i:]]
        while body_lines and body_lines[-1] == "":
            body_lines.pop()
        if body_lines and body_lines[-1] == END_COMMAND.decode():
            body_lines.pop()
        out.append(Frame(items, "\n".join(body_lines), offset))


def _line_offset(text: str, idx: int) -> int:
    """Byte offset of line ``idx`` of ``text`` (only computed for errors and glued frames)."""
    return len("\n".join(text.split("\n")[:idx]).encode()) + (1 if idx else 0)


def parse_ami(data: bytes, *, expect_banner: bool = True) -> tuple[list[Frame], list[ProtocolError]]:
    """Parse a whole capture. Returns (frames, errors)."""
    p = AmiParser(expect_banner=expect_banner)
    frames = p.feed(data)
    frames += p.finish()
    return frames, p.errors


def serialize_action(action: str, fields: Iterable[tuple[str, str]] = ()) -> bytes:
    """One AMI action, CRLF-framed. A CR or LF in any key or value would let input
    inject another header or action, so it is refused, naming the field."""
    parts = [f"Action: {_check('Action', action)}\r\n"]
    for key, value in fields:
        if not key or ":" in key or any(c in key for c in "\r\n"):
            raise ProtocolError(f"AMI field name {key!r} is not allowed")
        parts.append(f"{key}: {_check(key, str(value))}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8")


def _check(field: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ProtocolError(f"AMI field {field}: line breaks are not allowed in values")
    return value
