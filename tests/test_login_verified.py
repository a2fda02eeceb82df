"""The cache of recently verified passwords (controlplane/login/verified.py), on a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from argon2 import PasswordHasher

from controlplane.errors import ConfigError, LoginRefused
from controlplane.login.manager import LoginManager
from controlplane.login.ports import Line
from controlplane.login.ratelimit import LoginRateLimiter, RateLimits
from controlplane.login.reads import KeyReads
from controlplane.login.sessions import SessionStore
from controlplane.login.verified import VerifiedPasswords
from controlplane.runtime.clock import FakeClock
from tests.fakes import FakePbx, MemoryDirectory
from tests.test_login_manager import TOPO

KEY = b"k" * 32


class CountingHasher(PasswordHasher):
    """The import profile's parameters (cheap in tests), counting argon2 verifications."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verifies = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verifies += 1
        return super().verify(hash, password)


async def test_remembered_only_for_the_same_account_hash_and_password(redis_client: Any) -> None:
    v = VerifiedPasswords(redis_client, redis_client.test_prefix, KEY, ttl_s=600)
    assert not await v.check("agent01", "$h1", "pw")
    await v.remember("agent01", "$h1", "pw")
    assert await v.check("agent01", "$h1", "pw")
    assert not await v.check("agent01", "$h1", "wrong")
    assert not await v.check("agent01", "$h2", "pw")  # a new hash: the entry stops matching
    assert not await v.check("agent02", "$h1", "pw")
    stored = await redis_client.get(f"{redis_client.test_prefix}verified:agent01")
    assert b"pw" not in stored and len(stored) == 64  # an HMAC, never the password
    assert 590 <= await redis_client.ttl(f"{redis_client.test_prefix}verified:agent01") <= 600
    # Another key (another deployment, or a rotated key): nothing matches.
    other = VerifiedPasswords(redis_client, redis_client.test_prefix, b"o" * 32, ttl_s=600)
    assert not await other.check("agent01", "$h1", "pw")
    assert "k" * 16 not in repr(v)


def test_a_short_key_or_ttl_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        VerifiedPasswords(None, "p:", b"short", ttl_s=60)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ttl"):
        VerifiedPasswords(None, "p:", KEY, ttl_s=0)  # type: ignore[arg-type]


async def test_a_returning_agent_logs_in_without_argon2(redis_client: Any) -> None:
    hasher = CountingHasher()
    d = MemoryDirectory(hasher, pool=10)
    d.add_agent("agent01", "pw-agent01")
    d.lines[("001122000001", "a")] = Line("a", "2001", "2001", "s")
    p = redis_client.test_prefix
    reads = KeyReads(redis_client)
    mgr = LoginManager("a", TOPO, d, SessionStore(redis_client, p, ttl_s=30),
                       LoginRateLimiter(redis_client, p, RateLimits(60, 50, 100), reads),
                       {"a": FakePbx("a"), "b": FakePbx("b")}, clock=FakeClock(1000), hasher=hasher,
                       verified=VerifiedPasswords(redis_client, p, KEY, ttl_s=600, reads=reads))
    try:
        await mgr.login("agent01", "pw-agent01", "00:11:22:00:00:01", "10.0.0.1")
        assert hasher.verifies == 1
        before = reads.batches
        await mgr.login("agent01", "pw-agent01", "00:11:22:00:00:01", "10.0.0.1")
        assert hasher.verifies == 1  # remembered: no argon2
        assert reads.batches == before + 1  # the rate limits and the entry in one MGET
        with pytest.raises(LoginRefused, match="wrong account or password"):
            await mgr.login("agent01", "not-it", "00:11:22:00:00:01", "10.0.0.1")
        assert hasher.verifies == 2  # a wrong password always goes to argon2
        # The password changed (a new hash): verified again, then remembered again.
        await d.set_password_hash("agent01", d.agents["agent01"].password_hash, hasher.hash("new-pw"))
        with pytest.raises(LoginRefused):
            await mgr.login("agent01", "pw-agent01", "00:11:22:00:00:01", "10.0.0.1")
        await mgr.login("agent01", "new-pw", "00:11:22:00:00:01", "10.0.0.1")
        await mgr.login("agent01", "new-pw", "00:11:22:00:00:01", "10.0.0.1")
        assert hasher.verifies == 4
    finally:
        await mgr.drain()


async def test_an_import_profile_hash_is_not_cached(redis_client: Any) -> None:
    """Cheap to verify and about to be upgraded: no entry written for it (its entry is read
    beside the rate limits, before the hash is known, and not used)."""
    d = MemoryDirectory(PasswordHasher(time_cost=1, memory_cost=512, parallelism=1), pool=10)
    d.add_agent("agent01", "pw-agent01")
    d.lines[("001122000001", "a")] = Line("a", "2001", "2001", "s")
    p = redis_client.test_prefix
    mgr = LoginManager("a", TOPO, d, SessionStore(redis_client, p, ttl_s=30),
                       LoginRateLimiter(redis_client, p, RateLimits(60, 50, 100)),
                       {"a": FakePbx("a"), "b": FakePbx("b")}, clock=FakeClock(1000), hasher=CountingHasher(),
                       verified=VerifiedPasswords(redis_client, p, KEY, ttl_s=600))
    try:
        await mgr.login("agent01", "pw-agent01", "00:11:22:00:00:01", "10.0.0.1")
        assert await redis_client.get(f"{p}verified:agent01") is None
    finally:
        await mgr.drain()
