"""Start meshllm service processes for tests: the same commands docker compose and `meshllm up` run,
on free loopback ports, against a real redis-server."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import grpc
import redis

from services.client import health_status, open_channel
from services.common.keys import Keys
from services.common.redis_server import free_port


@dataclass
class Proc:
    name: str
    process: subprocess.Popen
    port: int = 0
    metrics_port: int = 0
    argv: list = field(default_factory=list)
    env: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig=None) -> None:
        if self.process.poll() is None:
            self.process.terminate() if sig is None else self.process.send_signal(sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Mesh:
    redis_url: str
    key_prefix: str
    env_extra: dict = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def env(self, **extra) -> dict:
        env = dict(os.environ, REDIS_URL=self.redis_url, MESHLLM_KEY_PREFIX=self.key_prefix,
                   MESHLLM_LOG_FORMAT="text", MESHLLM_HEARTBEAT_MS="300", MESHLLM_CLAIM_IDLE_MS="1500",
                   MESHLLM_KV_CACHE_MB="128")
        env.update(self.env_extra)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def _spawn(self, name: str, argv: list[str], env: dict, port: int = 0, metrics_port: int = 0) -> Proc:
        process = subprocess.Popen([sys.executable, "-m", "services.cli", *argv], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        proc = Proc(name, process, port, metrics_port, argv, env)
        self.procs.append(proc)
        return proc

    def restart(self, proc: Proc, wait: bool = True) -> Proc:
        """Stop a service and start it again with the same command, environment and port."""
        proc.stop()
        self.procs.remove(proc)
        fresh = self._spawn(proc.name, proc.argv, proc.env, proc.port, proc.metrics_port)
        if wait:
            self.wait_serving(fresh)
        return fresh

    def service(self, name: str, wait: bool = True, **env_extra) -> Proc:
        port, metrics_port = free_port(), free_port()
        proc = self._spawn(name, ["serve", name, "--port", str(port), "--metrics-port", str(metrics_port)],
                           self.env(**env_extra), port, metrics_port)
        if wait:
            self.wait_serving(proc)
        return proc

    def worker(self, wait: bool = True, **env_extra) -> Proc:
        client = redis.Redis.from_url(self.redis_url)
        pattern = Keys(self.key_prefix).workers_pattern
        before = set(client.keys(pattern))
        proc = self._spawn("worker", ["worker"], self.env(**env_extra))
        if wait:
            deadline = time.monotonic() + 120
            while not set(client.keys(pattern)) - before:
                self.check(proc)
                assert time.monotonic() < deadline, "the worker did not register"
                time.sleep(0.05)
        return proc

    def wait_serving(self, proc: Proc, timeout: float = 120, status: str = "SERVING") -> None:
        deadline = time.monotonic() + timeout
        while health_status(proc.address, timeout=1.0) != status:
            self.check(proc)
            assert time.monotonic() < deadline, f"{proc.name} not {status} after {timeout}s"
            time.sleep(0.1)

    @staticmethod
    def check(proc: Proc) -> None:
        if proc.process.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.process.returncode}: "
                                 f"{proc.process.stderr.read()[-3000:]}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def channel(proc: Proc, **kwargs) -> grpc.Channel:
    return open_channel(proc.address, **kwargs)
