"""`meshllm up`: the whole stack on this machine, as child processes.

Redis (a local redis-server, unless REDIS_URL points at one), the Tokenizer, Retrieval and
Generation services, N workers and the OpenAI-compatible HTTP gateway (unless --no-openai), with
the same commands, ports and variables as docker-compose.yml. It waits until every service
reports SERVING (the gateway: its /health) and every worker has registered,
ingests the default corpus if the document index is empty, prints the endpoints, and on Ctrl-C
(or SIGTERM, or any child dying) stops everything: workers first, then services, then Redis.

The local Redis keeps its data (append-only file) in ~/.cache/meshllm/redis, so documents survive
a restart; --ephemeral uses a throwaway folder instead.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from engine.model_registry import CATALOGUE, DEFAULT_MODEL, resolve_model

from .cli import DEFAULT_METRICS_PORTS, DEFAULT_PORTS
from .client import health_status, http_health_status
from .common.config import OpenAIConfig, from_sources
from .common.keys import Keys
from .common.redis_client import connect, redacted, scan_keys
from .common.redis_server import RedisServer, child_process_options, local_password, wait_for_redis

SERVICES = ("tokenizer", "retrieval", "generation")


def redis_data_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    path = os.path.join(base, "meshllm", "redis")
    os.makedirs(path, exist_ok=True)
    return path


def worker_threads(workers: int, configured: str | None, cores: int) -> int | None:
    """Kernel threads for each of `workers` local workers: the cores shared out, unless
    MESHLLM_THREADS says otherwise (None: leave it). Two workers spinning two OpenMP threads each
    on two cores served a ninth of one worker's tokens (the threads busy-wait for each other)."""
    if workers <= 1 or configured:
        return None
    return max(1, cores // workers)


class Stack:
    def __init__(self, args, model_path: str, model_name: str | None = None):
        self.args = args
        self.model_path = model_path
        self.model_name = model_name          # the catalogue name, the gateway's model id
        self.openai = None if getattr(args, "no_openai", False) else from_sources(OpenAIConfig)
        self.redis_server: RedisServer | None = None
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = False

    def log(self, message: str) -> None:
        print(f"meshllm up: {message}", file=sys.stderr, flush=True)

    def start(self) -> dict:
        env = dict(os.environ)
        redis_url = env.get("REDIS_URL")
        if redis_url:
            self.log(f"using Redis at {redacted(redis_url)}")
            wait_for_redis(redis_url)
        else:
            # loopback only, and still with a password: other local users cannot read the mesh's state
            if self.args.ephemeral:
                self.redis_server = RedisServer(password=local_password(None), own_session=True).start()
            else:
                data_dir = redis_data_dir()
                self.redis_server = RedisServer(password=local_password(data_dir), data_dir=data_dir, persist=True,
                                                own_session=True).start()
            redis_url = env["REDIS_URL"] = self.redis_server.url
            self.log(f"started redis-server on port {self.redis_server.port}")
        env.setdefault("MESHLLM_HOST", self.args.host)
        env["MESHLLM_MODEL"] = self.model_path
        self.log(f"model {self.model_path}")
        if self.args.api_keys:
            env["MESHLLM_API_KEYS"] = self.args.api_keys
        if self.args.fast:
            env["MESHLLM_FAST"] = "1"
        for service in SERVICES:
            self.spawn(service, ["serve", service], env)
        worker_env = dict(env)
        threads = worker_threads(self.args.workers, env.get("MESHLLM_THREADS"), len(os.sched_getaffinity(0)))
        if threads:
            worker_env["MESHLLM_THREADS"] = str(threads)
        for i in range(self.args.workers):
            self.spawn(f"worker-{i + 1}", ["worker"], worker_env)
        endpoints = {"redis": redis_url, **{s: f"{self.args.host}:{DEFAULT_PORTS[s]}" for s in SERVICES}}
        if self.openai:
            gateway_env = dict(env)
            if self.model_name:               # the services see the model's path; clients name it
                gateway_env.setdefault("MESHLLM_SERVED_MODEL_NAME", self.model_name)
            for service in SERVICES:          # the addresses it calls, reachable whatever --host is
                gateway_env.setdefault(f"MESHLLM_{service.upper()}_ADDRESS", self.local_address(service))
            self.spawn("openai", ["serve", "openai"], gateway_env)
            scheme = "https" if env.get("MESHLLM_TLS_CERT") else "http"
            endpoints["openai"] = f"{scheme}://{self.args.host}:{self.openai.openai_port}"
        return endpoints

    def local_address(self, service: str) -> str:
        host = "127.0.0.1" if self.args.host in ("0.0.0.0", "") else self.args.host
        return f"{host}:{DEFAULT_PORTS[service]}"

    def gateway_health_url(self, endpoints: dict) -> str:
        scheme, _, rest = endpoints["openai"].partition("://")
        host = "127.0.0.1" if self.args.host in ("0.0.0.0", "") else self.args.host
        return f"{scheme}://{host}:{rest.rpartition(':')[2]}/health"

    def spawn(self, name: str, argv: list[str], env: dict) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", *argv], env=env, **child_process_options())
        self.children.append((name, proc))

    def wait_ready(self, endpoints: dict) -> None:
        deadline = time.monotonic() + self.args.timeout
        pending = set(SERVICES) | ({"openai"} if "openai" in endpoints else set())
        keys = Keys(os.environ.get("MESHLLM_KEY_PREFIX", "meshllm:"))
        client = connect(endpoints["redis"])
        workers = 0
        while pending or workers < self.args.workers:
            self.check_children()
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {self.args.timeout:.0f}s: {sorted(pending)}, "
                                   f"{workers}/{self.args.workers} workers")
            for service in list(pending):
                if service == "openai":
                    status = http_health_status(self.gateway_health_url(endpoints), timeout=1.0)
                else:
                    status = health_status(self.local_address(service), timeout=1.0)
                if status == "SERVING":
                    pending.discard(service)
                    self.log(f"{service} is serving on {endpoints[service]}")
            workers = len(scan_keys(client, keys.workers_pattern))
            time.sleep(0.3)
        self.log(f"{workers} worker(s) ready")

    def ensure_default_corpus(self, endpoints: dict) -> None:
        """Ingest the Python language reference if no document is indexed yet."""
        from .api import retrieval_pb2, retrieval_pb2_grpc
        from .client import open_channel
        from .retrieval.corpus import pydoc_topics
        with open_channel(endpoints["retrieval"], api_key=(self.args.api_keys or "").split(",")[0] or None) as ch:
            stub = retrieval_pb2_grpc.RetrievalStub(ch)
            if stub.Stats(retrieval_pb2.StatsRequest(), timeout=30).documents:
                return
            self.log("ingesting the default corpus (the Python language reference, first start only)...")
            started = time.monotonic()
            reply = stub.IngestStream(retrieval_pb2.Document(id=i, text=t, source=s, metadata=m)
                                      for i, t, s, m in pydoc_topics())
            self.log(f"ingested {reply.total_documents} documents, {reply.total_chunks} chunks "
                     f"in {time.monotonic() - started:.0f}s")

    def check_children(self) -> None:
        for name, proc in self.children:
            code = proc.poll()
            if code is not None and not self.stopping:
                raise RuntimeError(f"{name} exited with code {code}")

    def stop(self) -> None:
        self.stopping = True
        # workers first (they finish or hand back their jobs), then the services, then Redis
        for group in (lambda n: n.startswith("worker"), lambda n: not n.startswith("worker")):
            procs = [p for n, p in self.children if group(n) and p.poll() is None]
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if self.redis_server is not None:
            self.redis_server.stop()


def up(args) -> int:
    # a missing model fails here, in one line, before anything starts
    choice = args.model or os.environ.get("MESHLLM_MODEL")
    model_path = resolve_model(choice)                                  # None: the default
    name = (choice or DEFAULT_MODEL) if (choice or DEFAULT_MODEL) in CATALOGUE else None   # a path: no name
    stack = Stack(args, str(model_path), name)
    stopping = {"signal": False}

    def on_signal(signum, frame):
        stopping["signal"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        endpoints = stack.start()
        stack.wait_ready(endpoints)
        if not args.no_corpus:
            stack.ensure_default_corpus(endpoints)
        print("meshllm is up:")
        for name in SERVICES:
            print(f"  {name:<11} grpc://{endpoints[name]}   metrics http://{args.host}:{DEFAULT_METRICS_PORTS[name]}")
        if "openai" in endpoints:
            print(f"  {'openai':<11} {endpoints['openai']}/v1   metrics "
                  f"http://{args.host}:{stack.openai.openai_metrics_port}")
        print(f"  redis       {redacted(endpoints['redis'])}")
        print(f"  workers     {args.workers}")
        print("Try: meshllm generate --remote 127.0.0.1:50053 --chat \"What is the capital of France?\"")
        print("     meshllm ask \"What does the with statement do?\"")
        if "openai" in endpoints:
            print(f"     curl {endpoints['openai']}/v1/models")
        print("Ctrl-C stops everything.", flush=True)
        while not stopping["signal"]:
            stack.check_children()
            time.sleep(0.5)
        return 0
    except (RuntimeError, TimeoutError) as e:
        stack.log(str(e))
        return 1
    finally:
        stack.stop()
        stack.log("stopped")
