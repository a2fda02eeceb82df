"""A tiny blocking AMI client for the lab's own health checks.

The lab must be able to say "AMI answers" without the controller's runtime (the
lab sits below it), so this is a minimal synchronous exchange: banner, Login,
one action, Logoff. It is not the adapter: it neither pipelines nor listens.
"""

from __future__ import annotations

import socket
import time

from controlplane.errors import LabError


class AmiProbe:
    def __init__(self, host: str, port: int, timeout: float = 2.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.banner = self._line()
        self._seq = 0

    def _line(self) -> str:
        while b"\r\n" not in self.buf:
            self._recv()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise LabError("AMI closed the connection")
        self.buf += chunk

    def frame(self) -> dict[str, str]:
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        out: dict[str, str] = {}
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            k, _, v = line.partition(":")
            out.setdefault(k.strip(), v.strip())
        return out

    def action(self, name: str, **fields: str) -> dict[str, str]:
        """Send an action and return its response frame (events in between are skipped)."""
        self._seq += 1
        aid = f"lab-{self._seq}"
        lines = [f"Action: {name}", f"ActionID: {aid}"] + [f"{k}: {v}" for k, v in fields.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while True:
            f = self.frame()
            if f.get("ActionID") == aid and "Response" in f:
                return f

    def wait_event(self, name: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            f = self.frame()
            if f.get("Event") == name:
                return f
        raise LabError(f"no {name} event in {timeout} s")

    def close(self) -> None:
        try:
            self.sock.sendall(b"Action: Logoff\r\n\r\n")
        except OSError:
            pass
        self.sock.close()


def ami_login_ok(host: str, port: int, user: str, secret: str, timeout: float = 2.0) -> bool:
    """True if a Login succeeds and the PBX reports FullyBooted."""
    try:
        p = AmiProbe(host, port, timeout)
    except OSError:
        return False
    try:
        r = p.action("Login", Username=user, Secret=secret, Events="system")
        if r.get("Response") != "Success":
            return False
        p.wait_event("FullyBooted", timeout)
        return True
    except (OSError, LabError):
        return False
    finally:
        p.sock.close()
