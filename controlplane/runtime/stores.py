"""Connections to the shared stores, configured for a service under load."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

REDIS_MAX_CONNECTIONS = 64


def redis_from_url(url: str, max_connections: int = REDIS_MAX_CONNECTIONS) -> Redis:
    """A Redis client whose pool makes callers wait for a connection.

    redis-py's default async pool holds 100 connections and raises
    MaxConnectionsError for the 101st concurrent command: 1,000 concurrent logins
    failed that way. A blocking pool queues them instead.
    """
    # from_pool: the client owns the pool, so aclose() closes its connections too.
    # A generous connect timeout: in a 10,000-phone storm on a 2-core machine, opening
    # pool connections while the loop is saturated took longer than redis-py's default
    # and failed CTI registrations with "Timeout connecting to server".
    return Redis.from_pool(BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30,
                                                           socket_connect_timeout=15))
