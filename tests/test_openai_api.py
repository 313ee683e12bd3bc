"""The OpenAI-compatible gateway: its pure translation and error mapping, then one real stack
(Redis, Tokenizer, Generation, Retrieval, a worker on the default model, the gateway as a
subprocess on a free port) driven over a socket with the official `openai` package."""
import time
import uuid

import grpc
import httpx
import pytest
import redis
from pydantic import ValidationError

from harness.mesh import Mesh
from services.common.keys import Keys
from services.openai_api.errors import OpenAIError, from_grpc, from_validation, model_not_found
from services.openai_api.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from services.openai_api.translate import (
    chat_requests,
    check_model,
    completion_requests,
    embed_texts,
    refuse_unsupported,
    stop_sequences,
)

KEY = "gw-test-key"
SHAPE = {"message", "type", "param", "code"}


# ---------------------------------------------------------------------------- pure

def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(**{"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw})


def test_chat_request_one_generate_request_per_choice():
    reqs = chat_requests(chat(n=3, max_tokens=7, stop="END", seed=5), "req")
    assert [r.request_id for r in reqs] == ["req-0", "req-1", "req-2"]
    assert all(r.stopping.max_new_tokens == 7 for r in reqs)
    assert list(reqs[0].stopping.stop_sequences) == ["END"]
    assert reqs[0].chat.messages[0].content == "hi"


def test_completion_requests_in_openai_order():
    req = CompletionRequest(model="m", prompt=["a", "b"], n=2, max_tokens=4)
    reqs = completion_requests(req, "c")
    assert [r.text for r in reqs] == ["a", "a", "b", "b"]
    assert [r.request_id for r in reqs] == ["c-0", "c-1", "c-2", "c-3"]
    ids = completion_requests(CompletionRequest(model="m", prompt=[1, 2, 3]), "t")
    assert list(ids[0].token_ids.ids) == [1, 2, 3]


def test_stop_sequences_and_models():
    assert stop_sequences(None) == [] and stop_sequences("x") == ["x"] and stop_sequences(["a", "b"]) == ["a", "b"]
    check_model(None, ["m"])
    check_model("M", ["m"])
    with pytest.raises(OpenAIError) as e:
        check_model("gpt-4", ["m"])
    assert e.value.status == 404 and e.value.code == "model_not_found"


def test_unsupported_parameters_are_refused():
    with pytest.raises(OpenAIError) as e:
        refuse_unsupported(chat(logit_bias={"1": 5}), True, 16)
    assert e.value.status == 400 and e.value.param == "logit_bias"
    with pytest.raises(OpenAIError) as e:
        refuse_unsupported(chat(n=20), True, 16)
    assert e.value.param == "n"
    with pytest.raises(OpenAIError):
        refuse_unsupported(chat(logprobs=True), False, 16)
    refuse_unsupported(chat(n=2), True, 16)
    with pytest.raises(OpenAIError):
        embed_texts(EmbeddingRequest(model="m", input="x", dimensions=3), 384)
    assert embed_texts(EmbeddingRequest(model="m", input=["a", "b"]), 384) == ["a", "b"]


def test_grpc_status_to_http():
    assert from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "bad", "generation").status == 400
    overflow = from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "exceed the model's context (8192)", "generation")
    assert overflow.code == "context_length_exceeded"
    assert from_grpc(grpc.StatusCode.UNAUTHENTICATED, "", "generation").status == 401
    assert from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", "generation").status == 429
    unavailable = from_grpc(grpc.StatusCode.UNAVAILABLE, "down", "retrieval")
    assert unavailable.status == 503 and "retrieval" in unavailable.message
    assert from_grpc(grpc.StatusCode.INTERNAL, "boom", "generation").status == 500
    body = model_not_found("x", ["m"]).body()
    assert set(body["error"]) == SHAPE and body["error"]["param"] == "model"


def test_validation_errors_in_openai_shape():
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], temperature=9)
    error = from_validation(list(e.value.errors()))
    assert error.status == 400 and error.param == "temperature" and set(error.body()["error"]) == SHAPE
    missing = from_validation([{"type": "missing", "loc": ("body", "messages"), "msg": "Field required"}])
    assert missing.code == "missing_required_parameter" and missing.param == "messages"
    nested = from_validation([{"type": "string_type", "loc": ("body", "messages", 0, "role"), "msg": "bad"}])
    assert nested.param == "messages[0].role"
    assert from_validation([]).status == 400


# ---------------------------------------------------------------------------- the real stack

@pytest.fixture(scope="module")
def gateway(redis_server):
    openai = pytest.importorskip("openai")
    m = Mesh(redis_server.url, f"oa{uuid.uuid4().hex[:8]}:", env_extra={"MESHLLM_API_KEYS": KEY})
    try:
        # Generation, Retrieval (calling it with the same key) and one worker; no Tokenizer, which the
        # gateway needs only for logprobs. Generous waits: these tests share a loaded machine.
        procs = {"generation": m.service("generation", wait=False)}
        procs["retrieval"] = m.service("retrieval", wait=False, MESHLLM_GENERATION_ADDRESS=procs["generation"].address,
                                       MESHLLM_GENERATION_API_KEY=KEY)
        for name in ("generation", "retrieval"):
            m.wait_serving(procs[name], timeout=600)
        worker = m.worker(wait=False)
        client = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 600
        while not client.keys(Keys(m.key_prefix).workers_pattern):
            m.check(worker)
            assert time.monotonic() < deadline, "the worker did not register"
            time.sleep(0.2)
        client.close()
        proc = m.gateway(procs, wait=False)
        m.wait_serving(proc, timeout=300)
        client = openai.OpenAI(base_url=f"{proc.url}/v1", api_key=KEY, max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        yield proc, client, model
    finally:
        m.stop()


def test_health_is_open(gateway):
    proc, _, _ = gateway
    reply = httpx.get(f"{proc.url}/health", timeout=10)
    assert reply.status_code == 200 and reply.json()["status"] == "SERVING"


def test_models_list(gateway):
    _, client, model = gateway
    models = client.models.list().data
    assert model in [m.id for m in models] and models[0].object == "model"
    assert client.models.retrieve(model).id == model


def test_chat_unary(gateway):
    _, client, model = gateway
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                           max_tokens=8, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 0


def test_chat_streamed_with_usage(gateway):
    _, client, model = gateway
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Count."}],
                                                 max_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finishes and finishes[-1] in ("stop", "length")
    assert chunks[-1].choices == [] and 0 < chunks[-1].usage.completion_tokens <= 8
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_completions_and_n(gateway):
    _, client, model = gateway
    reply = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert reply.object == "text_completion" and reply.choices[0].text
    assert 0 < reply.usage.completion_tokens <= 8
    two = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "A word?"}],
                                         max_tokens=8, n=2, temperature=0.8, seed=1)
    assert sorted(c.index for c in two.choices) == [0, 1]
    assert all(c.message.content is not None for c in two.choices)


def test_embeddings(gateway):
    _, client, model = gateway
    # the second model card is Retrieval's encoder, the model /v1/embeddings answers for
    encoder = next(m for m in client.models.list().data if m.id != model)
    reply = client.embeddings.create(model=encoder.id, input=["the with statement", "a for loop"])
    assert [d.index for d in reply.data] == [0, 1]
    vectors = [d.embedding for d in reply.data]
    assert len(vectors[0]) == len(vectors[1]) > 0 and vectors[0] != vectors[1]


def test_rag_route(gateway):
    proc, _, _ = gateway
    reply = httpx.post(f"{proc.url}/v1/rag/completions", headers={"Authorization": f"Bearer {KEY}"},
                       json={"query": "What does the with statement do?", "max_tokens": 16}, timeout=120)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "rag.completion" and isinstance(body["citations"], list)
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["answered_from_sources"], bool)


def test_errors_in_openai_shape(gateway):
    import openai
    proc, client, model = gateway
    bad = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401 and set(e.value.body) == SHAPE
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=8)
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=8, temperature=7)
    assert e.value.status_code == 400 and e.value.param == "temperature" and set(e.value.body) == SHAPE
    raw = httpx.post(f"{proc.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                     content=b"{not json", timeout=30)
    assert raw.status_code == 400 and set(raw.json()["error"]) == SHAPE
