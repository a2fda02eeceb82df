"""``ccdr login serve``: the unified login service of one site."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from urllib.parse import urlparse

import click

from controlplane.cli.common import topology_option
from controlplane.inventory.directory import PgDirectory, create_pool
from controlplane.login.authn import HttpAuthenticator
from controlplane.login.service import LoginService
from controlplane.login.verified import MIN_KEY_BYTES, VERIFIED_TTL_S
from controlplane.pbx.asterisk import AsteriskClient
from controlplane.pbx.base import PbxClient
from controlplane.pbx.freeswitch import FreeswitchClient, tcp_connect
from controlplane.runtime import gcpolicy
from controlplane.runtime.stores import redis_from_url
from controlplane.runtime.workers import run_workers
from controlplane.settings import load_topology

log = logging.getLogger(__name__)
# The service reads phone registrations (ContactStatus, class "system") and link state from its
# PBX events, nothing of class "agent": queue membership it reads back with QueueStatus. Every
# registration also raised a QueueMemberStatus per queue the phone is in, and every add a
# QueueMemberAdded, to every worker of both sites' services (four event sessions per Asterisk in
# the drills), each parsing all of them: 10,000 agents moving kept Asterisk b's manager queue full.
EVENT_MASK = "system"


@click.group()
def login() -> None:
    """The unified login service."""


@login.command()
@click.option("--site", "site_id", required=True, help="The site this service runs at.")
@topology_option
@click.option("--bind", default=None, help="host:port (default: from the site's login_url).")
@click.option("--admin-token-env", default="CCDR_ADMIN_TOKEN", show_default=True,
              help="Environment variable holding the admin token for /v1/sessions.")
@click.option("--authenticator-url", envvar="CCDR_AUTHENTICATOR_URL", default=None,
              help="External authenticator for agents imported without a password hash "
                   "(POST {account, password}; 200 accepts). Env: CCDR_AUTHENTICATOR_URL.")
@click.option("--session-ttl", "session_ttl_s", type=click.FloatRange(min=3), default=30.0, show_default=True,
              help="Seconds without a client heartbeat before a session is reaped (members removed).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes sharing the port (SO_REUSEPORT), restarted if they die; about one per core. "
                   "A mass move is CPU-bound in one process.")
@click.option("--max-in-flight", type=click.IntRange(1), default=512, show_default=True,
              help="Logins and moves served at once per process; more are answered 503 busy at once.")
@click.option("--access-log", is_flag=True, help="Log each request: method, path, status, seconds (not the query).")
@click.option("--verified-key-env", default="CCDR_VERIFIED_KEY", show_default=True,
              help="Environment variable holding the key (16+ bytes, the same for every site's service) of the "
                   "cache of recently verified passwords: a returning agent's login then costs an HMAC, not "
                   "argon2 (20 ms of CPU). Unset: no cache. See controlplane/login/verified.py for the trade-off.")
@click.option("--verified-ttl", "verified_ttl_s", type=click.FloatRange(min=1), default=VERIFIED_TTL_S,
              show_default=True, help="Seconds a verification is remembered.")
def serve(site_id: str, topology: str, bind: str | None, admin_token_env: str,
          authenticator_url: str | None, session_ttl_s: float, workers: int, max_in_flight: int,
          access_log: bool, verified_key_env: str, verified_ttl_s: float) -> None:
    """Serve logins for SITE until interrupted (SIGINT/SIGTERM stop it in order)."""
    topo = load_topology(topology)
    verified_key = os.environ.get(verified_key_env, "").encode() or None
    if verified_key is not None and len(verified_key) < MIN_KEY_BYTES:
        raise click.UsageError(f"{verified_key_env}: the verification cache key needs at least {MIN_KEY_BYTES} "
                               f"bytes, got {len(verified_key)}")
    site = topo.site(site_id)
    url = urlparse(site.login_url)
    host, port = (bind.rsplit(":", 1)[0], int(bind.rsplit(":", 1)[1])) if bind else (url.hostname or "127.0.0.1",
                                                                                      url.port or 80)
    token = os.environ.get(admin_token_env, "")

    async def run() -> None:
        pool = await create_pool(topo.postgres_dsn)
        redis = redis_from_url(topo.redis_url)
        pbx: dict[str, PbxClient] = {}
        for s in topo.sites:
            if s.ami is not None:
                pbx[s.id] = AsteriskClient(s.id, s.ami, topo.timings, event_mask=EVENT_MASK)
            elif s.esl is not None:
                pbx[s.id] = FreeswitchClient(s.id, tcp_connect(s.esl.host, s.esl.port),
                                             s.esl.password.reveal(f"sites[{s.id}].esl.password"), topo.timings)
        for c in pbx.values():
            try:
                await c.start()
            except Exception as exc:  # a site that is down at start is a normal state here
                log.warning("%s", exc)
        authn = HttpAuthenticator(authenticator_url) if authenticator_url else None
        svc = LoginService(site.id, topo, PgDirectory(pool), pbx, redis, token, authenticator=authn,
                           session_ttl_s=session_ttl_s, max_in_flight=max_in_flight, gc=topo.timings.gc,
                           verified_key=verified_key, verified_ttl_s=verified_ttl_s)
        # Full collections scheduled, not mid-burst (controlplane/runtime/gcpolicy.py; the
        # topology's timings.gc). Set up: what this process holds now is never scanned again.
        gcpolicy.install(topo.timings.gc)
        await svc.serve(host, port, reuse_port=workers > 1, access_log=access_log)
        click.echo(f"login service for site {site.id} on http://{host}:{port} (pid {os.getpid()})", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await svc.stop()
        for c in pbx.values():
            await c.close()
        if authn is not None:
            await authn.close()
        await redis.aclose()
        await pool.close()

    if workers == 1:
        asyncio.run(run())
        return
    raise SystemExit(run_workers(workers, lambda _i: asyncio.run(run())))
