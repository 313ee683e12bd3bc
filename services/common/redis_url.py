"""REDIS_URL's forms, parsed without importing redis-py (the config module, which every process
loads, stays light): see redis_client.py for what each names."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://", "redis+sentinel://",
           "rediss+sentinel://")


@dataclass(frozen=True)
class RedisTarget:
    kind: str                           # "single", "cluster" or "sentinel"
    url: str                            # for "single": the URL redis-py parses itself
    hosts: tuple[tuple[str, int], ...] = ()
    password: str | None = None
    username: str | None = None
    tls: bool = False
    service_name: str = ""
    db: int = 0


def parse_url(url: str) -> RedisTarget:
    """What a REDIS_URL names; ValueError with the reason if it names nothing we can reach."""
    if not url.startswith(SCHEMES):
        raise ValueError(f"bad Redis URL {url!r}: use one of {', '.join(s + '...' for s in SCHEMES)}")
    scheme, rest = url.split("://", 1)
    if "+" not in scheme:
        return RedisTarget("single", url)
    base, kind = scheme.split("+", 1)
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, sep, secret = auth.partition(":")
        username, password = (unquote(user) or None, unquote(secret)) if sep else (None, unquote(user))
    hosts = []
    for item in netloc.split(","):
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "26379" if kind == "sentinel" else "6379"
        try:
            hosts.append((host.strip("[]"), int(port)))
        except ValueError:
            raise ValueError(f"bad Redis URL {redacted(url)!r}: {item!r} is not host:port") from None
    if not hosts or not all(h for h, _ in hosts):
        raise ValueError(f"bad Redis URL {redacted(url)!r}: no host")
    parts = [p for p in urlsplit("x://h/" + path).path.split("/") if p]
    if kind == "sentinel":
        if not parts:
            raise ValueError(f"bad Redis URL {redacted(url)!r}: name the Sentinel service "
                             "(redis+sentinel://host:26379/mymaster)")
        db = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        return RedisTarget("sentinel", url, tuple(hosts), password, username, base == "rediss", parts[0], db)
    if parts and parts != ["0"]:
        raise ValueError(f"bad Redis URL {redacted(url)!r}: a Redis Cluster has only database 0")
    return RedisTarget("cluster", url, tuple(hosts), password, username, base == "rediss")


def redacted(url: str) -> str:
    """The URL with its password (if any) replaced by ***, for logs and banners."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    auth, _, tail = rest.partition("@")
    user, colon, _secret = auth.partition(":")
    return f"{scheme}://{user}:***@{tail}" if colon else f"{scheme}://***@{tail}"


def replicated(url: str) -> bool:
    """Whether the URL names a replicated deployment (a cluster or a Sentinel-managed primary),
    where an accepted write waits for a replica: a failover then promotes a replica holding it."""
    return parse_url(url).kind != "single"
