from __future__ import annotations

import asyncio

import pytest

from controlplane.login.decide import AgentProfile, SwitchRule, decide_site
from controlplane.login.ratelimit import LoginRateLimiter, RateLimits

AG = AgentProfile(account="alice", system="cards", region="east", skill_groups=("sales", "vip"))
UP = {"a": True, "b": True}


def test_local_by_default() -> None:
    d = decide_site(AG, "a", ["a", "b"], UP, [])
    assert (d.site, d.reason) == ("a", "local")


@pytest.mark.parametrize(
    ("rule", "moved"),
    [
        (SwitchRule("skill_group", "vip", "a", "b", id=1), True),
        (SwitchRule("skill_group", "support", "a", "b", id=1), False),
        (SwitchRule("system", "cards", "a", "b", id=1), True),
        (SwitchRule("system", "loans", "a", "b", id=1), False),
        (SwitchRule("region", "east", "a", "b", id=1), True),
        (SwitchRule("all", "", "a", "b", id=1), True),
        (SwitchRule("all", "", "b", "a", id=1), False),  # rule for logins at b
        (SwitchRule("all", "", "a", "b", enabled=False, id=1), False),
    ],
)
def test_rules_by_scope(rule: SwitchRule, moved: bool) -> None:
    d = decide_site(AG, "a", ["a", "b"], UP, [rule])
    assert d.site == ("b" if moved else "a")
    assert d.reason == ("rule:1" if moved else "local")


def test_most_specific_rule_wins() -> None:
    rules = [SwitchRule("all", "", "a", "c", id=1), SwitchRule("skill_group", "sales", "a", "b", id=2)]
    d = decide_site(AG, "a", ["a", "b", "c"], {"a": True, "b": True, "c": True}, rules)
    assert (d.site, d.reason) == ("b", "rule:2")


def test_local_pbx_down_goes_to_other_site() -> None:
    d = decide_site(AG, "a", ["a", "b"], {"a": False, "b": True}, [])
    assert (d.site, d.reason) == ("b", "local_pbx_down")


def test_rule_never_sends_to_a_down_site() -> None:
    d = decide_site(AG, "a", ["a", "b"], {"a": True, "b": False}, [SwitchRule("all", "", "a", "b", id=3)])
    assert (d.site, d.reason) == ("a", "local")


def test_no_site_up() -> None:
    d = decide_site(AG, "a", ["a", "b"], {"a": False, "b": False}, [])
    assert (d.site, d.reason) == (None, "no_site_up")


async def test_rate_limit_per_account_does_not_block_other_accounts(redis_client) -> None:  # type: ignore[no-untyped-def]
    rl = LoginRateLimiter(redis_client, redis_client.test_prefix, RateLimits(window_s=30, per_account=5, per_source=50))
    for _ in range(5):
        assert not await rl.blocked("mallory", "10.0.0.9")
        await rl.failed("mallory", "10.0.0.9")
    assert await rl.blocked("mallory", "10.0.0.9")
    assert await rl.blocked("mallory", "10.0.0.10")  # the account, from anywhere
    assert not await rl.blocked("bob", "10.0.0.9")  # same source, other account
    ttl = await redis_client.ttl(f"{redis_client.test_prefix}rl:acct:mallory")
    assert 0 < ttl <= 30


async def test_rate_limit_per_source(redis_client) -> None:  # type: ignore[no-untyped-def]
    rl = LoginRateLimiter(redis_client, redis_client.test_prefix, RateLimits(window_s=30, per_account=5, per_source=8))
    for i in range(8):
        await rl.failed(f"user{i}", "10.0.0.9")
    assert await rl.blocked("someone-else", "10.0.0.9")
    assert not await rl.blocked("someone-else", "10.0.0.7")


async def test_rate_limit_reads_in_flight_go_together_each_answer_its_own(redis_client) -> None:  # type: ignore[no-untyped-def]
    rl = LoginRateLimiter(redis_client, redis_client.test_prefix, RateLimits(window_s=30, per_account=2, per_source=3))
    for _ in range(2):
        await rl.failed("mallory", "10.0.0.1")
    await rl.failed("eve", "10.0.0.9")
    for i in range(2):
        await rl.failed(f"typo{i}", "10.0.0.9")  # 10.0.0.9: three failures, at its limit
    before = rl.reads.batches
    asked = [("mallory", "10.0.0.2"), ("bob", "10.0.0.1"), ("carol", "10.0.0.9"), ("eve", "10.0.0.3")] * 25
    got = await asyncio.gather(*(rl.blocked(a, s) for a, s in asked))
    assert got == [True, False, True, False] * 25
    assert rl.reads.batches - before <= 2  # one MGET alone, then the rest together
