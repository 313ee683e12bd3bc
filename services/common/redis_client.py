"""One way to reach Redis from a URL: a single server, a Redis Cluster, or a Sentinel-managed primary.

    redis://[:password@]host:port/db            one server (rediss:// for TLS, unix:// for a socket)
    redis+cluster://[:password@]host:port[,host:port...]
                                                a Redis Cluster; the hosts are seeds, the rest of the
                                                cluster is discovered (rediss+cluster:// for TLS)
    redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]
                                                the primary that these Sentinels name service_name;
                                                the password is the data nodes' (and the Sentinels',
                                                if they require one)

Every caller gets the same API (redis-py's Redis or RedisCluster, sync or asyncio), and the key
layout (keys.py) keeps every multi-key command and script inside one hash slot, so the code above
does not care which it got. The few calls that must differ are here: `mget` (grouped by slot on a
cluster) and `scan_keys` (every primary of a cluster).
"""
from __future__ import annotations

import time

import redis

from .redis_url import SCHEMES, RedisTarget, parse_url, redacted, replicated

# What a Redis that is away (restarting, failing over, not reachable) raises: the caller holds its
# work and retries, or answers UNAVAILABLE; never treated as the request's fault.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.exceptions.ClusterError,
               redis.exceptions.TryAgainError, redis.exceptions.ReadOnlyError, redis.exceptions.RedisClusterException)

def connect(url: str, *, asyncio: bool = False, **options):
    """A client for `url`: redis.Redis / RedisCluster (sync) or their redis.asyncio twins. `options`
    are connection options (socket_timeout, max_connections, ...) that every kind accepts."""
    target = parse_url(url)
    if target.kind == "single":
        module = redis.asyncio if asyncio else redis
        return module.Redis.from_url(url, **options)
    auth = {"password": target.password, "username": target.username}
    if target.kind == "cluster":
        if asyncio:
            from redis.asyncio.cluster import ClusterNode, RedisCluster
        else:
            from redis.cluster import ClusterNode, RedisCluster
        options.pop("health_check_interval", None)            # per-node connections do their own
        if not asyncio:
            options.pop("max_connections", None)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.hosts], ssl=target.tls, **auth,
                            **options)
    if asyncio:
        from redis.asyncio.sentinel import Sentinel
    else:
        from redis.sentinel import Sentinel
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options}
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs={**auth, **timeouts}, ssl=target.tls, **timeouts)
    rest = {k: v for k, v in options.items() if k not in timeouts}
    return sentinel.master_for(target.service_name, db=target.db, ssl=target.tls, **auth, **timeouts, **rest)


def is_cluster(client) -> bool:
    from redis.asyncio.cluster import RedisCluster as AsyncCluster
    from redis.cluster import RedisCluster
    return isinstance(client, RedisCluster | AsyncCluster)


def mget(client, keys: list[str]) -> list:
    """MGET on one server; on a cluster the keys are grouped by slot (one MGET per slot, sent to
    their nodes in parallel) and the values come back in the keys' order."""
    if not keys:
        return []
    return client.mget_nonatomic(keys) if is_cluster(client) else client.mget(keys)


def scan_keys(client, pattern: str) -> list[bytes]:
    """Every key matching `pattern` (on a cluster: across every primary). For small key spaces:
    the live workers' hashes."""
    if is_cluster(client):
        found = set()
        for node in client.get_primaries():
            found.update(client.scan_iter(match=pattern, count=500, target_nodes=node))
        return sorted(found)
    return sorted(set(client.scan_iter(match=pattern, count=500)))


async def scan_keys_async(client, pattern: str) -> list[bytes]:
    """scan_keys for a redis.asyncio client."""
    found = set()
    if is_cluster(client):
        for node in client.get_primaries():
            async for key in client.scan_iter(match=pattern, count=500, target_nodes=node):
                found.add(key)
    else:
        async for key in client.scan_iter(match=pattern, count=500):
            found.add(key)
    return sorted(found)


class ReplicaWait:
    """After a write to `key`, wait until one replica of its primary has it (WAIT 1), so that a
    failover promotes a replica that holds the write. A primary without a connected replica (after
    a failover, before a new replica attaches) is not waited on: the primary's INFO replication is
    read again every `recheck_s`."""

    def __init__(self, client, key: str, timeout_ms: int = 1000, recheck_s: float = 2.0):
        self.client = client
        self.key = key
        self.timeout_ms = timeout_ms
        self.recheck_s = recheck_s
        self._replicas = 0
        self._checked_at = -1e9

    def _target(self) -> dict:
        return {"target_nodes": self.client.get_node_from_key(self.key)} if is_cluster(self.client) else {}

    def _stale(self) -> bool:
        return time.monotonic() - self._checked_at > self.recheck_s

    def _count(self, info) -> int:
        if isinstance(info, dict) and "connected_slaves" not in info:      # a cluster's {node: info}
            info = next(iter(info.values()), {})
        self._checked_at = time.monotonic()
        self._replicas = int(info.get("connected_slaves", 0))
        return self._replicas

    def wait(self) -> int:
        """Replicas that acknowledged (0 at once when the primary has none)."""
        if self._stale():
            self._count(self.client.info("replication", **self._target()))
        if not self._replicas:
            return 0
        return int(self.client.execute_command("WAIT", 1, self.timeout_ms, **self._target()))

    async def wait_async(self) -> int:
        """wait() for a redis.asyncio client."""
        if self._stale():
            self._count(await self.client.info("replication", **self._target()))
        if not self._replicas:
            return 0
        return int(await self.client.execute_command("WAIT", 1, self.timeout_ms, **self._target()))


__all__ = ["UNAVAILABLE", "connect", "parse_url", "redacted", "is_cluster", "mget", "scan_keys", "scan_keys_async",
           "replicated", "ReplicaWait", "RedisTarget", "SCHEMES"]
