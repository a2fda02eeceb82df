"""Inventory import: N agents (and N phones with a line at each of two sites) from CSV.

Builds the CSV files in a temporary folder, creates a scratch PostgreSQL database,
migrates it, and times ``import_files`` (the code path of ``ccdr inventory import``):
parsing and checking every row, hashing every password (import profile, process pool),
and the one COPY-based transaction. Then times ``export``. Target: 50,000 agents < 30 s.

Run: python bench/bench_import.py [N]   (PostgreSQL at CCDR_TEST_PG or 127.0.0.1:5432)
"""

from __future__ import annotations

import asyncio
import csv
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from controlplane.inventory.importer import export, import_files
from controlplane.inventory.migrate import migrate

ADMIN = os.environ.get("CCDR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def write_csvs(d: Path, n: int) -> list[Path]:
    def w(name: str, header: list[str], rows: list[list[str]]) -> Path:
        p = d / f"{name}.csv"
        with p.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(header)
            out.writerows(rows)
        return p

    groups = [f"group{g}" for g in range(20)]
    return [
        w("regions", ["id"], [["east"], ["west"]]),
        w("sites", ["id", "region"], [["a", "east"], ["b", "west"]]),
        w("systems", ["id"], [["cards"], ["loans"]]),
        w("skill_groups", ["skill_group", "site", "queue"], [[g, s, f"{g}-{s}"] for g in groups for s in "ab"]),
        w("agents", ["account", "password", "system", "home_region", "skills"],
          [[f"agent{i:06d}", f"pw-{i}", "cards" if i % 2 else "loans", "east" if i % 3 else "west",
            f"{groups[i % 20]}:0;{groups[(i + 7) % 20]}:2"] for i in range(n)]),
        w("devices", ["mac", "model", "location", "site", "extension", "sip_username", "sip_password"],
          [[f"00:1b:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}",
            "Yealink-T54W", "a" if i % 2 else "b", s, f"{base + i}", f"{base + i}", f"sip-{s}-{i}"]
           for i in range(n) for s, base in (("a", 100000), ("b", 200000))]),
    ]


async def main(n: int) -> None:
    name = f"ccdr_bench_{secrets.token_hex(4)}"
    dsn = ADMIN.rsplit("/", 1)[0] + "/" + name
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = write_csvs(Path(tmp), n)
            size = sum(p.stat().st_size for p in files)
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn)
                t0 = time.perf_counter()
                summary = await import_files(conn, files)
                dt = time.perf_counter() - t0
                t1 = time.perf_counter()
                doc = await export(conn)
                de = time.perf_counter() - t1
            finally:
                await conn.close()
        print(f"import of {n:,} agents and {n:,} phones ({2 * n:,} lines), {size / 1e6:.1f} MB of CSV: "
              f"{dt:.1f} s ({n / dt:,.0f} agents/s); counts {summary.counts}")
        print(f"export: {de:.1f} s ({len(doc['agents']):,} agents)")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
