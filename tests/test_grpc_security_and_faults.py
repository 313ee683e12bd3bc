"""API keys, TLS, Redis passwords, limits, a full queue, and Redis going away and coming back, over
real sockets."""
import re
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.mesh import Mesh, channel
from services.api import (
    generation_pb2,
    generation_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
)
from services.client import health_status
from services.common.redis_server import RedisServer


def greedy(n=4):
    return dict(sampling=generation_pb2.SamplingParams(temperature=0.0),
                stopping=generation_pb2.StoppingCriteria(max_new_tokens=n))


@pytest.fixture
def mesh(redis_server):
    m = Mesh(redis_server.url, f"s{uuid.uuid4().hex[:8]}:")
    yield m
    m.stop()


def test_api_keys_guard_unary_and_streaming_calls_but_not_health(mesh):
    generation = mesh.service("generation", MESHLLM_API_KEYS="k-one,k-two")
    mesh.worker()
    request = generation_pb2.GenerateRequest(text="Hello", **greedy())
    for key in (None, "wrong"):
        with channel(generation, api_key=key) as ch:
            stub = generation_pb2_grpc.GenerationStub(ch)
            for call in (stub.Generate, lambda r, s=stub: list(s.GenerateStream(r)), stub.ModelInfo):
                with pytest.raises(grpc.RpcError) as e:
                    call(request if call is not stub.ModelInfo else generation_pb2.ModelInfoRequest())
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "API key" in e.value.details()
            assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status == 1
    with channel(generation, api_key="k-two") as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        assert stub.Generate(request).token_ids and list(stub.GenerateStream(request))


def test_tls_with_a_generated_certificate(mesh, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    tokenizer = mesh.service("tokenizer", wait=False, MESHLLM_TLS_CERT=cert, MESHLLM_TLS_KEY=key)
    deadline = time.monotonic() + 60
    while health_status(tokenizer.address, tls_ca=str(cert)) != "SERVING":
        mesh.check(tokenizer)
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with channel(tokenizer, tls_ca=str(cert)) as ch:
        assert list(tokenizer_pb2_grpc.TokenizerStub(ch).Tokenize(
            tokenizer_pb2.TokenizeRequest(text="Hello world")).token_ids) == [19556, 905]
    with channel(tokenizer) as plain:                         # a plaintext client gets nothing
        with pytest.raises(grpc.RpcError) as e:
            tokenizer_pb2_grpc.TokenizerStub(plain).Tokenize(tokenizer_pb2.TokenizeRequest(text="x"), timeout=3)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_full_queue_is_resource_exhausted(mesh):
    generation = mesh.service("generation", MESHLLM_MAX_QUEUE_LEN=1)      # and no worker: jobs wait
    with channel(generation) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        waiting = stub.GenerateStream(generation_pb2.GenerateRequest(text="Hello", **greedy()))
        time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as e:
            stub.Generate(generation_pb2.GenerateRequest(text="Hello", **greedy()))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry later" in e.value.details()
        waiting.cancel()


def test_health_flips_with_redis_and_calls_fail_unavailable(tmp_path):
    server = RedisServer(data_dir=str(tmp_path)).start()
    mesh = Mesh(server.url, "h:")
    try:
        generation = mesh.service("generation")
        tokenizer = mesh.service("tokenizer")
        server.kill()
        mesh.wait_serving(generation, timeout=10, status="NOT_SERVING")
        assert health_status(tokenizer.address) == "SERVING"          # it does not need Redis
        with channel(generation) as ch:
            with pytest.raises(grpc.RpcError) as e:
                generation_pb2_grpc.GenerationStub(ch).Generate(
                    generation_pb2.GenerateRequest(text="Hello", **greedy()), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "Redis" in e.value.details()
        server = RedisServer(port=server.port, data_dir=str(tmp_path)).start()
        mesh.wait_serving(generation, timeout=10)
        mesh.worker()
        with channel(generation) as ch:
            reply = generation_pb2_grpc.GenerationStub(ch).Generate(
                generation_pb2.GenerateRequest(text="Hello", **greedy()), timeout=60)
            assert len(reply.token_ids) == 4
    finally:
        mesh.stop()
        server.stop()


def test_api_keys_guard_the_tokenizer_and_retrieval_services_too(mesh):
    tokenizer = mesh.service("tokenizer", MESHLLM_API_KEYS="t-key")
    retrieval = mesh.service("retrieval", MESHLLM_API_KEYS="r-key")
    doc = retrieval_pb2.Document(id="k", text="Keys guard every call.")
    for proc, key, calls in (
            (tokenizer, "t-key", lambda ch: tokenizer_pb2_grpc.TokenizerStub(ch).Tokenize(
                tokenizer_pb2.TokenizeRequest(text="x"), timeout=10)),
            (retrieval, "r-key", lambda ch: retrieval_pb2_grpc.RetrievalStub(ch).IngestStream(iter([doc]), timeout=60)),
            (retrieval, "r-key", lambda ch: retrieval_pb2_grpc.RetrievalStub(ch).Search(
                retrieval_pb2.SearchRequest(query="keys"), timeout=30))):
        for wrong in (None, "t-key" if key == "r-key" else "r-key"):
            with channel(proc, api_key=wrong) as ch, pytest.raises(grpc.RpcError) as e:
                calls(ch)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with channel(proc, api_key=key) as ch:
            calls(ch)
        assert health_status(proc.address) == "SERVING"


def test_redis_with_a_password(tmp_path):
    server = RedisServer(password="s3cret-pw", data_dir=str(tmp_path)).start()
    good = Mesh(server.url, "pw:")
    bad = Mesh(server.url.replace("s3cret-pw", "wrong"), "pw:")
    try:
        generation = good.service("generation")
        good.worker()
        with channel(generation) as ch:
            assert len(generation_pb2_grpc.GenerationStub(ch).Generate(
                generation_pb2.GenerateRequest(text="Hello", **greedy(3)), timeout=60).token_ids) == 3
        refused = bad.service("generation", wait=False)
        deadline = time.monotonic() + 120                         # a loaded machine starts it slowly
        while health_status(refused.address) == "UNREACHABLE" and time.monotonic() < deadline:
            bad.check(refused)
            time.sleep(0.2)
        time.sleep(2)
        bad.check(refused)                                        # running, and saying why it cannot serve
        assert health_status(refused.address) == "NOT_SERVING"
        with channel(refused) as ch, pytest.raises(grpc.RpcError) as e:
            generation_pb2_grpc.GenerationStub(ch).Generate(generation_pb2.GenerateRequest(text="Hello"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        good.stop()
        bad.stop()
        server.stop()


def test_too_many_concurrent_calls_are_resource_exhausted(mesh):
    generation = mesh.service("generation", MESHLLM_MAX_CONCURRENT_RPCS=2)      # no worker: calls wait
    with channel(generation) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        waiting = [stub.GenerateStream(generation_pb2.GenerateRequest(text="Hello", **greedy())) for _ in range(2)]
        time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as e:
            stub.Generate(generation_pb2.GenerateRequest(text="Hello", **greedy()), timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in waiting:
            call.cancel()


def test_no_pickle_anywhere():
    """Nothing the mesh reads from Redis or the network is unpickled: bytes are parsed by format."""
    root = Path(__file__).resolve().parent.parent
    pattern = re.compile(r"\b(import pickle|from pickle|cPickle|import marshal|import shelve|import dill|"
                         r"allow_pickle\s*=\s*True|torch\.load|joblib\.load)")
    hits = [f"{path.relative_to(root)}:{n}" for folder in ("engine", "services", "harness", "bench")
            for path in (root / folder).rglob("*.py")
            for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
