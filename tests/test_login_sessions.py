from __future__ import annotations

import asyncio

from controlplane.login.sessions import LiveSession, SessionStore


def _s(sid: str, account: str = "alice") -> LiveSession:
    return LiveSession(id=sid, account=account, site="a", extension="1001", vaid=7, mac="001122aabbcc",
                       queues=[("sales", 0), ("vip", 2)], created_at=100.0)


async def test_round_trip_and_heartbeat_and_expiry(redis_client) -> None:  # type: ignore[no-untyped-def]
    st = SessionStore(redis_client, redis_client.test_prefix, ttl_s=30)
    assert await st.put(_s("s1"), now=100.0) is None
    got = await st.get("s1")
    assert got == _s("s1")
    assert await st.claim_expired(now=129.0) == []
    assert await st.heartbeat("s1", now=120.0)  # deadline -> 150
    assert await st.claim_expired(now=149.0) == []
    reaped = await st.claim_expired(now=151.0)
    assert [s.id for s in reaped] == ["s1"] and reaped[0].queues == [("sales", 0), ("vip", 2)]
    assert await st.get("s1") is None
    assert not await st.heartbeat("s1", now=152.0)  # gone: the client must log in again
    assert await redis_client.get(f"{redis_client.test_prefix}sess:acct:alice") is None


async def test_second_login_replaces_first(redis_client) -> None:  # type: ignore[no-untyped-def]
    st = SessionStore(redis_client, redis_client.test_prefix)
    await st.put(_s("s1"), now=0)
    assert await st.put(_s("s2"), now=1) == "s1"
    # Claiming the replaced session must not clear the account's pointer to the new one.
    await st.claim("s1")
    assert await redis_client.get(f"{redis_client.test_prefix}sess:acct:alice") == b"s2"


async def test_concurrent_reapers_claim_each_session_once(redis_client) -> None:  # type: ignore[no-untyped-def]
    st = SessionStore(redis_client, redis_client.test_prefix, ttl_s=1)
    for i in range(200):
        await st.put(_s(f"s{i}", account=f"u{i}"), now=0)
    results = await asyncio.gather(*(st.claim_expired(now=10, limit=1000) for _ in range(4)))
    ids = [s.id for r in results for s in r]
    assert sorted(ids) == sorted(f"s{i}" for i in range(200))  # each exactly once
    assert await st.count() == 0
