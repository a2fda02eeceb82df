"""Login manager and HTTP surface with real Redis and an in-memory PBX double."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from controlplane.errors import PbxCommandError
from controlplane.login.decide import SwitchRule
from controlplane.login.http import ADMISSION, build_app
from controlplane.login.manager import LoginManager, normalize_mac
from controlplane.login.ports import Line
from controlplane.login.ratelimit import LoginRateLimiter, RateLimits
from controlplane.login.sessions import SessionStore
from controlplane.pbx.base import EventKind, LinkState
from controlplane.runtime.clock import FakeClock
from controlplane.settings import parse_topology
from tests.fakes import FakePbx, MemoryDirectory

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
TOPO = parse_topology({
    "sites": [
        {"id": sid, "region": reg, "pbx": "asterisk", "ami": {"host": f"10.9.0.{i}"},
         "sip": {"host": f"10.9.0.{i}"}, "login_url": f"http://127.0.0.1:{8080 + i}"}
        for i, (sid, reg) in enumerate([("a", "east"), ("b", "west")], start=1)
    ]
})


class Env:
    def __init__(self, redis: Any) -> None:
        self.clock = FakeClock(1000)
        self.dir = MemoryDirectory(FAST, pool=50)
        self.pbx = {"a": FakePbx("a"), "b": FakePbx("b")}
        self.sessions = SessionStore(redis, redis.test_prefix, ttl_s=30)
        self.limiter = LoginRateLimiter(redis, redis.test_prefix, RateLimits(60, 5, 100))
        self.mgr = LoginManager("a", TOPO, self.dir, self.sessions, self.limiter, self.pbx,
                                clock=self.clock, hasher=FAST)
        for i in range(20):
            acct = f"agent{i:02d}"
            skills = (("sales", 0), ("vip", 3)) if i % 2 else (("support", 1),)
            self.dir.add_agent(acct, f"pw-{acct}", skills=skills, system="cards" if i < 10 else "loans")
            mac = f"0011220000{i:02x}"
            for site, base in (("a", 2000), ("b", 3000)):
                self.dir.lines[(mac, site)] = Line(site, str(base + i), str(base + i), f"sip-{i}")
        for g in ("sales", "vip", "support"):
            for site in ("a", "b"):
                self.dir.queue_map[(g, site)] = f"{g}-{site}"


@pytest.fixture
async def env(redis_client: Any) -> AsyncIterator[Env]:
    e = Env(redis_client)
    yield e
    await e.mgr.drain()


@pytest.fixture
async def client(env: Env) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_app(env.mgr, admin_token="admin-secret")
    async with TestClient(TestServer(app)) as c:
        yield c


def test_mac_forms() -> None:
    for raw in ("00:11:22:AA:BB:CC", "00-11-22-aa-bb-cc", "0011.22aa.bbcc", "001122AABBCC"):
        assert normalize_mac(raw) == "001122aabbcc"
    assert normalize_mac("00:11:22:AA:BB") is None and normalize_mac("zz1122aabbcc") is None


async def _login(c: TestClient[Any, Any], i: int, password: str | None = None) -> Any:
    acct = f"agent{i:02d}"
    r = await c.post("/v1/login", json={"account": acct, "password": password or f"pw-{acct}",
                                        "mac": f"00:11:22:00:00:{i:02x}"})
    return r.status, await r.json()


async def test_login_then_phone_registration_adds_members_and_reads_back(
    client: TestClient[Any, Any], env: Env
) -> None:
    status, body = await _login(client, 1)
    assert status == 200, body
    assert body["site"] == "a" and body["reason"] == "local" and body["extension"] == "2001"
    assert body["registrar"] == {"host": "10.9.0.1", "port": 5060, "transport": "udp"}
    assert body["queues"] == ["sales-a", "vip-a"] and body["virtual_agent_id"] == 1
    assert body["other_login_urls"] == ["http://127.0.0.1:8082"]
    # The phone's backup line: where the client registers while its move is answered.
    assert body["other_lines"] == [{"site": "b", "extension": "3001", "sip": {"username": "3001", "password": "sip-1"},
                                    "registrar": {"host": "10.9.0.2", "port": 5060, "transport": "udp"}}]
    assert env.pbx["a"].calls == []  # nothing before the phone registers
    ws = await client.ws_connect(f"/v1/session/{body['session_id']}/ws?token={body['token']}")
    hello = await ws.receive_json()
    assert hello["type"] == "hello" and hello["cti"] == "awaiting_phone"
    await env.mgr.on_event("a", env.pbx["a"].emit(EventKind.PHONE_REGISTERED, endpoint="2001"))
    await env.mgr.drain()
    assert env.pbx["a"].calls == [
        ("QueueAdd", "sales-a", "PJSIP/2001", "agent01/1", 0),
        ("QueueAdd", "vip-a", "PJSIP/2001", "agent01/1", 3),
        ("QueueStatus", "sales-a", None),  # read-backs are batched per queue (login.readback.ReadBack)
        ("QueueStatus", "vip-a", None),
    ]
    msg = await ws.receive_json()
    while msg["type"] == "heartbeat":
        msg = await ws.receive_json()
    assert msg == {"type": "cti", "state": "registered", "site": "a", "queues": ["sales-a", "vip-a"]}
    r = await client.post("/v1/logout", json={"session_id": body["session_id"], "token": body["token"]})
    assert r.status == 200
    assert env.pbx["a"].members == {"sales-a": {}, "vip-a": {}}
    assert await env.sessions.count() == 0 and env.dir.held == {}
    assert env.dir.history[body["session_id"]] == {
        "account": "agent01", "site": "a", "mac": "001122000001", "extension": "2001", "vaid": 1,
        "reason": "local", "end_reason": "logout"}
    await ws.close()


async def test_planned_switch_rule_sends_exactly_that_skill_group(client: TestClient[Any, Any], env: Env) -> None:
    env.dir.rule_list = [SwitchRule("skill_group", "vip", "a", "b", id=7)]
    for i in range(8):
        status, body = await _login(client, i)
        assert status == 200
        want = "b" if i % 2 else "a"  # odd agents have vip
        assert body["site"] == want, (i, body)
        assert body["reason"] == ("rule:7" if want == "b" else "local")


async def test_local_pbx_down_logs_in_at_other_site(client: TestClient[Any, Any], env: Env) -> None:
    env.pbx["a"].set_state(LinkState.UNREACHABLE)
    status, body = await _login(client, 2)
    assert status == 200 and body["site"] == "b" and body["reason"] == "local_pbx_down"
    assert body["extension"] == "3002" and body["registrar"]["host"] == "10.9.0.2"
    env.pbx["b"].set_state(LinkState.UNREACHABLE)
    status, body = await _login(client, 3)
    assert status == 503 and body["error"]["code"] == "pbx_unreachable"


async def test_wrong_passwords_rate_limited_other_accounts_still_work(
    client: TestClient[Any, Any], env: Env
) -> None:
    codes = [(await _login(client, 4, password="nope"))[1]["error"]["code"] for _ in range(8)]
    assert codes[:5] == ["bad_credentials"] * 5 and codes[5:] == ["rate_limited"] * 3
    status, body = await _login(client, 4)  # right password, but the account is locked
    assert status == 429 and body["error"]["code"] == "rate_limited"
    status, body = await _login(client, 5)  # another account from the same address
    assert status == 200


async def test_errors_have_stable_codes_and_leave_nothing_behind(client: TestClient[Any, Any], env: Env) -> None:
    good = {"account": "agent01", "password": "pw-agent01"}
    r = await client.post("/v1/login", json={**good, "mac": "ff:ff:ff:ff:ff:ff"})
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_mac"
    r = await client.post("/v1/login", json={"account": "agent01", "mac": "00:11:22:00:00:01"})
    assert r.status == 400
    assert (await r.json())["error"] == {"code": "bad_request", "message": "password: required, a non-empty string"}
    r = await client.post("/v1/login", data=b"{nope")
    assert r.status == 400 and (await r.json())["error"]["code"] == "bad_request"
    r = await client.post("/v1/login", json={"account": "ghost", "password": "x", "mac": "00:11:22:00:00:01"})
    assert r.status == 401 and (await r.json())["error"]["code"] == "bad_credentials"
    env.dir.free = []
    status, body = await _login(client, 6)
    assert status == 503 and body["error"]["code"] == "pool_exhausted"
    assert await env.sessions.count() == 0 and env.dir.held == {}


async def test_a_login_failing_at_the_session_store_leaves_nothing_behind(env: Env, monkeypatch: Any) -> None:
    """The ID and the history row are written first (one statement); the live session then
    fails to reach Redis: the ID goes back, the history says "failed", Redis holds nothing."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def broken(*_: Any, **__: Any) -> None:
        raise RedisConnectionError("redis went away")

    monkeypatch.setattr(env.sessions._puts, "fn", broken)
    free_before = list(env.dir.free)
    with pytest.raises(RedisConnectionError):
        await env.mgr.login("agent04", "pw-agent04", "00:11:22:00:00:04", "10.0.0.1")
    assert env.dir.held == {} and sorted(env.dir.free) == sorted(free_before)
    [h] = env.dir.history.values()
    assert h["account"] == "agent04" and h["end_reason"] == "failed"
    assert await env.sessions.count() == 0 and await env.sessions.current("agent04") is None


async def test_admin_sessions_needs_token_and_hides_secrets(client: TestClient[Any, Any], env: Env) -> None:
    await _login(client, 1)
    r = await client.get("/v1/sessions")
    assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"
    r = await client.get("/v1/sessions", headers={"Authorization": "Bearer admin-secret"})
    body = await r.json()
    assert r.status == 200 and [s["account"] for s in body["sessions"]] == ["agent01"]
    assert "sip-1" not in await r.text() and "token" not in body["sessions"][0]


async def test_admin_sessions_paged_by_cursor_and_filtered(client: TestClient[Any, Any], env: Env) -> None:
    admin = {"Authorization": "Bearer admin-secret"}
    for i in range(1, 6):
        assert (await _login(client, i))[0] == 200

    async def get(query: str) -> Any:
        r = await client.get(f"/v1/sessions?{query}", headers=admin)
        return r.status, await r.json()

    seen, after, pages = [], "", 0
    while True:
        status, body = await get(f"limit=2&after={after}")
        assert status == 200 and body["total"] == 5 and len(body["sessions"]) <= 2
        seen += [x["session_id"] for x in body["sessions"]]
        pages += 1
        if body["next"] is None:
            break
        after = body["next"]
        assert after == seen[-1]
    assert pages == 3 and seen == sorted(seen) and len(set(seen)) == 5
    status, body = await get("")
    assert [x["session_id"] for x in body["sessions"]] == seen and body["next"] is None
    status, body = await get("account=agent03")
    assert [x["account"] for x in body["sessions"]] == ["agent03"] and body["total"] == 1
    status, body = await get("site=a&state=awaiting_phone")
    assert body["total"] == 5
    status, body = await get("site=b")
    assert body == {"sessions": [], "total": 0, "next": None}
    for query, field in (("limit=0", "limit"), ("limit=lots", "limit"), ("limit=10001", "limit"),
                         ("sitee=a", "sitee")):
        status, body = await get(query)
        assert status == 400 and body["error"]["code"] == "bad_request"
        assert body["error"]["message"].startswith(f"{field}:"), body


async def test_dead_client_is_reaped_and_members_removed(client: TestClient[Any, Any], env: Env) -> None:
    _, body = await _login(client, 3)
    await env.mgr.on_event("a", env.pbx["a"].emit(EventKind.PHONE_REGISTERED, endpoint="2003"))
    await env.mgr.drain()
    assert "PJSIP/2003" in env.pbx["a"].members["sales-a"]
    await env.clock.advance(20)
    assert await env.mgr.heartbeat(body["session_id"])  # alive: deadline -> now + 30
    await env.clock.advance(25)
    assert await env.mgr.reap_once() == 0
    await env.clock.advance(10)  # no heartbeat for 35 s
    assert await env.mgr.reap_once() == 1
    assert env.pbx["a"].members["sales-a"] == {} and env.dir.held == {}
    r = await client.post("/v1/logout", json={"session_id": body["session_id"], "token": body["token"]})
    assert r.status == 401


async def test_second_login_replaces_first_session(client: TestClient[Any, Any], env: Env) -> None:
    _, first = await _login(client, 1)
    _, second = await _login(client, 1)
    await env.mgr.drain()
    assert first["session_id"] != second["session_id"]
    assert [s.id for s in await env.sessions.all()] == [second["session_id"]]
    assert list(env.dir.held) == [second["session_id"]]
    assert env.dir.history[first["session_id"]]["end_reason"] == "replaced"
    assert env.dir.history[second["session_id"]]["end_reason"] is None


async def test_service_status_aggregates_components_and_pushes_pbx_state(redis_client: Any) -> None:
    from controlplane.login.service import LoginService

    clock = FakeClock(0)
    d = MemoryDirectory(FAST)
    d.add_agent("agent01", "pw-agent01")
    d.lines[("001122000001", "a")] = Line("a", "2001", "2001", "s")
    d.queue_map[("sales", "a")] = "sales-a"
    pbx = {"a": FakePbx("a"), "b": FakePbx("b")}
    svc = LoginService("a", TOPO, d, pbx, redis_client, "tok", prefix=redis_client.test_prefix,
                       clock=clock, session_ttl_s=30)
    await svc.start_loops()
    async with TestClient(TestServer(svc.app)) as c:
        r = await c.get("/status")
        st = await r.json()
        assert r.status == 200 and st["healthy"] is True
        assert st["pbx"] == {"a": {"state": "up"}, "b": {"state": "up"}}
        assert set(st["tasks"]) == {"pbx-events-a", "pbx-events-b", "reaper", "push-relay"}
        status, body = await _login(c, 1)
        assert status == 200
        ws = await c.ws_connect(f"/v1/session/{body['session_id']}/ws?token={body['token']}")
        assert (await ws.receive_json())["type"] == "hello"
        # The phone registers: the event pump drives CTI registration.
        pbx["a"].emit(EventKind.PHONE_REGISTERED, endpoint="2001")
        msg = await ws.receive_json()
        while msg["type"] == "heartbeat":
            msg = await ws.receive_json()
        assert msg["type"] == "cti" and msg["state"] == "registered"
        pbx["b"].set_state(LinkState.UNREACHABLE)
        pbx["b"].emit(EventKind.PBX_DOWN, refused=True)  # killed: its port refuses
        msg = await ws.receive_json()
        while msg["type"] == "heartbeat":
            msg = await ws.receive_json()
        assert msg == {"type": "pbx", "site": "b", "state": "unreachable", "refused": True}
        # The client goes silent: the reaper loop ends its session.
        # The reaper does real Redis I/O between its fake-clock sleeps, so time is moved
        # on one second at a time until the client hears its session ended.
        async def ended() -> dict[str, Any]:
            while True:
                m: dict[str, Any] = await ws.receive_json()
                if m["type"] == "session":
                    return m

        waiter = asyncio.create_task(ended())
        for _ in range(200):
            if waiter.done():
                break
            await clock.advance(1)
            await asyncio.wait({waiter}, timeout=0.02)
        msg = await asyncio.wait_for(waiter, 5)
        assert clock.now() >= 30  # not before the session's time-to-live
        assert msg == {"type": "session", "state": "ended", "why": "expired"}
        assert await svc.sessions.count() == 0 and pbx["a"].members["sales-a"] == {}
        await ws.close()
    await svc.stop()
    assert all(not t["running"] for t in svc.supervisor.status().values())


async def test_import_profile_hash_is_upgraded_on_first_login(client: TestClient[Any, Any], env: Env) -> None:
    # agent01's hash was made with the light import profile (FAST); the service's own
    # profile is LOGIN_HASHER, so the first good login stores a default-profile hash.
    from controlplane.login.manager import LOGIN_HASHER

    env.mgr.hasher = LOGIN_HASHER
    old = env.dir.agents["agent01"].password_hash
    assert env.mgr.hasher.check_needs_rehash(old)
    status, _ = await _login(client, 1)
    assert status == 200
    await env.mgr.drain()  # the rehash runs off the login's path
    new = env.dir.agents["agent01"].password_hash
    assert new != old and not env.mgr.hasher.check_needs_rehash(new)
    status, _ = await _login(client, 1)
    assert status == 200 and env.dir.agents["agent01"].password_hash == new
    # a wrong password changes nothing
    status, _ = await _login(client, 1, password="wrong")
    assert status == 401 and env.dir.agents["agent01"].password_hash == new
    # Upgrades trickle: within REHASH_INTERVAL_S of the last one, a login skips its upgrade.
    old3, old5 = env.dir.agents["agent03"].password_hash, env.dir.agents["agent05"].password_hash
    await env.clock.advance(0.25)
    assert (await _login(client, 3))[0] == 200 and (await _login(client, 5))[0] == 200
    await env.mgr.drain()
    assert env.dir.agents["agent03"].password_hash != old3 and env.dir.agents["agent05"].password_hash == old5
    await env.clock.advance(0.25)
    assert (await _login(client, 5))[0] == 200
    await env.mgr.drain()
    assert env.dir.agents["agent05"].password_hash != old5
    # None while the process is busy with logins (a storm): the upgrade waits for a calm.
    old7 = env.dir.agents["agent07"].password_hash
    await env.clock.advance(0.25)
    env.mgr._logins_now += 5  # five other logins in progress here
    assert (await _login(client, 7))[0] == 200
    await env.mgr.drain()
    assert env.dir.agents["agent07"].password_hash == old7
    env.mgr._logins_now -= 5
    assert (await _login(client, 7))[0] == 200
    await env.mgr.drain()
    assert env.dir.agents["agent07"].password_hash != old7


class _Authn:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def authenticate(self, account: str, password: str) -> bool:
        self.asked.append((account, password))
        return password == "from-the-directory"


async def test_external_authenticator_decides_for_agents_without_a_hash(
    client: TestClient[Any, Any], env: Env
) -> None:
    from controlplane.login.ports import AgentRecord

    rec = env.dir.agents["agent02"]
    env.dir.agents["agent02"] = AgentRecord(rec.profile, "", rec.skill_penalties)
    # No authenticator configured: an empty hash is never "any password".
    status, body = await _login(client, 2, password="anything")
    assert (status, body["error"]["code"]) == (401, "bad_credentials")
    env.mgr.authenticator = authn = _Authn()
    status, body = await _login(client, 2, password="nope")
    assert (status, body["error"]["code"]) == (401, "bad_credentials")
    status, body = await _login(client, 2, password="from-the-directory")
    assert status == 200, body
    assert authn.asked == [("agent02", "nope"), ("agent02", "from-the-directory")]
    # agents with a hash never reach the authenticator
    status, _ = await _login(client, 3)
    assert status == 200 and len(authn.asked) == 2


async def test_http_authenticator_contract() -> None:
    from aiohttp import web

    from controlplane.errors import LoginRefused
    from controlplane.login.authn import HttpAuthenticator

    seen: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.path_qs, body))
        return web.Response(status={"ok": 200, "no": 401, "boom": 500}[body["password"]])

    app = web.Application()
    app.router.add_post("/auth", hook)
    async with TestServer(app) as server:
        a = HttpAuthenticator(str(server.make_url("/auth")))
        try:
            assert await a.authenticate("agent01", "ok") is True
            assert await a.authenticate("agent01", "no") is False
            with pytest.raises(LoginRefused) as e:
                await a.authenticate("agent01", "boom")
            assert (e.value.code, e.value.status) == ("authenticator_unavailable", 503)
            assert "boom" not in str(e.value)
        finally:
            await a.close()
    assert seen[0] == ("/auth", {"account": "agent01", "password": "ok"})  # never in the URL
    a = HttpAuthenticator("http://127.0.0.1:9/auth", timeout_s=1)
    try:
        with pytest.raises(LoginRefused) as e:
            await a.authenticate("agent01", "ok")
        assert e.value.code == "authenticator_unavailable"
    finally:
        await a.close()


async def test_reconcile_removes_only_our_members_without_a_live_session_there(
    client: TestClient[Any, Any], env: Env
) -> None:
    await _login(client, 1)  # agent01 at a, CTI registered below
    await env.mgr.on_event("a", env.pbx["a"].emit(EventKind.PHONE_REGISTERED, endpoint="2001"))
    await env.mgr.drain()
    pbx = env.pbx["a"]
    # Left behind while a was unreachable: an agent that moved away, and a hand-made member.
    await pbx.queue_add("sales-a", "PJSIP/2005", name="agent05/7")
    await pbx.queue_add("sales-a", "PJSIP/2999", name="Supervisor Joe")
    pbx.calls.clear()
    assert await env.mgr.reconcile_site("a") == 1
    assert pbx.calls == [("QueueStatus", None, None), ("QueueRemove", "sales-a", "PJSIP/2005")]
    assert set(pbx.members["sales-a"]) == {"PJSIP/2001", "PJSIP/2999"}
    pbx.set_state(LinkState.UNREACHABLE)
    assert await env.mgr.reconcile_site("a") == 0  # nothing to do while it is down


async def test_reconcile_keeps_the_members_of_a_session_that_arrives_during_its_read(
    client: TestClient[Any, Any], env: Env
) -> None:
    """A site's full member read takes seconds at 10,000 members; a session that moves (or
    logs in) there meanwhile, with its members added before the read ends, is not stale."""
    pbx = env.pbx["a"]
    real_status = pbx.queue_status
    arrived: dict[str, Any] = {}

    async def status_while_one_logs_in(queue: str | None = None, member: str | None = None) -> list[Any]:
        if queue is None and not arrived:  # the reconcile's full read: a login lands during it
            _, arrived["body"] = await _login(client, 3)
            await env.mgr.on_event("a", pbx.emit(EventKind.PHONE_REGISTERED, endpoint="2003"))
            await env.mgr.drain()
        return await real_status(queue, member)

    pbx.queue_status = status_while_one_logs_in  # type: ignore[method-assign]
    assert await env.mgr.reconcile_site("a") == 0
    assert set(pbx.members["sales-a"]) == {"PJSIP/2003"} and set(pbx.members["vip-a"]) == {"PJSIP/2003"}
    assert ("QueueRemove", "sales-a", "PJSIP/2003") not in pbx.calls


async def test_cti_registration_finishing_after_its_session_was_replaced_leaves_the_successors_members(
    client: TestClient[Any, Any], env: Env
) -> None:
    """The agent logs in again on the same phone while its first session's CTI registration
    is adding members: the first one's late clean-up must not remove what the second shares
    (its read-back then found them missing: 'queue read-back: PJSIP/... missing')."""
    _, first = await _login(client, 1)
    pbx = env.pbx["a"]
    real_add = pbx.queue_add
    second: dict[str, Any] = {}

    async def add_then_login_again(queue: str, interface: str, name: str = "", penalty: int = 0) -> None:
        await real_add(queue, interface, name=name, penalty=penalty)
        if not second:
            _, second["body"] = await _login(client, 1)  # replaces the first session
            await asyncio.sleep(0)

    pbx.queue_add = add_then_login_again  # type: ignore[method-assign]
    await env.mgr.on_event("a", pbx.emit(EventKind.PHONE_REGISTERED, endpoint="2001"))
    await env.mgr.drain()
    sid2 = second["body"]["session_id"]
    assert sid2 != first["session_id"] and await env.sessions.get(first["session_id"]) is None
    assert set(pbx.members["sales-a"]) == {"PJSIP/2001"} and set(pbx.members["vip-a"]) == {"PJSIP/2001"}
    assert not [c for c in pbx.calls if c[0] == "QueueRemove"]
    s2 = await env.sessions.get(sid2)
    assert s2 is not None and s2.state == "cti_registered"


async def test_cti_registration_interrupted_by_a_link_drop_is_retried_when_the_link_is_back(
    client: TestClient[Any, Any], env: Env
) -> None:
    from controlplane.errors import LinkLost

    _, body = await _login(client, 1)
    pbx = env.pbx["a"]
    pbx.fail_adds = LinkLost("site a: AMI connection closed")
    pbx.set_state(LinkState.UNREACHABLE)  # the link went down with the adds in flight
    await env.mgr.on_event("a", pbx.emit(EventKind.PHONE_REGISTERED, endpoint="2001"))
    await env.mgr.drain()
    assert (await env.sessions.get(body["session_id"])).state != "cti_registered"  # type: ignore[union-attr]
    pbx.fail_adds = None
    pbx.set_state(LinkState.UP)
    await pbx.queue_add("sales-a", "PJSIP/2001", name="agent01/1")  # one add had gone through before the drop
    await env.mgr.on_event("a", pbx.emit(EventKind.PBX_UP))
    await env.mgr.drain()
    assert (await env.sessions.get(body["session_id"])).state == "cti_registered"  # type: ignore[union-attr]
    assert set(pbx.members["sales-a"]) == {"PJSIP/2001"} and set(pbx.members["vip-a"]) == {"PJSIP/2001"}


async def test_read_backs_of_a_mass_login_share_one_queue_status_per_queue(
    client: TestClient[Any, Any], env: Env
) -> None:
    for i in range(0, 20, 2):  # ten agents in "support"
        await _login(client, i)
    env.pbx["a"].calls.clear()
    for i in range(0, 20, 2):
        await env.mgr.on_event("a", env.pbx["a"].emit(EventKind.PHONE_REGISTERED, endpoint=str(2000 + i)))
    await env.mgr.drain()
    status_calls = [c for c in env.pbx["a"].calls if c[0] == "QueueStatus"]
    assert status_calls == [("QueueStatus", "support-a", None)]
    states = [s.state for s in await env.sessions.all()]
    assert states == ["cti_registered"] * 10


async def test_cti_registration_retries_a_store_failure_instead_of_dying(
    client: TestClient[Any, Any], env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen in a 10,000-phone storm: Redis timed out on connect, the task died with
    # "exception was never retrieved", and the agent never got its queues.
    _, body = await _login(client, 1)
    real_get = env.sessions.get
    failures = [TimeoutError("Timeout connecting to server")]

    async def flaky_get(sid: str) -> Any:
        if failures:
            raise failures.pop()
        return await real_get(sid)

    monkeypatch.setattr(env.sessions, "get", flaky_get)
    await env.mgr.on_event("a", env.pbx["a"].emit(EventKind.PHONE_REGISTERED, endpoint="2001"))
    await env.mgr.drain()
    assert (await real_get(body["session_id"])).state == "cti_registered"  # type: ignore[union-attr]


async def test_a_lost_registration_event_is_caught_by_the_pending_sweeps(
    client: TestClient[Any, Any], env: Env
) -> None:
    _, body = await _login(client, 1)
    pbx = env.pbx["a"]
    pbx.contact_list = ["2001"]  # registered at the PBX, but its event never reached us
    assert env.mgr.sweep_pending("a") == 0  # nothing known without an event
    assert await env.mgr.sweep_pending_deep("a", older_than_s=10) == 0  # not waiting long enough yet
    await env.clock.advance(11)
    assert await env.mgr.sweep_pending_deep("a", older_than_s=10) == 1
    await env.mgr.drain()
    assert (await env.sessions.get(body["session_id"])).state == "cti_registered"  # type: ignore[union-attr]


async def test_a_replaced_session_leaves_its_successors_members_and_pending_entry(
    client: TestClient[Any, Any], env: Env
) -> None:
    """The same agent, same phone, same site, logged in twice (a login that timed out at
    the client but completed at the service, then a second one): ending the first must
    neither remove the queue members the second shares nor its wait for the phone."""
    _, first = await _login(client, 1)
    await env.mgr.on_event("a", env.pbx["a"].emit(EventKind.PHONE_REGISTERED, endpoint="2001"))
    await env.mgr.drain()
    env.mgr.registered["a"].discard("2001")  # the phone re-registers after the second login
    _, second = await _login(client, 1)
    await env.mgr.drain()  # the first session is ended as "replaced"
    assert set(env.pbx["a"].members["sales-a"]) == {"PJSIP/2001"}  # still there for the second
    assert env.mgr.pending["a"].by_ext.get("2001") == second["session_id"]
    await env.mgr.on_event("a", env.pbx["a"].emit(EventKind.PHONE_REGISTERED, endpoint="2001"))
    await env.mgr.drain()
    assert (await env.sessions.get(second["session_id"])).state == "cti_registered"  # type: ignore[union-attr]
    assert env.dir.history[first["session_id"]]["end_reason"] == "replaced"


async def test_session_ended_by_the_other_sites_service_reaches_the_client(redis_client: Any) -> None:
    """The client's channel is at service a; service b ends that session (a login there
    replaced it). The "ended" push crosses services through Redis."""
    from controlplane.login.service import LoginService

    d = MemoryDirectory(FAST)
    d.add_agent("agent01", "pw-agent01")
    for site in ("a", "b"):
        d.lines[("001122000001", site)] = Line(site, "2001", "2001", "s")
        d.queue_map[("sales", site)] = f"sales-{site}"
    pbx = {"a": FakePbx("a"), "b": FakePbx("b")}
    svcs = {s: LoginService(s, TOPO, d, pbx, redis_client, "tok", prefix=redis_client.test_prefix, session_ttl_s=30)
            for s in ("a", "b")}
    for svc in svcs.values():
        await svc.start_loops()
    try:
        async with TestClient(TestServer(svcs["a"].app)) as ca, TestClient(TestServer(svcs["b"].app)) as cb:
            _, first = await _login(ca, 1)
            ws = await ca.ws_connect(f"/v1/session/{first['session_id']}/ws?token={first['token']}")
            assert (await ws.receive_json())["type"] == "hello"
            await asyncio.sleep(0.1)  # the relay subscribed
            status, _ = await _login(cb, 1)
            assert status == 200

            async def ended() -> dict[str, Any]:
                while True:
                    m: dict[str, Any] = await ws.receive_json()
                    if m["type"] == "session":
                        return m
            assert await asyncio.wait_for(ended(), 5) == {"type": "session", "state": "ended", "why": "replaced"}
            await ws.close()
    finally:
        for svc in svcs.values():
            await svc.stop()


async def test_a_site_that_comes_back_is_reconciled_by_one_worker_not_each(redis_client: Any) -> None:
    """Two processes of site a's service (``--workers 2``) both see a's PBX come back: one
    reads a's members and removes the leftovers, the other leaves it; a later comeback is
    reconciled again."""
    from controlplane.login.service import LoginService

    d = MemoryDirectory(FAST)
    pbx = {"a": FakePbx("a"), "b": FakePbx("b")}
    pbx["a"].set_state(LinkState.UNREACHABLE)  # no reconcile at start
    workers = [LoginService("a", TOPO, d, pbx, redis_client, "tok", prefix=redis_client.test_prefix)
               for _ in range(2)]
    gate = asyncio.Event()
    real = pbx["a"].queue_status

    async def slow_status(*args: Any, **kw: Any) -> Any:
        await gate.wait()  # a 10,000-member site takes a while to list
        return await real(*args, **kw)

    pbx["a"].queue_status = slow_status  # type: ignore[method-assign]
    for w in workers:
        await w.start_loops()
    await asyncio.sleep(0.1)  # the event pumps subscribed
    try:
        for comeback in (1, 2):
            pbx["a"].set_state(LinkState.UP)
            pbx["a"].emit(EventKind.PBX_UP)
            await asyncio.sleep(0.2)  # both pumps saw it
            gate.set()
            for w in workers:
                await w.manager.drain()
            gate.clear()
            assert [c for c in pbx["a"].calls if c[0] == "QueueStatus"] == [("QueueStatus", None, None)] * comeback
    finally:
        for w in workers:
            await w.stop()


# --- move: re-homing a live session (POST /v1/move) ----------------------------------


async def _at_b(env: Env) -> tuple[LoginManager, TestClient[Any, Any]]:
    mgr_b = LoginManager("b", TOPO, env.dir, env.sessions, env.limiter, env.pbx, clock=env.clock, hasher=FAST)
    c = TestClient(TestServer(build_app(mgr_b, admin_token="admin-secret")))
    await c.start_server()
    return mgr_b, c


async def test_move_rehomes_the_session_in_place(client: TestClient[Any, Any], env: Env) -> None:
    status, body = await _login(client, 1)
    assert status == 200 and body["site"] == "a"
    await env.mgr.on_event("a", env.pbx["a"].emit(EventKind.PHONE_REGISTERED, endpoint="2001"))
    await env.mgr.drain()
    assert set(env.pbx["a"].members["sales-a"]) == {"PJSIP/2001"}
    mgr_b, cb = await _at_b(env)
    try:
        env.pbx["a"].set_state(LinkState.UNREACHABLE)  # site a dies; the client moves to b
        r = await cb.post("/v1/move", json={"session_id": body["session_id"], "token": "wrong"})
        assert r.status == 401 and (await r.json())["error"]["code"] == "bad_session"
        r = await cb.post("/v1/move", json={"session_id": body["session_id"], "token": body["token"]})
        moved = await r.json()
        assert r.status == 200, moved
        assert moved["site"] == "b" and moved["reason"] == "move" and moved["extension"] == "3001"
        assert moved["session_id"] == body["session_id"] and moved["token"] == body["token"]
        assert moved["virtual_agent_id"] == body["virtual_agent_id"]  # no new allocation
        assert moved["queues"] == ["sales-b", "vip-b"]
        assert moved["registrar"]["host"] == "10.9.0.2"
        assert env.pbx["b"].calls == []  # members follow the phone's registration, as at login
        await mgr_b.on_event("b", env.pbx["b"].emit(EventKind.PHONE_REGISTERED, endpoint="3001"))
        await mgr_b.drain()
        assert env.pbx["b"].members["sales-b"]["PJSIP/3001"].name == "agent01/1"
        assert env.pbx["b"].members["vip-b"]["PJSIP/3001"].penalty == 3
        s = await env.sessions.get(body["session_id"])
        assert s is not None and (s.site, s.extension, s.state) == ("b", "3001", "cti_registered")
        assert await env.sessions.count() == 1 and list(env.dir.held.values()) == [1]
        assert env.dir.moves == [(body["session_id"], "a", "b", "3001")]
        assert env.dir.history[body["session_id"]]["site"] == "b"
        # Site a comes back holding the member of an agent that now works at b: removed.
        env.pbx["a"].set_state(LinkState.UP)
        assert await env.mgr.reconcile_site("a") == 2  # sales-a and vip-a
        assert env.pbx["a"].members["sales-a"] == env.pbx["a"].members["vip-a"] == {}
        assert "PJSIP/3001" in env.pbx["b"].members["sales-b"]
        # A logout at b ends it there, and releases the virtual ID.
        r = await cb.post("/v1/logout", json={"session_id": body["session_id"], "token": body["token"]})
        assert r.status == 200
        await mgr_b.drain()
        assert env.pbx["b"].members["sales-b"] == {} and env.dir.held == {}
    finally:
        await cb.close()


async def test_a_move_asked_again_after_a_failed_cti_registration_tries_it_again(
        client: TestClient[Any, Any], env: Env) -> None:
    """The client asks for the move again when its CTI registration at the new site failed
    (the service's "failed" push); the session is already there, and its CTI registration
    is tried again, not left undone."""
    status, body = await _login(client, 1)
    assert status == 200
    mgr_b, cb = await _at_b(env)
    try:
        await mgr_b.on_event("b", env.pbx["b"].emit(EventKind.PHONE_REGISTERED, endpoint="3001"))
        env.pbx["b"].fail_adds = PbxCommandError("QueueAdd: Unable to add interface: out of memory")
        r = await cb.post("/v1/move", json={"session_id": body["session_id"], "token": body["token"]})
        assert r.status == 200
        await mgr_b.drain()
        env.pbx["b"].fail_adds = None
        s = await env.sessions.get(body["session_id"])
        assert s is not None and (s.site, s.state) == ("b", "awaiting_phone")
        adds = len([c for c in env.pbx["b"].calls if c[0] == "QueueAdd"])
        r = await cb.post("/v1/move", json={"session_id": body["session_id"], "token": body["token"]})
        assert r.status == 200 and (await r.json())["site"] == "b"
        await mgr_b.drain()
        assert len([c for c in env.pbx["b"].calls if c[0] == "QueueAdd"]) > adds
        s = await env.sessions.get(body["session_id"])
        assert s is not None and s.state == "cti_registered"
        assert "PJSIP/3001" in env.pbx["b"].members["sales-b"]
    finally:
        await cb.close()


async def test_old_sites_late_cti_registration_does_not_follow_a_moved_session(
        client: TestClient[Any, Any], env: Env) -> None:
    status, body = await _login(client, 2)  # waiting for its phone at a
    assert status == 200
    _, cb = await _at_b(env)
    try:
        r = await cb.post("/v1/move", json={"session_id": body["session_id"], "token": body["token"]})
        assert r.status == 200
        # The phone's old registration at a shows up late at a's service: nothing added at a.
        await env.mgr.on_event("a", env.pbx["a"].emit(EventKind.PHONE_REGISTERED, endpoint="2002"))
        await env.mgr.drain()
        assert [c for c in env.pbx["a"].calls if c[0] == "QueueAdd"] == []
        s = await env.sessions.get(body["session_id"])
        assert s is not None and (s.site, s.state) == ("b", "awaiting_phone")
    finally:
        await cb.close()


async def test_move_to_a_site_whose_pbx_is_down_is_refused(client: TestClient[Any, Any], env: Env) -> None:
    status, body = await _login(client, 3)
    assert status == 200
    _, cb = await _at_b(env)
    try:
        env.pbx["b"].set_state(LinkState.UNREACHABLE)
        r = await cb.post("/v1/move", json={"session_id": body["session_id"], "token": body["token"]})
        assert r.status == 503 and (await r.json())["error"]["code"] == "pbx_unreachable"
        r = await cb.post("/v1/move", json={"session_id": "nope", "token": body["token"]})
        assert r.status == 401
        s = await env.sessions.get(body["session_id"])
        assert s is not None and s.site == "a"  # nothing changed
    finally:
        await cb.close()


async def _next(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        m: dict[str, Any] = await asyncio.wait_for(ws.receive_json(), 5)
        if m["type"] == kind:
            return m


async def test_move_in_the_session_channel_rehomes_at_the_other_site_and_keeps_the_channel(
        client: TestClient[Any, Any], env: Env) -> None:
    """Site a's PBX dies, its login service lives: the client asks over its channel to move
    away from a. The session moves to b (same id, token, virtual ID), a's service adds the
    members at b after the phone registers there, and the CTI push comes on that channel."""
    _, body = await _login(client, 1)
    ws = await client.ws_connect(f"/v1/session/{body['session_id']}/ws?token={body['token']}")
    await _next(ws, "hello")
    await ws.send_json({"type": "move"})
    assert (await _next(ws, "move_refused"))["code"] == "bad_request"  # away from where?
    env.pbx["b"].set_state(LinkState.UNREACHABLE)
    await ws.send_json({"type": "move", "away_from": "a"})
    assert (await _next(ws, "move_refused"))["code"] == "pbx_unreachable"  # nowhere to go
    env.pbx["b"].set_state(LinkState.UP)
    env.pbx["a"].set_state(LinkState.UNREACHABLE)
    await ws.send_json({"type": "move", "away_from": "a"})
    moved = (await _next(ws, "moved"))["session"]
    assert (moved["site"], moved["extension"], moved["registrar"]["host"]) == ("b", "3001", "10.9.0.2")
    assert (moved["session_id"], moved["token"], moved["virtual_agent_id"]) == (
        body["session_id"], body["token"], body["virtual_agent_id"])
    assert moved["queues"] == ["sales-b", "vip-b"]
    assert env.dir.moves == [(body["session_id"], "a", "b", "3001")]
    await ws.send_json({"type": "move", "away_from": "a"})  # a retry: it stays at b
    assert (await _next(ws, "moved"))["session"]["site"] == "b"
    assert len(env.dir.moves) == 1
    await env.mgr.on_event("b", env.pbx["b"].emit(EventKind.PHONE_REGISTERED, endpoint="3001"))
    cti = await _next(ws, "cti")
    assert (cti["state"], cti["site"]) == ("registered", "b")
    assert env.pbx["b"].members["sales-b"]["PJSIP/3001"].name == "agent01/1"
    s = await env.sessions.get(body["session_id"])
    assert s is not None and (s.site, s.state) == ("b", "cti_registered")
    assert not ws.closed
    await ws.close()


async def test_a_move_in_the_channel_is_counted_in_flight_but_never_shed(env: Env) -> None:
    app = build_app(env.mgr, admin_token="t", max_in_flight=1)
    seen: list[int] = []
    real_move = env.mgr.move

    async def move(*args: Any, **kw: Any) -> Any:
        seen.append(app[ADMISSION].in_flight)
        return await real_move(*args, **kw)

    env.mgr.move = move  # type: ignore[method-assign]
    async with TestClient(TestServer(app)) as c:
        _, body = await _login(c, 1)
        ws = await c.ws_connect(f"/v1/session/{body['session_id']}/ws?token={body['token']}")
        await _next(ws, "hello")
        app[ADMISSION].in_flight = 1  # a login in progress: the limit is reached
        env.pbx["a"].set_state(LinkState.UNREACHABLE)
        await ws.send_json({"type": "move", "away_from": "a"})
        assert (await _next(ws, "moved"))["session"]["site"] == "b"
        assert seen == [2] and app[ADMISSION].shed == 0 and app[ADMISSION].in_flight == 1
        r = await c.post("/v1/move", json={"session_id": body["session_id"], "token": body["token"]})
        assert r.status == 503 and (await r.json())["error"]["code"] == "busy"  # a request is shed
        app[ADMISSION].in_flight = 0
        await ws.close()


async def test_a_session_that_moves_during_its_cti_registration_leaves_no_members_behind(
        client: TestClient[Any, Any], env: Env) -> None:
    status, body = await _login(client, 4)
    assert status == 200 and body["site"] == "a"
    pbx_a = env.pbx["a"]
    real_add = pbx_a.queue_add
    moved = False

    async def add_then_move(queue: str, interface: str, name: str = "", penalty: int = 0) -> None:
        nonlocal moved
        await real_add(queue, interface, name=name, penalty=penalty)
        if not moved:  # the client moves to b while a's service is adding its members
            moved = True
            s = await env.sessions.get(body["session_id"])
            assert s is not None
            s.site, s.extension, s.queues = "b", "3004", [("support-b", 1)]
            assert await env.sessions.move(s, env.clock.now())

    pbx_a.queue_add = add_then_move  # type: ignore[method-assign]
    await env.mgr.on_event("a", pbx_a.emit(EventKind.PHONE_REGISTERED, endpoint="2004"))
    await env.mgr.drain()
    assert moved and pbx_a.members["support-a"] == {}  # added, then removed again
    s = await env.sessions.get(body["session_id"])
    assert s is not None and (s.site, s.state) == ("b", "awaiting_phone")


async def test_access_log_names_method_path_status_and_never_the_token(
        redis_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import socket

    import aiohttp

    from controlplane.login.service import LoginService

    d = MemoryDirectory(FAST)
    d.add_agent("agent01", "pw-agent01")
    d.lines[("001122000001", "a")] = Line("a", "2001", "2001", "s")
    svc = LoginService("a", TOPO, d, {"a": FakePbx("a"), "b": FakePbx("b")}, redis_client, "tok",
                       prefix=redis_client.test_prefix, session_ttl_s=30)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.INFO, logger="controlplane.login.access")
    await svc.serve("127.0.0.1", port, access_log=True)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/v1/login", json={
                    "account": "agent01", "password": "pw-agent01", "mac": "00:11:22:00:00:01"}) as r:
                body = await r.json()
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/v1/session/{body['session_id']}/ws"
                                       f"?token={body['token']}")
            await ws.receive_json()
            await ws.close()
    finally:
        await svc.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "controlplane.login.access"]
    assert any(" POST /v1/login 200 " in x for x in lines), lines
    assert any(f" GET /v1/session/{body['session_id']}/ws 101 " in x for x in lines), lines
    assert not any(body["token"] in x or "pw-agent01" in x for x in caplog.text.splitlines())


async def test_past_the_in_flight_limit_logins_are_refused_busy_at_once(env: Env) -> None:
    gate = asyncio.Event()
    real = env.dir.login_view

    async def slow_view(account: str, mac: str) -> Any:
        await gate.wait()  # a saturated service: logins pile up
        return await real(account, mac)

    env.dir.login_view = slow_view  # type: ignore[method-assign]
    async with TestClient(TestServer(build_app(env.mgr, admin_token="t", max_in_flight=2))) as c:
        first = [asyncio.create_task(_login(c, i)) for i in (1, 2)]
        await asyncio.sleep(0.1)
        status, body = await _login(c, 3)  # the third: answered at once, not queued
        assert status == 503 and body["error"]["code"] == "busy"
        r = await c.post("/v1/move", json={"session_id": "x", "token": "y"})
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        gate.set()
        assert [s for s, _ in await asyncio.gather(*first)] == [200, 200]
        status, _ = await _login(c, 3)  # room again
        assert status == 200


async def test_drain_is_bounded_and_cancels_what_is_left(env: Env) -> None:
    hung = asyncio.Event()

    async def stuck() -> None:
        await hung.wait()  # a CTI registration waiting on a PBX that never answers

    env.mgr.spawn(stuck())
    task = next(iter(env.mgr._cti_tasks))
    await asyncio.wait_for(env.mgr.drain(0.1), 2)
    assert task.cancelled() and not env.mgr._cti_tasks


async def test_service_with_a_gc_policy_runs_the_scheduled_collection_and_knows_when_busy(
        redis_client: Any) -> None:
    from controlplane.login.http import ADMISSION
    from controlplane.login.service import LoginService
    from controlplane.runtime.gcpolicy import GcPolicy

    clock = FakeClock(0)
    pbx = {"a": FakePbx("a"), "b": FakePbx("b")}
    svc = LoginService("a", TOPO, MemoryDirectory(FAST), pbx, redis_client, "tok", prefix=redis_client.test_prefix,
                       clock=clock, gc=GcPolicy(full_interval_s=3600))
    await svc.start_loops()
    try:
        assert svc.supervisor.status()["gc"]["running"]
        await svc.manager.drain()  # the start-up reconcile of its own site
        assert not svc.busy()
        svc.app[ADMISSION].in_flight += 1  # a login or a move being served
        assert svc.busy()
        svc.app[ADMISSION].in_flight -= 1
        gate = asyncio.Event()
        svc.manager.spawn(gate.wait())  # CTI work running
        assert svc.busy()
        gate.set()
        await svc.manager.drain()
        assert not svc.busy()
    finally:
        await svc.stop()


async def test_a_mass_moves_queue_adds_wait_for_its_phones_registrations(
        client: TestClient[Any, Any], env: Env) -> None:
    """app_queue scans every member on each device state change: adding a moved agent's
    members while the others' phones still register costs O(N^2) (login/wave.py). With
    ``min_agents`` moved agents awaited at b, no QueueAdd goes there until fewer are."""
    topo = parse_topology({"sites": [{"id": s.id, "region": s.region, "pbx": "asterisk",
                                      "ami": {"host": s.ami.host if s.ami else ""}, "sip": {"host": s.sip.host},
                                      "login_url": s.login_url} for s in TOPO.sites],
                           "timings": {"move_wave": {"min_agents": 2}}})
    bodies = []
    for i in (3, 5, 7):
        status, body = await _login(client, i)
        assert status == 200
        bodies.append(body)
        await env.mgr.on_event("a", env.pbx["a"].emit(EventKind.PHONE_REGISTERED, endpoint=str(2000 + i)))
    await env.mgr.drain()
    mgr_b = LoginManager("b", topo, env.dir, env.sessions, env.limiter, env.pbx, clock=env.clock, hasher=FAST)
    env.pbx["a"].set_state(LinkState.UNREACHABLE)
    for body in bodies:
        await mgr_b.move(body["session_id"], body["token"])
    wave = mgr_b.waves["b"]
    assert wave.holding and wave.awaited == {"3003", "3005", "3007"}

    def adds() -> list[str]:
        return sorted({c[2] for c in env.pbx["b"].calls if c[0] == "QueueAdd"})

    async def settle(n: int) -> None:  # CTI work goes through Redis: real round trips
        for _ in range(100):
            if len(adds()) >= n and n:
                return
            await asyncio.sleep(0.005)

    await mgr_b.on_event("b", env.pbx["b"].emit(EventKind.PHONE_REGISTERED, endpoint="3003"))
    await settle(0)  # half a second: without the hold, 3003's adds are there in milliseconds
    assert adds() == [] and wave.holding  # two still awaited: the wave goes on
    await mgr_b.on_event("b", env.pbx["b"].emit(EventKind.PHONE_REGISTERED, endpoint="3005"))
    await settle(2)
    assert adds() == ["PJSIP/3003", "PJSIP/3005"] and wave.released_by == "registered"
    await mgr_b.on_event("b", env.pbx["b"].emit(EventKind.PHONE_REGISTERED, endpoint="3007"))
    await mgr_b.drain()
    assert adds() == ["PJSIP/3003", "PJSIP/3005", "PJSIP/3007"]
    for body in bodies:
        s = await env.sessions.get(body["session_id"])
        assert s is not None and (s.site, s.state) == ("b", "cti_registered")
