"""Clients: the Node.js client, and `meshllm up` with the command-line clients against it."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import redis

from harness.mesh import Mesh

ROOT = Path(__file__).resolve().parent.parent
NODE_CLIENT = ROOT / "clients" / "node" / "generate.js"


@pytest.fixture(scope="module")
def small_mesh(redis_server):
    m = Mesh(redis_server.url, f"c{uuid.uuid4().hex[:8]}:")
    m.generation = m.service("generation")
    m.worker()
    yield m
    m.stop()


def test_the_node_client_streams_an_answer(small_mesh):
    assert shutil.which("node"), "Node.js is needed for the Node client (CI has it)"
    assert (NODE_CLIENT.parent / "node_modules").is_dir(), "run: npm ci --prefix clients/node"
    out = subprocess.run(["node", str(NODE_CLIENT), "--address", small_mesh.generation.address, "--chat",
                          "--max-tokens", "48", "What is the capital of France?"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "The capital of France is Paris."
    assert "FINISH_REASON_EOS prompt=37 completion=8" in out.stderr


def test_the_node_client_reports_errors(small_mesh):
    out = subprocess.run(["node", str(NODE_CLIENT), "--address", small_mesh.generation.address, "--temperature",
                          "-1", "hi"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "INVALID_ARGUMENT" in out.stderr and "temperature" in out.stderr


def meshllm(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_meshllm_up_serves_the_cli_clients_and_stops_cleanly(tmp_path):
    env = dict(os.environ, MESHLLM_LOG_FORMAT="text", MESHLLM_KV_CACHE_MB="128")
    env.pop("REDIS_URL", None)
    log = tmp_path / "up.log"                  # its children's logs: what a failure here shows
    with open(log, "w") as stderr:
        up = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--workers", "1"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 300
        while "Ctrl-C stops everything." not in "".join(lines):
            assert up.poll() is None and time.monotonic() < deadline, "".join(lines) + log.read_text()[-4000:]
            lines.append(up.stdout.readline())
        assert "generation  grpc://127.0.0.1:50053" in "".join(lines)

        out = meshllm("generate", "--remote", "127.0.0.1:50053", "--chat", "--temperature", "0",
                      "What is the capital of France?")
        assert out.returncode == 0 and out.stdout == "The capital of France is Paris.", out.stderr
        out = meshllm("tokenize", "--json", "Hello world")
        assert json.loads(out.stdout)["token_ids"] == [19556, 905]
        info = json.loads(meshllm("info").stdout)
        assert info["workers"] == 1 and info["context_length"] == 8192
        bad = meshllm("generate", "--remote", "127.0.0.1:50053", "--temperature", "-2", "hi")   # refused locally
        assert bad.returncode == 2 and "temperature must be >= 0" in bad.stderr
        bad = meshllm("generate", "--remote", "127.0.0.1:50053", "--max-tokens", "100000", "hi")  # by the server
        assert bad.returncode == 1 and "INVALID_ARGUMENT: max_new_tokens is 100000" in bad.stderr
        assert meshllm("health", "127.0.0.1:50051").stdout.strip() == "SERVING"
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 4                              # redis-server, 2 services, a worker
        # the local Redis asks for a password, and the banner does not show it
        port = re.search(r"redis +redis://:\*\*\*@127\.0\.0\.1:(\d+)/0", "".join(lines)).group(1)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=int(port)).ping()
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, log.read_text()[-4000:]
    assert meshllm("health", "127.0.0.1:50053").stdout.strip() == "UNREACHABLE"
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"children left running: {alive}"
