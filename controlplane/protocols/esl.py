"""The FreeSWITCH event socket (ESL) wire format: incremental, lossless parser. Pure.

A message is a header block (``Key: Value`` lines, LF) ended by an empty line;
if it has ``Content-Length``, that many BYTES of body follow (so a body's UTF-8
character split across reads is kept: bodies are decoded only when complete).
Content types seen in tests/fixtures/esl/: ``auth/request``, ``command/reply``,
``api/response``, ``text/event-plain``, ``text/event-json``,
``text/disconnect-notice``, ``text/rude-rejection``.

``text/event-plain`` bodies are header blocks again, with URL-encoded values,
and an event may carry its own ``Content-Length`` body (``BACKGROUND_JOB``):
:func:`decode_event_plain` turns one into a Frame; :func:`decode_event_json`
does the same for ``text/event-json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from urllib.parse import unquote

from controlplane.errors import ProtocolError
from controlplane.protocols.frame import Frame

DEFAULT_MAX_BODY = 16 * 1024 * 1024


class EslParser:
    __slots__ = ("_base", "_buf", "_pending", "errors", "max_body", "on_error")

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY,
                 on_error: Callable[[ProtocolError], None] | None = None) -> None:
        self._buf = bytearray()
        self._base = 0
        self._pending: tuple[list[tuple[str, str]], int, int, int] | None = None  # items, offset, body_start, length
        self.max_body = max_body
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
        while True:
            if self._pending is not None:
                items, offset, start, length = self._pending
                start -= self._base  # stored as a stream offset
                if len(buf) - start < length:
                    break
                body = bytes(buf[start : start + length]).decode("utf-8", "replace")
                out.append(Frame(items, body, offset))
                pos = start + length
                self._pending = None
                continue
            while pos < len(buf) and buf[pos] == 10:  # stray LFs between messages
                pos += 1
            if pos >= len(buf):
                break
            end = buf.find(b"\n\n", pos)
            if end < 0:
                if len(buf) - pos > 1024 * 1024:
                    self._error("ESL header block longer than 1 MiB; dropped", self._base + pos)
                    pos = len(buf)
                break
            offset = self._base + pos
            block = bytes(buf[pos:end])
            pos = end + 2
            parsed = _headers(block.decode("utf-8", "replace"), unquote_values=False)
            if parsed is None:
                # Garbage before a header block (a body longer than its Content-Length said,
                # tests__data__eventstream2.txt): report it, keep the header lines after it.
                cut = block.rfind(b"\n", 0, _last_bad_line_end(block)) + 1
                self._error("malformed ESL message: a header line without ':'", offset)
                rest = _headers(block[cut:].decode("utf-8", "replace"), unquote_values=False) if cut else None
                if not rest:
                    continue
                parsed = rest
                offset += cut
            cl = _content_length(parsed)
            if cl is None:
                out.append(Frame(parsed, "", offset))
                continue
            if cl < 0 or cl > self.max_body:
                self._error(f"ESL Content-Length {cl} out of range", offset)
                continue
            self._pending = (parsed, offset, self._base + pos, cl)
        if pos:
            del buf[:pos]
            self._base += pos
        return out


def _headers(text: str, unquote_values: bool) -> list[tuple[str, str]] | None:
    items: list[tuple[str, str]] = []
    for line in text.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep or not key or " " in key:  # header names never hold spaces
            return None
        value = value[1:] if value.startswith(" ") else value
        items.append((key, unquote(value) if unquote_values else value))
    return items


def _last_bad_line_end(block: bytes) -> int:
    """Byte index just past the last line of ``block`` that has no ':'."""
    end = 0
    start = 0
    for line in block.split(b"\n"):
        stop = start + len(line) + 1
        if line.strip() and (b":" not in line or b" " in line.split(b":", 1)[0]):
            end = stop
        start = stop
    return min(end, len(block))


def _content_length(items: list[tuple[str, str]]) -> int | None:
    for k, v in items:
        if k.lower() == "content-length":
            try:
                return int(v.strip())
            except ValueError:
                return -1
    return None


def parse_esl(data: bytes) -> tuple[list[Frame], list[ProtocolError]]:
    """Parse a whole capture; a last header block without its empty line is taken as complete."""
    p = EslParser()
    frames = p.feed(data)
    if p._buf.strip(b"\n") and p._pending is None:
        frames += p.feed(b"\n\n")
    return frames, p.errors


def decode_event_plain(frame: Frame) -> Frame:
    """The event inside a ``text/event-plain`` message: headers URL-decoded, plus its own body.

    Lines without ':' inside an event (``tests__data__eventstream2.txt`` has a
    ``--`` line) are skipped rather than losing the event.
    """
    text = frame.body
    head, sep, rest = text.partition("\n\n")
    items: list[tuple[str, str]] = []
    for line in head.split("\n"):
        key, colon, value = line.rstrip("\r").partition(":")
        if colon and key:
            items.append((key, unquote(value[1:] if value.startswith(" ") else value)))
    body = ""
    cl = _content_length(items)
    if cl is not None and cl >= 0 and sep:
        raw = rest.encode("utf-8")
        body = raw[:cl].decode("utf-8", "replace")
    return Frame(items, body, frame.offset)


def decode_event_json(frame: Frame) -> Frame:
    """The event inside a ``text/event-json`` message (``_body`` becomes the body)."""
    try:
        obj = json.loads(frame.body)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"text/event-json body is not JSON: {exc.msg}", frame.offset) from None
    if not isinstance(obj, dict):
        raise ProtocolError("text/event-json body is not an object", frame.offset)
    body = obj.pop("_body", "")
    items: list[tuple[str, str]] = []
    for k, v in obj.items():
        if isinstance(v, list):  # repeated headers arrive as arrays
            items.extend((k, str(x)) for x in v)
        else:
            items.append((k, str(v)))
    return Frame(items, str(body), frame.offset)


def serialize_command(command: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """One ESL command (``api status``, ``bgapi ...``, ``event plain ...``); a line break
    in the command or a header would start another command, so it is refused."""
    if "\n" in command or "\r" in command or not command.strip():
        raise ProtocolError("ESL command: must be one non-empty line")
    lines = [command]
    for k, v in headers:
        if not k or ":" in k or any(c in k + v for c in "\r\n"):
            raise ProtocolError(f"ESL header {k!r}: line breaks and ':' in names are not allowed")
        lines.append(f"{k}: {v}")
    return ("\n".join(lines) + "\n\n").encode("utf-8")
