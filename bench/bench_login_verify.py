"""The credential check of a login, for agents whose hashes have the login profile (a returning
agent: the storm at every shift start), with and without the cache of verified passwords.

Measures what the login service spends on the password alone, N agents, C in flight, on this
process's event loop plus argon2's threads (as the service runs it), against the real Redis:
- argon2: ``LoginManager``'s verification (argon2id 19 MiB, t=2, in a thread per check);
- cache hit: ``VerifiedPasswords.check`` (an HMAC, and a Redis read batched with the others).
Run: python bench/bench_login_verify.py [N] [C]   (default 400 agents, 30 in flight)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controlplane.login.manager import LOGIN_HASHER
from controlplane.login.verified import VerifiedPasswords
from controlplane.runtime.stores import redis_from_url


async def timed(n: int, conc: int, check) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            assert await check(i)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - wall, time.process_time() - cpu


async def main(n: int, conc: int) -> None:
    redis = redis_from_url(os.environ.get("CCDR_BENCH_REDIS", "redis://127.0.0.1:6379/13"))
    prefix = f"ccdr-bench-verify-{os.getpid()}:"
    try:
        # One login-profile hash per agent (made once here; the import would have upgraded them).
        hashes = [LOGIN_HASHER.hash(f"pw-{i}") for i in range(n)]
        cache = VerifiedPasswords(redis, prefix, os.urandom(32), ttl_s=600)

        async def argon2(i: int) -> bool:
            return await asyncio.to_thread(LOGIN_HASHER.verify, hashes[i], f"pw-{i}")

        async def cached(i: int) -> bool:
            return await cache.check(f"agent{i}", hashes[i], f"pw-{i}")

        wall, cpu = await timed(n, conc, argon2)
        print(f"argon2 (login profile): {n / wall:8.0f} checks/s, {cpu / n * 1000:6.2f} ms CPU each")
        for i in range(n):
            await cache.remember(f"agent{i}", hashes[i], f"pw-{i}")
        wall, cpu = await timed(n, conc, cached)
        print(f"cache hit:              {n / wall:8.0f} checks/s, {cpu / n * 1000:6.2f} ms CPU each")
    finally:
        async for k in redis.scan_iter(match=f"{prefix}*"):
            await redis.delete(k)
        await redis.aclose()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(args[0] if args else 400, args[1] if len(args) > 1 else 30))
