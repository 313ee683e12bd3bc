"""Start meshllm service processes for tests and benchmarks: the same commands docker compose and
`meshllm up` run, on free loopback ports, against a real redis-server.

Each process logs to its own file (never to a pipe nobody reads, which would block it once full);
`Mesh.check` shows a dead process's last lines.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from services.client import health_status, http_health_status, open_channel
from services.common.keys import Keys
from services.common.redis_client import connect, scan_keys
from services.common.redis_server import free_port
from services.launcher import worker_threads


@dataclass
class Proc:
    name: str
    process: subprocess.Popen
    log_path: Path
    port: int = 0
    metrics_port: int = 0
    argv: list = field(default_factory=list)
    env: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT, for an HTTP service (the OpenAI gateway)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def rss_mb(self) -> float | None:
        try:
            import psutil
            return round(psutil.Process(self.process.pid).memory_info().rss / 2**20, 1)
        except Exception:                                # noqa: BLE001 - the process ended
            return None

    def stop(self, sig=None) -> None:
        if self.alive:
            self.process.terminate() if sig is None else self.process.send_signal(sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash or the OOM killer would leave it."""
        self.stop(signal.SIGKILL)


@dataclass
class Mesh:
    redis_url: str
    key_prefix: str
    env_extra: dict = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="meshllm-logs-")))

    def env(self, **extra) -> dict:
        env = dict(os.environ, REDIS_URL=self.redis_url, MESHLLM_KEY_PREFIX=self.key_prefix,
                   MESHLLM_LOG_FORMAT="text", MESHLLM_HEARTBEAT_MS="300", MESHLLM_CLAIM_IDLE_MS="1500",
                   MESHLLM_KV_CACHE_MB="128")
        env.update({k: str(v) for k, v in self.env_extra.items()})
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def _spawn(self, name: str, argv: list[str], env: dict, port: int = 0, metrics_port: int = 0) -> Proc:
        log_path = self.log_dir / f"{name}-{len(self.procs)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "services.cli", *argv], env=env,
                                       stdout=subprocess.DEVNULL, stderr=log)
        proc = Proc(name, process, log_path, port, metrics_port, argv, env)
        self.procs.append(proc)
        return proc

    def restart(self, proc: Proc, wait: bool = True, kill: bool = False) -> Proc:
        """Stop a process (SIGTERM, or SIGKILL with kill=True) and start it again with the same
        command, environment and port."""
        proc.kill() if kill else proc.stop()
        self.procs.remove(proc)
        fresh = self._spawn(proc.name, proc.argv, proc.env, proc.port, proc.metrics_port)
        if wait and fresh.port:
            self.wait_serving(fresh)
        return fresh

    def service(self, name: str, wait: bool = True, **env_extra) -> Proc:
        port, metrics_port = free_port(), free_port()
        proc = self._spawn(name, ["serve", name, "--port", str(port), "--metrics-port", str(metrics_port)],
                           self.env(**env_extra), port, metrics_port)
        if wait:
            self.wait_serving(proc)
        return proc

    def worker(self, wait: bool = True, register_timeout_s: float = 120, **env_extra) -> Proc:
        """Start a worker; with wait, until it registers (a cold kernel cache compiles first: give a
        benchmark on fresh code a longer register_timeout_s)."""
        client = connect(self.redis_url)
        pattern = Keys(self.key_prefix).workers_pattern
        before = set(scan_keys(client, pattern))
        proc = self._spawn("worker", ["worker"], self.env(**env_extra))
        if wait:
            deadline = time.monotonic() + register_timeout_s
            while not set(scan_keys(client, pattern)) - before:
                self.check(proc)
                assert time.monotonic() < deadline, "the worker did not register"
                time.sleep(0.05)
            proc.worker_key = (set(scan_keys(client, pattern)) - before).pop().decode()
        client.close()
        return proc

    def stack(self, workers: int = 1, **env_extra) -> dict[str, Proc]:
        """Tokenizer, Generation, Retrieval (calling this Generation) and workers, all serving. The
        workers share the cores out between them as `meshllm up` does (launcher.worker_threads)."""
        procs = {"tokenizer": self.service("tokenizer", wait=False, **env_extra),
                 "generation": self.service("generation", wait=False, **env_extra)}
        procs["retrieval"] = self.service("retrieval", wait=False,
                                          MESHLLM_GENERATION_ADDRESS=procs["generation"].address, **env_extra)
        for name in ("tokenizer", "generation", "retrieval"):
            self.wait_serving(procs[name])
        threads = worker_threads(workers, self.env(**env_extra).get("MESHLLM_THREADS"), len(os.sched_getaffinity(0)))
        worker_env = {**env_extra, "MESHLLM_THREADS": threads} if threads else env_extra
        for i in range(workers):
            procs[f"worker-{i + 1}"] = self.worker(**worker_env)
        return procs

    def gateway(self, procs: dict[str, Proc], wait: bool = True, **env_extra) -> Proc:
        """The OpenAI-compatible HTTP gateway over a stack's services (Retrieval and Tokenizer
        when `procs` has them); `proc.url` is its base URL."""
        addresses = {f"MESHLLM_{name.upper()}_ADDRESS": procs[name].address if name in procs else ""
                     for name in ("generation", "retrieval", "tokenizer")}
        proc = self.service("openai", wait=False, **{**addresses, **env_extra})
        if wait:
            self.wait_serving(proc)
        return proc

    def wait_serving(self, proc: Proc, timeout: float = 120, status: str = "SERVING") -> None:
        deadline = time.monotonic() + timeout
        check = (lambda: http_health_status(f"{proc.url}/health", timeout=1.0)) if proc.name == "openai" \
            else (lambda: health_status(proc.address, timeout=1.0))
        while check() != status:
            self.check(proc)
            assert time.monotonic() < deadline, f"{proc.name} not {status} after {timeout}s"
            time.sleep(0.1)

    @staticmethod
    def check(proc: Proc) -> None:
        if not proc.alive:
            raise AssertionError(f"{proc.name} exited with {proc.process.returncode}: {proc.log_tail()}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        shutil.rmtree(self.log_dir, ignore_errors=True)


def channel(proc: Proc, **kwargs) -> grpc.Channel:
    return open_channel(proc.address, **kwargs)
