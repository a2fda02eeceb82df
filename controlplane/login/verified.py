"""Recently verified passwords: an agent's next login costs an HMAC and a Redis read, not argon2.

The login profile's argon2id (19 MiB, t=2) costs 20 ms of CPU per verification on the
project's 2-core machine: a shift-start storm of returning agents is bounded by it to about 50
logins a second per core, whatever else the service does. After a successful verification the
service stores, per account, an HMAC-SHA256 of (account, stored hash, password) under a key only
the login services hold (never in Redis, PostgreSQL or a log); a later login whose HMAC matches
is accepted without argon2.

What it costs in safety: someone holding both Redis's contents and the key can test passwords
at HMAC speed for the accounts verified within ``ttl_s``; with Redis alone, nothing. A new hash
(password change, or the upgrade from the import profile) changes the HMAC, so the entry stops
matching at once; a wrong password never writes one. Off unless a key is configured.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from redis.asyncio import Redis

from controlplane.errors import ConfigError
from controlplane.login.reads import KeyReads

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 16
#: a week: the next shift's login is the storm this is for (yesterday's verification)
VERIFIED_TTL_S = 7 * 24 * 3600.0
_DOMAIN = b"ccdr-verified-1"


class VerifiedPasswords:
    def __init__(self, redis: Redis, prefix: str, key: bytes, ttl_s: float, reads: KeyReads | None = None) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError([f"verification cache key: at least {MIN_KEY_BYTES} bytes, got {len(key)}"])
        if ttl_s < 1:
            raise ConfigError([f"verification cache ttl: at least 1 s, got {ttl_s}"])
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._key = key  # never logged, never stored
        # A storm's reads go out together (one MGET for what arrived meanwhile, the rate
        # limiter's too when the service shares ``reads``).
        self.reads = reads or KeyReads(redis)

    def __repr__(self) -> str:
        return f"VerifiedPasswords(prefix={self.prefix!r}, ttl_s={self.ttl_s})"

    def _k(self, account: str) -> str:
        return f"{self.prefix}verified:{account}"

    def _tag(self, account: str, stored_hash: str, password: str) -> bytes:
        msg = b"\0".join((_DOMAIN, account.encode(), stored_hash.encode(), password.encode()))
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest().encode()

    async def fetch(self, account: str) -> bytes | None:
        """The account's entry, to be checked by :meth:`matches`. A store that cannot be read
        gives None: a miss, and argon2 decides."""
        try:
            return (await self.reads.get(self._k(account)))[0]
        except Exception as exc:  # redis down: the slow path still works
            log.warning("verification cache unreadable: %s", type(exc).__name__)
            return None

    def matches(self, entry: bytes | None, account: str, stored_hash: str, password: str) -> bool:
        """True if ``entry`` says this password was verified against this hash within ``ttl_s``."""
        return entry is not None and hmac.compare_digest(entry, self._tag(account, stored_hash, password))

    async def check(self, account: str, stored_hash: str, password: str) -> bool:
        """:meth:`fetch` and :meth:`matches` in one."""
        return self.matches(await self.fetch(account), account, stored_hash, password)

    async def remember(self, account: str, stored_hash: str, password: str) -> None:
        """After argon2 accepted ``password`` for ``stored_hash``."""
        try:
            await self.redis.set(self._k(account), self._tag(account, stored_hash, password), ex=int(self.ttl_s))
        except Exception as exc:  # the login succeeded; the next one verifies again
            log.warning("verification cache not written: %s", type(exc).__name__)
