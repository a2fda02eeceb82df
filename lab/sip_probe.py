"""A one-shot SIP OPTIONS probe over UDP: does a registrar answer at all?"""

from __future__ import annotations

import secrets
import socket


def sip_options_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if any SIP response comes back to an out-of-dialog OPTIONS."""
    tag, branch, cid = secrets.token_hex(4), secrets.token_hex(6), secrets.token_hex(8)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            lhost, lport = s.getsockname()
            msg = (
                f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {lhost}:{lport};branch=z9hG4bK{branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:probe@{lhost}>;tag={tag}\r\n"
                f"To: <sip:{host}:{port}>\r\n"
                f"Call-ID: {cid}@{lhost}\r\n"
                "CSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            s.send(msg.encode())
            data = s.recv(4096)
        except OSError:
            return False
    return data.startswith(b"SIP/2.0 ")
