"""How the ESL client reaches FreeSWITCH: a connect function, swappable in tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol


class Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


Connect = Callable[[], Awaitable[tuple[Reader, Writer]]]


def tcp_connect(host: str, port: int) -> Connect:
    """A plain TCP connect function (the production transport)."""

    async def connect() -> tuple[Reader, Writer]:
        return await asyncio.open_connection(host, port)

    return connect
