"""Who checks a password: the inventory's argon2 hash, or an external authenticator.

An agent imported with an empty ``password_hash`` is checked by the external
authenticator (the call center's directory: LDAP or AD behind a small HTTP hook),
so ccdr never holds those passwords. The hook contract is one request:

    POST <url>  {"account": "...", "password": "..."}
    200 -> accepted; 401 or 403 -> refused; anything else -> unavailable (503 to the client)

The password is only ever in the request body: never in the URL, never logged.
"""

from __future__ import annotations

from typing import Protocol

import aiohttp

from controlplane.errors import LoginRefused


class Authenticator(Protocol):
    async def authenticate(self, account: str, password: str) -> bool:
        """True: accepted; False: refused. Raises LoginRefused(authenticator_unavailable)."""
        ...


class HttpAuthenticator:
    def __init__(self, url: str, timeout_s: float = 3.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("authenticator url: must start with http:// or https://")
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def authenticate(self, account: str, password: str) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.post(self.url, json={"account": account, "password": password}) as r:
                if r.status == 200:
                    return True
                if r.status in (401, 403):
                    return False
                status = r.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise LoginRefused("authenticator_unavailable", 503,
                               f"external authenticator: {type(exc).__name__}") from None
        raise LoginRefused("authenticator_unavailable", 503, f"external authenticator answered {status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
