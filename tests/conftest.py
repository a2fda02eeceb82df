"""Shared test fixtures.

Lab tests need ``ccdr lab up``. Outside CI they skip when the lab is down; with
``CI=true`` (or ``CCDR_REQUIRE_LAB=1``) they fail instead, so CI can never pass by
skipping what it was meant to prove.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def lab_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("CCDR_REQUIRE_LAB") == "1"


def need(condition: bool, why: str) -> None:
    """Skip locally, fail in CI, when a real component a test needs is missing."""
    if condition:
        return
    if lab_required():
        pytest.fail(f"required component missing in CI: {why}")
    pytest.skip(why)


# --- the two-site lab -------------------------------------------------------
# Contract (kept by lab/): `ccdr lab up` writes $CCDR_LAB_DIR/topology.yaml
# (default /var/lib/ccdr/lab) naming sites "a" and "b", each with AMI on 5038 and
# PJSIP/UDP on 5060 at its own namespace address, AMI user "ccdr" with the secret
# in a file the topology references.  Fault commands: `ccdr lab kill|freeze|thaw|
# start|cut|heal SITE`.

LAB_DIR = Path(os.environ.get("CCDR_LAB_DIR", "/var/lib/ccdr/lab"))


@pytest.fixture(scope="session")
def lab_topology_path() -> Path:
    p = LAB_DIR / "topology.yaml"
    need(p.exists(), f"the lab is not up ({p} missing): run `ccdr lab up` as root")
    return p


@pytest.fixture(scope="session")
def lab_topology(lab_topology_path: Path):  # type: ignore[no-untyped-def]
    from controlplane.settings import load_topology

    return load_topology(lab_topology_path)


@pytest.fixture
async def redis_client():  # type: ignore[no-untyped-def]
    """A real Redis (127.0.0.1:6379) and a random key prefix; keys removed after."""
    import secrets

    from controlplane.runtime.stores import redis_from_url

    r = redis_from_url(os.environ.get("CCDR_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    try:
        await r.ping()
    except Exception as exc:
        await r.aclose()
        need(False, f"Redis not reachable: {exc}")
    prefix = f"ccdr-test-{secrets.token_hex(4)}:"
    r.test_prefix = prefix  # type: ignore[attr-defined]
    yield r
    async for k in r.scan_iter(match=f"{prefix}*"):
        await r.delete(k)
    await r.aclose()


def _pg_admin_dsn() -> str:
    return os.environ.get("CCDR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_db():  # type: ignore[no-untyped-def]
    """A fresh PostgreSQL database with the schema migrated (its DSN); dropped afterwards."""
    import asyncio
    import secrets

    import asyncpg

    from controlplane.inventory.migrate import migrate

    name = f"ccdr_test_{secrets.token_hex(4)}"
    dsn = _pg_admin_dsn().rsplit("/", 1)[0] + "/" + name

    async def create() -> None:
        admin = await asyncpg.connect(_pg_admin_dsn())
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        c = await asyncpg.connect(dsn)
        try:
            await migrate(c)
        finally:
            await c.close()

    async def drop() -> None:
        admin = await asyncpg.connect(_pg_admin_dsn())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    try:
        asyncio.run(create())
    except (OSError, asyncpg.PostgresError) as exc:
        need(False, f"PostgreSQL not reachable: {exc}")
    yield dsn
    asyncio.run(drop())


@pytest.fixture
async def pg(pg_db: str):  # type: ignore[no-untyped-def]
    """A pool on the fresh database."""
    import asyncpg

    pool = await asyncpg.create_pool(pg_db, min_size=1, max_size=20)
    yield pool
    await pool.close()
