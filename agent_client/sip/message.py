"""Pure SIP message parse/build (RFC 3261 §7). No I/O.

Headers keep their order and repetitions (multiple Via); lookup is case-insensitive
and understands the compact forms (v, f, t, i, m, l, ...). A malformed datagram
raises :class:`ProtocolError` naming what is wrong; the transport drops it and
carries on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controlplane.errors import ProtocolError

# RFC 3261 §7.3.3 compact forms -> canonical names.
COMPACT = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "u": "Allow-Events",
}


def canonical(name: str) -> str:
    """Canonical lower-case key for a header name (compact form expanded)."""
    n = name.strip()
    return COMPACT.get(n.lower(), n).lower() if len(n) == 1 else n.lower()


@dataclass
class SipMessage:
    """A request (``method`` set) or a response (``status`` set)."""

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def get(self, name: str, default: str | None = None) -> str | None:
        key = canonical(name)
        for k, v in self.headers:
            if canonical(k) == key:
                return v
        return default

    def getall(self, name: str) -> list[str]:
        key = canonical(name)
        return [v for k, v in self.headers if canonical(k) == key]

    def add(self, name: str, value: str) -> None:
        self.headers.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every occurrence of ``name`` with one header, at the first position."""
        key = canonical(name)
        out: list[tuple[str, str]] = []
        done = False
        for k, v in self.headers:
            if canonical(k) == key:
                if not done:
                    out.append((name, value))
                    done = True
            else:
                out.append((k, v))
        if not done:
            out.append((name, value))
        self.headers = out

    def remove(self, name: str) -> None:
        key = canonical(name)
        self.headers = [(k, v) for k, v in self.headers if canonical(k) != key]

    # -- convenience -------------------------------------------------------
    @property
    def call_id(self) -> str:
        return self.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        raw = self.get("CSeq") or ""
        num, _, meth = raw.strip().partition(" ")
        try:
            return int(num), meth.strip()
        except ValueError:
            return 0, meth.strip()

    @property
    def top_branch(self) -> str:
        via = self.get("Via") or ""
        return param(via, "branch") or ""

    def encode(self) -> bytes:
        if self.is_request:
            start = f"{self.method} {self.uri} SIP/2.0"
        else:
            start = f"SIP/2.0 {self.status} {self.reason}"
        lines = [start]
        for k, v in self.headers:
            if canonical(k) != "content-length":
                lines.append(f"{k}: {v}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


def param(header_value: str, name: str) -> str | None:
    """A ``;name=value`` parameter of a header (after any <...> URI)."""
    tail = header_value[header_value.rindex(">") + 1 :] if ">" in header_value else header_value
    for part in tail.split(";")[1:]:
        k, _, val = part.partition("=")
        if k.strip().lower() == name.lower():
            return val.strip()
    return None


def uri_user(uri: str) -> str:
    """User part of a SIP URI, e.g. ``sip:1001@10.0.0.1:5060`` -> ``1001``."""
    u = uri.strip()
    if "<" in u:
        u = u[u.index("<") + 1 : u.index(">")] if ">" in u else u[u.index("<") + 1 :]
    if ":" in u:
        u = u.split(":", 1)[1]
    if "@" not in u:
        return ""
    return u.split("@", 1)[0].split(";", 1)[0]


def parse(data: bytes) -> SipMessage:
    """Parse one datagram. Raises :class:`ProtocolError` naming the problem."""
    if not data.strip():
        raise ProtocolError("empty SIP datagram")
    sep = data.find(b"\r\n\r\n")
    if sep < 0:
        # Tolerate bare-LF senders (RFC 3261 §7 says CRLF, some stacks differ).
        sep2 = data.find(b"\n\n")
        if sep2 < 0:
            raise ProtocolError("SIP datagram has no blank line ending the headers")
        head_b, body = data[:sep2], data[sep2 + 2 :]
    else:
        head_b, body = data[:sep], data[sep + 4 :]
    try:
        head = head_b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"SIP headers are not UTF-8 ({e.reason})", e.start) from None
    lines = head.replace("\r\n", "\n").split("\n")
    start = lines[0].strip()
    msg = SipMessage()
    if start.startswith("SIP/2.0 "):
        parts = start.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) != 3:
            raise ProtocolError(f"bad status line {start[:80]!r}: status code must be 3 digits")
        msg.status = int(parts[1])
        msg.reason = parts[2] if len(parts) > 2 else ""
    else:
        parts = start.split(" ")
        if len(parts) != 3 or parts[2] != "SIP/2.0" or not parts[0].isalpha():
            raise ProtocolError(f"bad request line {start[:80]!r}: expected 'METHOD URI SIP/2.0'")
        msg.method, msg.uri = parts[0].upper(), parts[1]
    for n, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if line[0] in " \t":  # header folding (RFC 3261 §7.3.1)
            if not msg.headers:
                raise ProtocolError(f"line {n}: continuation line before any header")
            k, v = msg.headers[-1]
            msg.headers[-1] = (k, v + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            raise ProtocolError(f"line {n}: malformed header {line[:60]!r} (expected 'Name: value')")
        msg.headers.append((name.strip(), value.strip()))
    clen = msg.get("Content-Length")
    if clen is not None:
        try:
            n_body = int(clen)
        except ValueError:
            raise ProtocolError(f"Content-Length is not a number: {clen[:20]!r}") from None
        if n_body < 0 or n_body > len(body):
            raise ProtocolError(f"Content-Length {n_body} but the datagram carries {len(body)} body bytes")
        body = body[:n_body]
    msg.body = body
    for required in ("Via", "Call-ID", "CSeq"):
        if msg.get(required) is None:
            raise ProtocolError(f"SIP message lacks the mandatory {required} header")
    return msg
