"""Inventory schema, import/export and the virtual agent ID pool, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from controlplane.cli.main import cli
from controlplane.errors import InventoryError
from controlplane.inventory.directory import PgDirectory
from controlplane.inventory.importer import export, import_files
from controlplane.inventory.migrate import migrate
from controlplane.inventory.records import normalize_mac

INV = Path(__file__).parent / "fixtures" / "inventory"
GOOD = [INV / "base.yaml", INV / "agents.csv", INV / "devices.csv"]
TABLES = ("regions", "sites", "systems", "skill_groups", "skill_group_queues", "agents", "agent_skills",
          "devices", "device_lines", "virtual_agent_ids", "planned_switch_rules")


async def counts(pool: Any) -> dict[str, int]:
    return {t: await pool.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


async def test_migrate_is_idempotent_and_concurrent_safe(pg: Any) -> None:
    async with pg.acquire() as a, pg.acquire() as b:
        assert await asyncio.gather(migrate(a), migrate(b)) == [[], []]
    from controlplane.inventory.migrate import migrations

    assert await pg.fetchval("SELECT count(*) FROM schema_migrations") == len(migrations()) >= 2


@pytest.mark.parametrize("raw", ["00:11:22:AA:BB:CC", "00-11-22-aa-bb-cc", "0011.22aa.bbcc", "001122AABBCC",
                                 "00 11 22 aa bb cc"])
def test_mac_forms(raw: str) -> None:
    assert normalize_mac(raw) == "001122aabbcc"


async def test_import_good_files_and_directory_reads(pg: Any) -> None:
    async with pg.acquire() as c:
        s = await import_files(c, GOOD)
    assert s.counts["agents"] == 2 and s.counts["lines"] == 4 and s.counts["virtual agent IDs"] == 2000
    d = PgDirectory(pg)
    view = await d.login_view("alice", "001122aabb02")  # MAC stored in one canonical form
    assert view is not None
    alice = view.agent
    assert alice.profile.system == "cards"
    assert alice.skill_penalties == (("sales", 0), ("vip", 2))
    assert alice.password_hash.startswith("$argon2id$")
    assert sorted(view.lines) == ["a", "b"] and view.lines["b"].site == "b"
    assert (view.lines["b"].extension, view.lines["b"].sip_password) == ("3002", "secret-b2")
    assert view.queues_at("b") == {"sales": "sales", "vip": "vip-b"}
    assert set(view.queues_at("a")) == {"sales", "vip"}
    assert (await d.login_view("alice", "00112200ffff")).lines == {}  # type: ignore[union-attr]
    assert await d.login_view("nobody", "001122aabb02") is None
    # Logins in flight together: one query, each answer with its own request.
    before = d._views.batches
    many = await asyncio.gather(d.login_view("alice", "001122aabb02"), d.login_view("nobody", "001122aabb02"),
                                d.login_view("alice", "00112200ffff"), d.login_view("alice", "001122aabb02"))
    assert d._views.batches == before + 1
    assert many[0] == view and many[3] == view and many[1] is None
    assert many[2] is not None and many[2].lines == {} and many[2].agent == alice
    rules = await d.rules()
    assert [(r.scope, r.value, r.from_site, r.to_site, r.enabled) for r in rules] == [
        ("skill_group", "vip", "a", "b", False)]


async def test_import_with_errors_on_many_lines_reports_each_and_changes_nothing(pg: Any) -> None:
    async with pg.acquire() as c:
        await import_files(c, GOOD)
    before = await counts(pg)
    with pytest.raises(InventoryError) as ei:
        async with pg.acquire() as c:
            await import_files(c, [INV / "bad.yaml"])
    probs = ei.value.problems
    bad = str(INV / "bad.yaml")
    expected = [
        f"{bad}:2: account: must be letters, digits, . _ @ -, got 'eve;x'",
        f"{bad}:3: system: unknown system 'nosuch'",
        f"{bad}:4: password: give exactly one of password, password_hash",
        f"{bad}:4: home_region: unknown region 'mars'",
        f"{bad}:5: account: agent 'alice' already exists",
        f"{bad}:7: mac: not a MAC address: '00:11:22:AA:BB:ZZ'",
        f"{bad}:10: mac: device 001122aabb01 already exists",
        f"{bad}:14: id: must be letters, digits, . _ -, got 'q${{EVIL}}'",
        f"{bad}:15: queues.z: unknown site 'z'",
    ]
    for e in expected:
        assert e in probs, (e, probs)
    assert any(p.startswith(f"{bad}:") and "extension: must be letters" in p for p in probs), probs
    assert await counts(pg) == before


async def test_duplicates_within_files_refused(pg: Any, tmp_path: Path) -> None:
    f = tmp_path / "agents.csv"
    f.write_text("account,password,system,home_region,skills\nzed,p,cards,east,\nzed,q,cards,east,\n")
    async with pg.acquire() as c:
        await import_files(c, [INV / "base.yaml"])
        with pytest.raises(InventoryError) as ei:
            await import_files(c, [f])
    assert ei.value.problems == [f"{f}:3: account: duplicate agent 'zed' (first at {f}:2)"]


async def test_export_round_trips(pg: Any, tmp_path: Path) -> None:
    async with pg.acquire() as c:
        await import_files(c, GOOD)
        first = await export(c)
        await c.execute("TRUNCATE regions, sites, systems, skill_groups, skill_group_queues, agents, agent_skills,"
                        " devices, device_lines, virtual_agent_ids, planned_switch_rules CASCADE")
        f = tmp_path / "export.yaml"
        f.write_text(yaml.safe_dump(first))
        await import_files(c, [f])
        assert await export(c) == first


async def test_concurrent_vaid_allocation_never_duplicates(pg: Any) -> None:
    async with pg.acquire() as c:
        await import_files(c, [INV / "base.yaml"])  # 2,000 IDs
    d = PgDirectory(pg)
    got = await asyncio.gather(*(d.allocate_vaid(f"s{i}") for i in range(1000)))
    assert None not in got and len(set(got)) == 1000
    await asyncio.gather(*(d.release_vaid(f"s{i}") for i in range(0, 1000, 2)))
    again = await asyncio.gather(*(d.allocate_vaid(f"t{i}") for i in range(1500)))
    held = [v for v in again if v is not None]
    assert len(held) == 1500 and len(set(held) | {got[i] for i in range(1, 1000, 2)}) == 2000
    assert await d.allocate_vaid("one-too-many") is None  # exhausted: a clear None, not a duplicate


async def test_sessions_opened_in_batches_across_two_services(pg: Any) -> None:
    """Both sites' services open sessions at once, each in batches (ID and history row in
    one statement): distinct IDs, one history row per session with its own ID; the pool's
    end is found by the requests a batch could not serve (one at a time, then None, and no
    history row for them)."""
    async with pg.acquire() as c:
        await import_files(c, [INV / "base.yaml"])  # 2,000 IDs
    a, b = PgDirectory(pg), PgDirectory(pg)
    got = await asyncio.gather(*(d.open_session(f"{n}{i}", f"acct{i}", n, "001122aabb01", str(2000 + i), "local")
                                 for i in range(1100) for n, d in (("a", a), ("b", b))))
    held = [v for v in got if v is not None]
    assert len(held) == 2000 and len(set(held)) == 2000 and got.count(None) == 200
    assert a._opens.batches + b._opens.batches < 100  # not one UPDATE per login
    pool = {r["session_id"]: r["id"] for r in await pg.fetch("SELECT id, session_id FROM virtual_agent_ids")}
    hist = {r["id"]: r for r in await pg.fetch("SELECT id, account, site, extension, vaid, reason FROM sessions")}
    assert len(hist) == 2000 and all(pool[sid] == h["vaid"] for sid, h in hist.items())
    assert dict(hist["b7"]) == {"id": "b7", "account": "acct7", "site": "b", "extension": "2007", "vaid": pool["b7"],
                                "reason": "local"}


def test_cli_import_reports_problems_and_exit_code(pg_db: str) -> None:
    r = CliRunner().invoke(cli, ["inventory", "import", "--dsn", pg_db, str(INV / "bad.yaml")])
    assert r.exit_code == 1
    assert "nothing was imported" in r.output and "bad.yaml:2: account:" in r.output
    r = CliRunner().invoke(cli, ["inventory", "import", "--dsn", pg_db, *map(str, GOOD)])
    assert r.exit_code == 0 and "2 agents" in r.output
    r = CliRunner().invoke(cli, ["inventory", "export", "--dsn", pg_db])
    doc = yaml.safe_load(r.output)
    assert [a["account"] for a in doc["agents"]] == ["alice", "bob"]


async def test_session_history_and_password_rehash_in_postgres(pg: Any) -> None:
    async with pg.acquire() as c:
        await import_files(c, GOOD)
    d = PgDirectory(pg)
    await d.session_started("s1", "alice", "b", "001122aabb01", "3001", 7, "rule:1")
    await d.session_ended("s1", "logout")
    await d.session_ended("s1", "expired")  # the first end stands
    row = await pg.fetchrow("SELECT account, site, vaid, reason, end_reason, ended_at IS NOT NULL AS ended"
                            " FROM sessions WHERE id = 's1'")
    assert dict(row) == {"account": "alice", "site": "b", "vaid": 7, "reason": "rule:1",
                         "end_reason": "logout", "ended": True}
    alice = (await d.login_view("alice", "001122aabb02")).agent  # type: ignore[union-attr]
    assert alice is not None
    await d.set_password_hash("alice", "not-the-stored-hash", "x")  # stale: a concurrent rehash won
    assert (await d.login_view("alice", "")).agent.password_hash == alice.password_hash  # type: ignore[union-attr]
    await d.set_password_hash("alice", alice.password_hash, "$argon2id$new")
    assert (await d.login_view("alice", "")).agent.password_hash == "$argon2id$new"  # type: ignore[union-attr]


async def test_move_target_and_move_history_in_postgres(pg: Any) -> None:
    async with pg.acquire() as c:
        await import_files(c, GOOD)
    d = PgDirectory(pg)
    got = await d.move_target("alice", "001122aabb02", "b")
    assert got is not None
    line, queues = got
    assert (line.site, line.extension, line.sip_password) == ("b", "3002", "secret-b2")
    assert queues == [("sales", 0), ("vip-b", 2)]
    assert await d.move_target("alice", "0011220000ff", "b") is None  # no such device
    # A burst: answered in few round trips, each answer with its own request.
    burst = [("alice", "001122aabb02", "b"), ("bob", "0011220000ff", "a"), ("alice", "001122aabb02", "a")] * 30
    answers = await asyncio.gather(*(d.move_target(*k) for k in burst))
    assert answers[0] == got and answers[1] is None
    assert answers[2] is not None and answers[2][0].site == "a" and answers[2][0].extension == "2002"
    assert answers == answers[:3] * 30
    assert d._targets.batches <= 4  # 2 lone calls, then the burst: one alone, the rest together
    await asyncio.gather(d.session_started("s1", "alice", "a", "001122aabb02", "2002", 7, "local"),
                         d.session_started("s2", "bob", "b", "001122aabb01", "3001", 8, "rule:1"))
    await asyncio.gather(*(d.session_started(f"x{i}", "alice", "a", "001122aabb02", "2002", 100 + i, "local")
                           for i in range(20)))
    assert d._started.batches <= 4  # history rows of logins in flight together: not one INSERT each
    assert await pg.fetchval("SELECT count(*) FROM sessions WHERE id LIKE 'x%'") == 20
    s2 = await pg.fetchrow("SELECT account, site, mac, extension, vaid, reason FROM sessions WHERE id = 's2'")
    assert tuple(s2) == ("bob", "b", "001122aabb01", "3001", 8, "rule:1")
    await asyncio.gather(d.session_moved("s1", "a", "b", "3002"), d.session_moved("s1", "b", "a", "2002"),
                         d.session_moved("s1", "a", "b", "3002"))  # there and back and there again
    row = await pg.fetchrow("SELECT site, extension, vaid, ended_at IS NULL AS open FROM sessions WHERE id = 's1'")
    assert dict(row) == {"site": "b", "extension": "3002", "vaid": 7, "open": True}
    moves = await pg.fetch("SELECT from_site, to_site FROM session_moves WHERE session_id = 's1' ORDER BY id")
    assert [tuple(m) for m in moves] == [("a", "b"), ("b", "a"), ("a", "b")]
