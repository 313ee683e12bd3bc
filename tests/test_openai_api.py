"""The OpenAI-compatible gateway over one real stack (Redis, Tokenizer, Generation, Retrieval, one
worker on the suite's model, the gateway as `meshllm serve openai` on a free port, all with an API
key), driven over a socket with the official `openai` package and, for SSE framing and
disconnects, httpx. Then a lone gateway with TLS before its mesh is up, and `meshllm up`'s wiring.
The pure translation and error mapping are in test_openai_translate.py."""
import asyncio
import json
import re
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from harness.mesh import Mesh, channel
from services.api import retrieval_pb2, retrieval_pb2_grpc
from services.cli import build_parser
from services.client import http_health_status
from services.common.keys import Keys
from services.common.redis_client import connect, scan_keys
from services.common.redis_server import free_port
from services.launcher import Stack

openai = pytest.importorskip("openai")

KEY = "gw-test-key"
SHAPE = {"message", "type", "param", "code"}
MODEL = "smollm2-135m-instruct"                  # conftest's MESHLLM_MODEL: its catalogue name is the id
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
DOCUMENTS = [
    ("zephyr-launch", "The Zephyr rocket launch is scheduled for Monday at 9am from pad 39A. "
                      "The launch director is Ada Brooks."),
    ("sourdough", "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough."),
]


@pytest.fixture(scope="module")
def stack(redis_server):
    m = Mesh(redis_server.url, f"oa{uuid.uuid4().hex[:8]}:", env_extra={"MESHLLM_API_KEYS": KEY})
    try:
        # Generous waits: this machine is shared, and a cold numba cache compiles for minutes.
        procs = {"tokenizer": m.service("tokenizer", wait=False),
                 "generation": m.service("generation", wait=False)}
        procs["retrieval"] = m.service("retrieval", wait=False, MESHLLM_GENERATION_ADDRESS=procs["generation"].address,
                                       MESHLLM_GENERATION_API_KEY=KEY)
        for proc in procs.values():
            m.wait_serving(proc, timeout=600)
        worker = m.worker(wait=False)
        client = connect(redis_server.url)
        deadline = time.monotonic() + 600
        while not scan_keys(client, Keys(m.key_prefix).workers_pattern):
            m.check(worker)
            assert time.monotonic() < deadline, "the worker did not register"
            time.sleep(0.2)
        client.close()
        with channel(procs["retrieval"], api_key=KEY) as ch:
            retrieval_pb2_grpc.RetrievalStub(ch).Ingest(retrieval_pb2.IngestRequest(documents=[
                retrieval_pb2.Document(id=i, text=t, source="notes") for i, t in DOCUMENTS]), timeout=300)
        m.gateway_proc = m.gateway(procs, wait=False)
        m.wait_serving(m.gateway_proc, timeout=300)
        m.generation = procs["generation"]
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def url(stack) -> str:
    return stack.gateway_proc.url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)


AUTH = {"Authorization": f"Bearer {KEY}"}


def sse_events(lines) -> list:
    """The data of each event of an SSE body, `[DONE]` as the string."""
    events = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"not SSE framing: {line!r}"
    return events


def metric(text: str, name: str, **labels) -> float:
    """A sample's value in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rpartition(" ")[2])
    return 0.0


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


# ---------------------------------------------------------------------------- health, models

def test_health_is_open_and_lists_the_services(url):
    reply = httpx.get(f"{url}/health", timeout=10)
    assert reply.status_code == 200
    assert reply.json() == {"status": "SERVING", "services": {"generation": "SERVING", "retrieval": "SERVING",
                                                              "tokenizer": "SERVING"}}


def test_models_list_and_retrieve(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {MODEL, "all-MiniLM-L6-v2"}
    assert models[MODEL].owned_by == "meshllm" and models[MODEL].context_length == 8192
    assert models["all-MiniLM-L6-v2"].dimensions == 384
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


# ---------------------------------------------------------------------------- chat

def test_chat_unary_answers_as_the_grpc_service_does(client):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=16, temperature=0, user="u-1")
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == MODEL
    assert (choice.index, choice.message.role, choice.message.content) == (0, "assistant",
                                                                           "The capital of France is Paris.")
    assert choice.finish_reason == "stop" and reply.system_fingerprint.startswith("fp_")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (37, 8, 45)


def test_chat_streamed_with_include_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The capital of France is Paris."
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (37, 8)


NODE_CLIENT = Path(__file__).resolve().parents[1] / "clients" / "node" / "openai_chat.js"


def test_the_openai_npm_package_from_node(url):
    """clients/node/openai_chat.js: unary, streamed with usage, a JSON schema, and a 404 the npm
    client raises as an APIError with OpenAI's status and code."""
    assert shutil.which("node"), "Node.js is needed (CI has it)"
    assert (NODE_CLIENT.parent / "node_modules" / "openai").is_dir(), "run: npm ci --prefix clients/node"
    proc = subprocess.run(["node", str(NODE_CLIENT), "--base-url", f"{url}/v1", "--api-key", KEY, "--max-tokens", "16"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model"] == MODEL
    assert result["unary"]["text"] == result["streamed"]["text"] == "The capital of France is Paris."
    assert result["unary"]["finish_reason"] == result["streamed"]["finish_reason"] == "stop"
    assert result["streamed"]["usage"]["completion_tokens"] == result["unary"]["usage"]["completion_tokens"] == 8
    assert set(result["structured"]) == {"answer"} and isinstance(result["structured"]["answer"], str)
    assert result["error"] == {"status": 404, "code": "model_not_found"}


def test_langchain_chat_openai(url):
    """LangChain's ChatOpenAI against the gateway: invoke, stream, and with_structured_output
    (a JSON schema through response_format)."""
    chat_models = pytest.importorskip("langchain_openai")
    llm = chat_models.ChatOpenAI(model=MODEL, base_url=f"{url}/v1", api_key=KEY, temperature=0, max_tokens=16,
                                 max_retries=0, timeout=120)
    reply = llm.invoke("What is the capital of France?")
    assert reply.content == "The capital of France is Paris."
    assert reply.response_metadata["finish_reason"] == "stop" and reply.usage_metadata["output_tokens"] == 8
    assert "".join(chunk.content for chunk in llm.stream("What is the capital of France?")) == reply.content
    schema = {"title": "capital", "description": "A country's capital", "type": "object",
              "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    structured = llm.bind(max_tokens=40).with_structured_output(schema, method="json_schema")
    answer = structured.invoke("What is the capital of France?")
    assert set(answer) == {"city"} and isinstance(answer["city"], str)


def test_documents_over_http(url):
    """/v1/documents: ingest (per-document status), list pages, delete (404 once gone), the key
    required; the Ask page and its files open without one."""
    docs = f"{url}/v1/documents"
    body = {"documents": [{"id": "http-doc", "text": "Basalt forms when lava cools quickly.", "source": "rocks"}]}
    added = httpx.post(docs, json=body, headers=AUTH, timeout=120).json()
    assert added["data"] == [{"id": "http-doc", "status": "added", "chunks": 1, "duplicate_of": None}]
    again = httpx.post(docs, json=body, headers=AUTH, timeout=120).json()
    assert again["data"][0]["status"] == "unchanged"
    listed = httpx.get(docs, params={"limit": 1}, headers=AUTH, timeout=30).json()
    assert listed["total"] == len(DOCUMENTS) + 1 and len(listed["data"]) == 1 and listed["next_after"]
    ids = [d["id"] for d in httpx.get(docs, headers=AUTH, timeout=30).json()["data"]]
    assert ids == sorted([i for i, _ in DOCUMENTS] + ["http-doc"])
    assert httpx.delete(f"{docs}/http-doc", headers=AUTH, timeout=30).json()["deleted"] is True
    gone = httpx.delete(f"{docs}/http-doc", headers=AUTH, timeout=30)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "document_not_found"
    assert httpx.get(docs, timeout=30).status_code == 401
    assert httpx.post(docs, json={"documents": []}, headers=AUTH, timeout=30).status_code == 400
    page = httpx.get(f"{url}/", timeout=30)
    assert page.status_code == 200 and "<title>meshllm" in page.text
    assert httpx.get(f"{url}/ui/app.js", timeout=30).status_code == 200


def test_sse_framing_is_openais(url):
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=120) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        events = sse_events(reply.iter_lines())
    assert events[-1] == "[DONE]" and events[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                                                   "finish_reason": "length"}
    assert all("usage" not in e for e in events[:-1])          # no include_usage: no usage field at all


def test_chat_logprobs_name_the_tokens(client):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=4, temperature=0, logprobs=True,
                                           top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert "".join(t.token for t in content) == reply.choices[0].message.content == "The capital of France"
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 2 and t.bytes == list(t.token.encode())
        assert t.top_logprobs[0].token == t.token                # greedy: the chosen token is the likeliest
    streamed = list(client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=4, temperature=0,
                                                   logprobs=True, top_logprobs=1, stream=True))
    tokens = [t.token for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert tokens == [t.token for t in content]


def test_n_choices_count_the_prompt_once(client):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=6, n=2, temperature=0.8, seed=1)
    assert [c.index for c in reply.choices] == [0, 1] and all(c.message.content for c in reply.choices)
    assert reply.usage.prompt_tokens == 37 and reply.usage.completion_tokens == 12
    again = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=6, n=2, temperature=0.8, seed=1)
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]   # seeded
    streamed = list(client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=6, n=2, temperature=0,
                                                   stream=True))
    texts = ["".join(c.choices[0].delta.content or "" for c in streamed if c.choices and c.choices[0].index == i)
             for i in (0, 1)]
    assert texts == ["The capital of France is Paris"] * 2


# ---------------------------------------------------------------------------- completions

def test_completions_unary_streamed_and_stop(client):
    reply = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert reply.object == "text_completion" and reply.choices[0].text == " Paris.\n\nThe"
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    chunks = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " Paris.\n\nThe"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    stopped = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0,
                                        stop=["\n"])
    assert stopped.choices[0].text == " Paris." and stopped.choices[0].finish_reason == "stop"


def test_completions_of_several_prompts_and_logprobs(client):
    reply = client.completions.create(model=MODEL, prompt=["The capital of France is", "Once upon a time"],
                                      max_tokens=3, temperature=0, n=2, logprobs=1)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.choices[0].text == reply.choices[1].text == " Paris.\n"
    lp = reply.choices[0].logprobs
    assert "".join(lp.tokens) == " Paris.\n" and lp.text_offset == [0, 6, 7] and len(lp.top_logprobs[0]) == 1


# ---------------------------------------------------------------------------- embeddings, RAG

def test_embeddings_float_and_base64(client, url):
    reply = client.embeddings.create(model="all-MiniLM-L6-v2", input=["the with statement", "a for loop"])
    assert [d.index for d in reply.data] == [0, 1] and reply.model == "all-MiniLM-L6-v2"
    assert all(len(d.embedding) == 384 for d in reply.data) and reply.data[0].embedding != reply.data[1].embedding
    # the openai package asks for base64 and decodes it; float must give the same vector
    raw = httpx.post(f"{url}/v1/embeddings", headers=AUTH, timeout=60,
                     json={"model": "all-MiniLM-L6-v2", "input": "the with statement", "encoding_format": "float"})
    assert raw.json()["data"][0]["embedding"] == pytest.approx(reply.data[0].embedding, abs=1e-6)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_rag_answers_with_its_citations(url):
    reply = httpx.post(f"{url}/v1/rag/completions", headers=AUTH, timeout=120,
                       json={"query": "When is the Zephyr rocket launch?", "top_k": 2, "max_tokens": 16})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "rag.completion" and body["answered_from_sources"] is True
    assert body["citations"][0]["document_id"] == "zephyr-launch" and body["citations"][0]["number"] == 1
    assert body["choices"][0]["message"]["content"] and body["choices"][0]["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= 16


def test_rag_through_the_openai_client_as_the_readme_shows(client):
    body = client.post("/rag/completions", cast_to=object, body={"query": "When is the Zephyr rocket launch?",
                                                                  "max_tokens": 8})
    assert body["object"] == "rag.completion" and body["citations"][0]["document_id"] == "zephyr-launch"


def test_rag_streamed(url):
    body = {"query": "When is the Zephyr rocket launch?", "top_k": 2, "max_tokens": 16, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}/v1/rag/completions", json=body, headers=AUTH, timeout=120) as reply:
        assert reply.status_code == 200
        events = sse_events(reply.iter_lines())
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] > 0
    first, last = events[0], events[-3]
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert first["citations"][0]["document_id"] == "zephyr-launch"
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and "cited" in last["citations"][0]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2])


# ---------------------------------------------------------------------------- errors

def test_a_bad_or_missing_key_is_401(url):
    for headers in ({"Authorization": "Bearer wrong"}, {}):
        reply = httpx.get(f"{url}/v1/models", headers=headers, timeout=10)
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model=MODEL, messages=FRANCE)
    assert set(e.value.body) == SHAPE


def test_an_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=FRANCE, max_tokens=4)
    assert (e.value.code, e.value.param) == ("model_not_found", "model") and set(e.value.body) == SHAPE


@pytest.mark.parametrize("kwargs,param,code", [
    ({"temperature": 7}, "temperature", "invalid_value"),
    ({"messages": []}, "messages", "invalid_value"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, None,   # SmolLM2: no tools
     "invalid_value"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
     None, "invalid_value"),
    ({"extra_body": {"bogus": 1}}, "bogus", "unknown_parameter"),
])
def test_bad_parameters_are_400_naming_them(client, kwargs, param, code):
    request = {"model": MODEL, "messages": FRANCE, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**request)
    assert (e.value.status_code, e.value.param, e.value.code) == (400, param, code), e.value.body
    assert set(e.value.body) == SHAPE


def test_json_schema_output_validates_unary_and_streamed(client):
    """response_format json_schema through the openai client: the answer parses and validates,
    streamed or not, and its choice finishes with "stop"."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {"country": {"type": "string", "maxLength": 20},
                                               "capital": {"type": "string", "maxLength": 20}},
              "required": ["country", "capital"], "additionalProperties": False}
    response_format = {"type": "json_schema", "json_schema": {"name": "capital", "schema": schema, "strict": True}}
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=60, temperature=0,
                                           response_format=response_format)
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    assert reply.choices[0].finish_reason == "stop"
    chunks = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=60, temperature=0.8, seed=3,
                                            response_format=response_format, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), schema)
    choice = client.completions.create(model=MODEL, prompt="Is Paris in France? Answer:", max_tokens=4,
                                       extra_body={"guided_choice": [" yes", " no"]}).choices[0]
    assert choice.text in (" yes", " no")


def test_the_mesh_refusing_a_request_is_400_even_when_streamed(client):
    """Refusals the Generation service makes (not the gateway's schema) keep their HTTP status
    on a stream: it is answered only after the call's first message."""
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=[5] * 9000, max_tokens=4)
    assert e.value.code == "context_length_exceeded" and "8192" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        list(client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=100000, stream=True))
    assert "max_new_tokens is 100000" in e.value.message


def test_invalid_json_is_400(url):
    headers = {**AUTH, "Content-Type": "application/json"}
    reply = httpx.post(f"{url}/v1/chat/completions", headers=headers, content=b"{not json", timeout=30)
    assert reply.status_code == 400 and set(reply.json()["error"]) == SHAPE
    assert reply.json()["error"]["code"] == "invalid_json" and "not valid JSON" in reply.json()["error"]["message"]
    form = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, data={"model": MODEL}, timeout=30)  # curl -d
    assert form.status_code == 400 and "Content-Type: application/json" in form.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/nothing", headers=AUTH, timeout=10).json()["error"]["code"] == "not_found"


# ---------------------------------------------------------------------------- cancellation, metrics

def worker_info(stack) -> dict:
    """The worker's last heartbeat; {} while its key has lapsed (a heartbeat late on a loaded machine)."""
    client = connect(stack.redis_url)
    try:
        keys = scan_keys(client, Keys(stack.key_prefix).workers_pattern)
        return {k.decode(): v.decode() for k, v in client.hgetall(keys[0]).items()} if keys else {}
    finally:
        client.close()


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_cancels_the_job(stack, url, stream):
    method = "GenerateStream" if stream else "Generate"
    before = metric(scrape(stack.generation.metrics_port), "meshllm_requests_total", method=method, code="CANCELLED")
    # 2800 tokens (most of the harness's 2912-token KV pool) take ~19 s on this machine class, well
    # over the 10 s below: only a cancellation frees the worker in time
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2800, "ignore_eos": True, "stream": stream}
    if stream:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, headers=AUTH, timeout=120) as reply:
            assert reply.status_code == 200, reply.read()
            deadline = time.monotonic() + 10
            for line in reply.iter_lines():      # streaming, until a heartbeat shows the sequence running
                if worker_info(stack).get("running") == "1":
                    break
                assert time.monotonic() < deadline and "[DONE]" not in line
    else:                                        # a unary request whose client gives up waiting
        asyncio.run(_post_and_leave_once_running(stack, f"{url}/v1/completions", body))
    # the connection is closed: the gateway cancels its call, Generation cancels the job. The job would
    # run ~19 s, so the deadline is no hint; the CANCELLED count is what tells a cancel from an end.
    deadline = time.monotonic() + 15
    while True:
        cancelled = metric(scrape(stack.generation.metrics_port), "meshllm_requests_total", method=method,
                           code="CANCELLED")
        info = worker_info(stack)                # a heartbeat reports it: the worker dropped the sequence
        if cancelled == before + 1 and info.get("running") == "0" and info["kv_blocks_free"] == info["kv_blocks"]:
            break
        assert time.monotonic() < deadline, _cancel_report(stack, method, before, cancelled, info)
        time.sleep(0.2)


async def _post_and_leave_once_running(stack, url: str, body: dict) -> None:
    """POST body and close the connection once a heartbeat shows its sequence running: a client
    that left sooner (a fixed read timeout on a loaded machine) may leave before the gateway has
    called Generation, and then there is no job to cancel."""
    async with httpx.AsyncClient(timeout=120) as client:
        post = asyncio.ensure_future(client.post(url, json=body, headers=AUTH))
        deadline = time.monotonic() + 10
        while worker_info(stack).get("running") != "1":
            assert not post.done() and time.monotonic() < deadline, post.done() and post.result()
            await asyncio.sleep(0.1)
        post.cancel()                            # closes the connection mid-request
        await asyncio.gather(post, return_exceptions=True)


def _cancel_report(stack, method: str, before: float, cancelled: float, info: dict) -> str:
    """What a cancellation that did not happen in time leaves behind, most telling first: how
    Generation counted the calls, what the worker holds, then both services' logs."""
    text = scrape(stack.generation.metrics_port)
    codes = {code: metric(text, "meshllm_requests_total", method=method, code=code)
             for code in ("OK", "CANCELLED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "INTERNAL", "UNKNOWN")}
    return (f"{method} CANCELLED {before} -> {cancelled}; {method} calls by code {codes}; worker running="
            f"{info.get('running')} kv_blocks_free={info.get('kv_blocks_free')}/{info.get('kv_blocks')}\n"
            f"--- gateway log:\n{stack.gateway_proc.log_tail(2500)}\n--- Generation log:\n"
            f"{stack.generation.log_tail(2500)}")


def test_gateway_metrics(stack, client, url):
    list(client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=3, temperature=0, stream=True))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
    text = scrape(stack.gateway_proc.metrics_port)
    assert metric(text, "meshllm_http_requests_total", route="/v1/chat/completions", status="200") >= 1
    assert metric(text, "meshllm_http_requests_total", route="/v1/chat/completions", status="400") >= 1
    assert metric(text, "meshllm_http_requests_total", route="/v1/models", status="401") >= 1
    assert metric(text, "meshllm_http_request_seconds_count", route="/v1/chat/completions") >= 2
    assert metric(text, "meshllm_http_streamed_tokens_total", route="/v1/chat/completions") >= 3
    assert "meshllm_http_requests_in_flight " in text           # (its value races the last stream's end)


# ---------------------------------------------------------------------------- without a mesh

def test_tls_and_a_503_health_until_the_mesh_serves(redis_server, tmp_path):
    """A gateway serving HTTPS from the services' TLS settings, whose Generation is not there."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    m = Mesh(redis_server.url, f"tls{uuid.uuid4().hex[:6]}:")
    try:
        gateway = m.gateway({}, wait=False, MESHLLM_GENERATION_ADDRESS=f"127.0.0.1:{free_port()}",
                            MESHLLM_TLS_CERT=cert, MESHLLM_TLS_KEY=key)
        health = f"https://127.0.0.1:{gateway.port}/health"
        deadline = time.monotonic() + 60
        while http_health_status(health, tls_ca=str(cert)) != "NOT_SERVING":
            m.check(gateway)
            assert time.monotonic() < deadline
            time.sleep(0.1)
        trust = ssl.create_default_context(cafile=str(cert))
        reply = httpx.get(health, verify=trust, timeout=10)
        assert reply.status_code == 503 and reply.json()["services"] == {"generation": "UNREACHABLE"}
        assert http_health_status(f"http://127.0.0.1:{gateway.port}/health") == "UNREACHABLE"    # TLS only
        cli = subprocess.run([sys.executable, "-m", "services.cli", "health", health], capture_output=True, text=True,
                             env={**gateway.env, "MESHLLM_TLS_CA": str(cert)}, timeout=60)
        assert (cli.returncode, cli.stdout.strip()) == (1, "NOT_SERVING")
        client = openai.OpenAI(base_url=f"https://127.0.0.1:{gateway.port}/v1", api_key="none", max_retries=0,
                               http_client=httpx.Client(verify=trust))
        with pytest.raises(openai.InternalServerError) as e:
            client.models.list()
        assert e.value.status_code == 503 and e.value.code == "service_unavailable"
        assert "Generation service is unavailable" in e.value.message
    finally:
        m.stop()


def test_meshllm_up_starts_the_gateway_with_the_models_name(redis_server, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    for name in ("MESHLLM_GENERATION_ADDRESS", "MESHLLM_RETRIEVAL_ADDRESS", "MESHLLM_TOKENIZER_ADDRESS",
                 "MESHLLM_SERVED_MODEL_NAME", "MESHLLM_OPENAI_PORT"):
        monkeypatch.delenv(name, raising=False)
    spawned = {}

    def stack(*argv):
        s = Stack(build_parser().parse_args(["up", *argv]), "/models/smollm2.gguf", MODEL)
        s.spawn = lambda name, command, env: spawned.__setitem__(name, (command, env))
        return s

    endpoints = stack("--host", "0.0.0.0").start()
    command, env = spawned["openai"]
    assert command == ["serve", "openai"] and endpoints["openai"] == "http://0.0.0.0:8000"
    assert env["MESHLLM_SERVED_MODEL_NAME"] == MODEL and env["MESHLLM_MODEL"] == "/models/smollm2.gguf"
    assert (env["MESHLLM_GENERATION_ADDRESS"], env["MESHLLM_RETRIEVAL_ADDRESS"], env["MESHLLM_TOKENIZER_ADDRESS"]) \
        == ("127.0.0.1:50053", "127.0.0.1:50052", "127.0.0.1:50051")
    assert "MESHLLM_TOKENIZER_ADDRESS" not in spawned["retrieval"][1]     # only the gateway's environment
    spawned.clear()
    assert "openai" not in stack("--no-openai").start() and "openai" not in spawned
