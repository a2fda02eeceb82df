from __future__ import annotations

import asyncio

from controlplane.login.sessions import LiveSession, SessionStore


def _s(sid: str, account: str = "alice") -> LiveSession:
    return LiveSession(id=sid, account=account, site="a", extension="1001", vaid=7, mac="001122aabbcc",
                       queues=[("sales", 0), ("vip", 2)], created_at=100.0)


async def test_round_trip_and_heartbeat_and_expiry(redis_client) -> None:  # type: ignore[no-untyped-def]
    st = SessionStore(redis_client, redis_client.test_prefix, ttl_s=30)
    assert await st.put(_s("s1"), now=100.0, token="tok-1") is None
    got = await st.get("s1")
    assert got == _s("s1")
    assert await st.check_token("s1", "tok-1") and not await st.check_token("s1", "tok-2")
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


async def test_a_burst_of_moves_is_batched_and_each_gets_its_own_answer(redis_client) -> None:  # type: ignore[no-untyped-def]
    """A mass move's reads, moves and guarded state changes go out as pipelines, not one
    round trip each; a session that ended meanwhile is refused within the same batch."""
    st = SessionStore(redis_client, redis_client.test_prefix, ttl_s=30)
    for i in range(100):
        await st.put(_s(f"s{i}", account=f"u{i}"), now=0, token=f"t{i}")
    await st.claim("s7")  # ended before the move
    read = await asyncio.gather(*(st.with_token(f"s{i}") for i in range(100)))
    assert [tok for _, tok in read] == [f"t{i}" for i in range(100)]
    assert read[7][0] is None and read[8][0] is not None and read[8][0].account == "u8"
    moved = [LiveSession(id=f"s{i}", account=f"u{i}", site="b", extension=str(3000 + i), vaid=7,
                         mac="001122aabbcc", queues=[("sales-b", 0)]) for i in range(100)]
    ok = await asyncio.gather(*(st.move(s, now=10) for s in moved))
    assert ok == [i != 7 for i in range(100)]
    assert st._with_tokens.batches <= 3 and st._moves.batches <= 3  # not 100 round trips
    got = await asyncio.gather(*(st.get(f"s{i}") for i in range(100)))
    assert got[7] is None and all(g is not None and (g.site, g.extension) == ("b", str(3000 + i))
                                  for i, g in enumerate(got) if i != 7)
    # Marked registered only where each session is now: at b, not at a.
    at_a = await asyncio.gather(*(st.set_state(f"s{i}", "cti_registered", site="a") for i in range(50)))
    at_b = await asyncio.gather(*(st.set_state(f"s{i}", "cti_registered", site="b") for i in range(50, 100)))
    assert not any(at_a) and all(at_b)
    assert st._states_at.batches <= 6 and st._gets.batches <= 3
    assert (await st.get("s60")).state == "cti_registered"  # type: ignore[union-attr]
    assert (await st.get("s10")).state == "awaiting_phone"  # type: ignore[union-attr]
    beats = await asyncio.gather(*(st.heartbeat(f"s{i}", now=20) for i in range(100)))
    assert beats == [i != 7 for i in range(100)] and st._heartbeats.batches <= 3
    assert [s.id for s in await st.claim_expired(now=49)] == []  # deadlines pushed to 50
    assert len(await st.claim_expired(now=51)) == 99
    assert await redis_client.zscore(f"{redis_client.test_prefix}sess:deadlines", "s7") is None  # not revived


async def test_a_burst_of_logins_is_stored_in_one_multi_each_with_its_own_replaced(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Sessions stored together, with and without tokens; an account logging in twice in one
    batch: the later session replaces the earlier one, as if they had gone one by one."""
    st = SessionStore(redis_client, redis_client.test_prefix, ttl_s=30)
    await st.put(_s("old3", account="u3"), now=0)
    before = st._puts.batches
    calls = [(_s(f"s{i}", account=f"u{i}"), f"t{i}" if i % 2 else None) for i in range(50)]
    calls.append((_s("s3b", account="u3"), "t3b"))
    got = await asyncio.gather(*(st.put(s, now=5, token=t) for s, t in calls))
    assert got[3] == "old3" and got[50] == "s3" and got[:3] == [None] * 3 and got[4:50] == [None] * 46
    assert st._puts.batches - before <= 2
    assert await st.current("u3") == "s3b" and await st.current("u49") == "s49"
    read = await asyncio.gather(*(st.with_token(f"s{i}") for i in (1, 2, 49)))
    assert [(s.id if s else None, t) for s, t in read] == [("s1", "t1"), ("s2", None), ("s49", "t49")]
    assert await redis_client.zscore(f"{redis_client.test_prefix}sess:deadlines", "s10") == 35
