"""The gRPC services over real sockets, with a real Redis and a real worker."""
import asyncio
import threading
import time
import urllib.request
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from harness.mesh import Mesh, channel
from services.api import common_pb2, generation_pb2, generation_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc
from services.common.config import GenerationLimits
from services.common.jobs import SHARED, AsyncJobClient
from services.common.keys import Keys
from services.common.redis_client import connect, scan_keys
from services.generation.service import GenerationServicer

FR = common_pb2


@pytest.fixture(scope="module")
def mesh(redis_server):
    m = Mesh(redis_server.url, f"g{uuid.uuid4().hex[:8]}:")
    m.tokenizer = m.service("tokenizer")
    m.generation = m.service("generation", MESHLLM_MAX_QUEUE_LEN=64)
    m.worker()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def tok(mesh):
    with channel(mesh.tokenizer) as ch:
        yield tokenizer_pb2_grpc.TokenizerStub(ch)


@pytest.fixture(scope="module")
def gen(mesh):
    with channel(mesh.generation) as ch:
        yield generation_pb2_grpc.GenerationStub(ch)


def chat(text):
    return generation_pb2.Chat(messages=[common_pb2.ChatMessage(role="user", content=text)])


def greedy(max_new=48, **kw):
    return dict(sampling=generation_pb2.SamplingParams(temperature=0.0),
                stopping=generation_pb2.StoppingCriteria(max_new_tokens=max_new, **kw))


# ------------------------------------------------------------------------------ Tokenizer

def test_tokenize_matches_the_reference_ids(tok, hf_reference):
    for case in hf_reference["tokenize"]:
        reply = tok.Tokenize(tokenizer_pb2.TokenizeRequest(text=case["text"]))
        assert list(reply.token_ids) == case["ids"]
        assert len(reply.tokens) == len(reply.offsets) == len(case["ids"])
    reply = tok.Tokenize(tokenizer_pb2.TokenizeRequest(text="Hello world"))
    assert list(reply.tokens) == ["Hello", "Ġworld"]
    assert [(o.start, o.end) for o in reply.offsets] == [(0, 5), (5, 11)]


def test_detokenize_count_and_template(tok, hf_reference):
    case = hf_reference["chat"][0]
    assert tok.Detokenize(tokenizer_pb2.DetokenizeRequest(token_ids=case["prompt_ids"])).text == case["prompt_text"]
    assert tok.Detokenize(tokenizer_pb2.DetokenizeRequest(token_ids=case["prompt_ids"],
                                                          skip_special_tokens=True)).text.startswith("system\n")
    messages = [common_pb2.ChatMessage(**m) for m in case["messages"]]
    templated = tok.ApplyChatTemplate(tokenizer_pb2.ApplyChatTemplateRequest(messages=messages,
                                                                             add_generation_prompt=True))
    assert templated.prompt == case["prompt_text"] and list(templated.token_ids) == case["prompt_ids"]
    count = tok.CountTokens(tokenizer_pb2.CountTokensRequest(chat=tokenizer_pb2.ChatTurns(messages=messages)))
    assert count.count == len(case["prompt_ids"]) and count.max_context_length == 8192
    assert tok.CountTokens(tokenizer_pb2.CountTokensRequest(text="Hello world")).count == 2


def test_tokenizer_info(tok):
    info = tok.Info(tokenizer_pb2.TokenizerInfoRequest())
    assert info.vocab_size == 49152 and info.eos_token_id == 2 and 2 in info.end_of_generation_token_ids
    assert info.max_context_length == 8192 and "im_start" in info.chat_template


def test_tokenizer_bad_input(tok):
    with pytest.raises(grpc.RpcError) as e:
        tok.Detokenize(tokenizer_pb2.DetokenizeRequest(token_ids=[1, 999999]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "out of range" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        tok.ApplyChatTemplate(tokenizer_pb2.ApplyChatTemplateRequest(
            messages=[common_pb2.ChatMessage(role="wizard", content="hi")]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "role" in e.value.details()


# ------------------------------------------------------------------------------ Generation

def test_generate_unary_answers_and_counts(gen):
    reply = gen.Generate(generation_pb2.GenerateRequest(chat=chat("What is the capital of France?"), **greedy()))
    assert reply.text == "The capital of France is Paris."
    assert reply.finish_reason == FR.FINISH_REASON_EOS
    assert reply.usage.prompt_tokens == 37 and reply.usage.completion_tokens == len(reply.token_ids) == 8


def test_stream_deltas_add_up_to_the_unary_answer_for_the_same_seed(gen):
    def request():
        return generation_pb2.GenerateRequest(
            text="Once upon a time", sampling=generation_pb2.SamplingParams(temperature=0.9, top_p=0.95, seed=42),
            stopping=generation_pb2.StoppingCriteria(max_new_tokens=32, ignore_eos=True),
            response=generation_pb2.ResponseOptions(logprobs=True, top_logprobs=2))
    unary = gen.Generate(request())
    chunks = list(gen.GenerateStream(request()))
    assert "".join(c.text for c in chunks) == unary.text
    assert [t for c in chunks for t in c.token_ids] == list(unary.token_ids)
    assert all(c.finish_reason == FR.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
    assert chunks[-1].finish_reason == FR.FINISH_REASON_LENGTH and chunks[-1].usage.completion_tokens == 32
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for c in chunks for t in c.tokens)


def test_speculation_changes_the_speed_not_the_answer(gen):
    """A prompt the answer quotes: with prompt-lookup drafts through the worker, the same tokens."""
    passage = ("The assert statement is a convenient way to insert debugging assertions into a program. "
               "The current code generator emits no code for an assert statement when optimization is requested.")
    def request(drafts):
        return generation_pb2.GenerateRequest(chat=chat(f"{passage}\n\nRepeat the text above word for word."),
                                              speculation=generation_pb2.Speculation(num_draft_tokens=drafts),
                                              **greedy(40))
    plain, fast = gen.Generate(request(0)), gen.Generate(request(8))
    assert list(fast.token_ids) == list(plain.token_ids) and fast.text == plain.text
    assert "debugging assertions" in fast.text


def test_structured_output_through_the_worker(gen):
    """A JSON schema, a choice and a regex held through front-end, Redis job and worker."""
    schema = '{"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}}, "required": ["city"]}'
    reply = gen.Generate(generation_pb2.GenerateRequest(
        chat=chat("What is the capital of France?"), constraint=generation_pb2.OutputConstraint(json_schema=schema),
        **greedy()))
    assert reply.text.startswith('{"city": "') and reply.text.endswith('"}')
    assert reply.finish_reason == FR.FINISH_REASON_EOS
    chunks = list(gen.GenerateStream(generation_pb2.GenerateRequest(
        chat=chat("Is Paris in France?"), **greedy(),
        constraint=generation_pb2.OutputConstraint(choice=generation_pb2.ChoiceList(choices=["Yes", "No"])))))
    assert "".join(c.text for c in chunks) in ("Yes", "No")
    reply = gen.Generate(generation_pb2.GenerateRequest(
        chat=chat("When did Apollo 11 land?"), **greedy(),
        constraint=generation_pb2.OutputConstraint(regex=r"[0-9]{4}")))
    assert len(reply.text) == 4 and reply.text.isdigit()


def test_token_ids_input_and_stop_sequences(gen, llm):
    ids = llm.encode("The capital of France is")
    reply = gen.Generate(generation_pb2.GenerateRequest(token_ids=generation_pb2.TokenIds(ids=ids),
                                                        **greedy(stop_sequences=["answer"])))
    assert reply.text == " Paris.\n\nThe " and reply.finish_reason == FR.FINISH_REASON_STOP_SEQUENCE


def test_cancel_by_request_id_ends_the_stream(gen):
    request_id = f"cancel-{uuid.uuid4().hex[:8]}"
    stream = gen.GenerateStream(generation_pb2.GenerateRequest(request_id=request_id, text="Once upon a time",
                                                               **greedy(400, ignore_eos=True)))
    first = [next(stream) for _ in range(3)]
    assert all(c.request_id == request_id for c in first)
    assert gen.Cancel(generation_pb2.CancelRequest(request_id=request_id)).found
    rest = list(stream)
    assert rest[-1].finish_reason == FR.FINISH_REASON_CANCELLED and len(rest) < 10
    assert not gen.Cancel(generation_pb2.CancelRequest(request_id="never-seen")).found


def worker_info(mesh, redis_client):
    key = scan_keys(redis_client, Keys(mesh.key_prefix).workers_pattern)[0]
    return {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}


def test_a_job_whose_front_end_is_sigkilled_is_cancelled_by_its_lapsed_reader_lease(mesh, redis_client):
    front = mesh.service("generation", MESHLLM_READER_LEASE_MS=1500)
    job_id = f"orphan-{uuid.uuid4().hex[:8]}"
    request = generation_pb2.GenerateRequest(text="Once upon a time", request_id=job_id,
                                             **greedy(2000, ignore_eos=True))
    with channel(front) as ch:
        stream = generation_pb2_grpc.GenerationStub(ch).GenerateStream(request, timeout=120)
        for _ in range(3):
            next(stream)
        front.kill()                                     # nobody relays the job any more
    out = Keys(mesh.key_prefix).job_output(job_id)
    deadline = time.monotonic() + 30
    while True:
        last = redis_client.xrevrange(out, count=1)
        if last and last[0][1].get(b"f"):
            break
        assert time.monotonic() < deadline, "the worker ran on with nobody reading"
        time.sleep(0.1)
    assert last[0][1][b"f"] == b"cancelled" and int(last[0][1][b"i"]) < 1000


def test_a_deadline_cancels_the_job_and_frees_its_blocks(gen, mesh, redis_client):
    with pytest.raises(grpc.RpcError) as e:
        for _ in gen.GenerateStream(generation_pb2.GenerateRequest(text="Once upon a time",
                                                                   **greedy(2000, ignore_eos=True)), timeout=1.5):
            pass
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while True:                                          # the worker aborts within a step; a heartbeat reports it
        info = worker_info(mesh, redis_client)
        if info["running"] == "0" and info["kv_blocks_free"] == info["kv_blocks"]:
            break
        assert time.monotonic() < deadline, info
        time.sleep(0.2)


def test_a_client_that_hangs_up_cancels_the_job(gen, mesh, redis_client):
    stream = gen.GenerateStream(generation_pb2.GenerateRequest(text="Once upon a time", **greedy(2000,
                                                                                                   ignore_eos=True)))
    next(stream)
    stream.cancel()
    deadline = time.monotonic() + 5
    while worker_info(mesh, redis_client)["running"] != "0":
        assert time.monotonic() < deadline
        time.sleep(0.2)


class _HeldAfterQueueing(AsyncJobClient):
    """The real job client, whose submit, once Redis has queued the job, waits on: what a
    replicated submit does while it waits for a replica to hold the job."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.queued = asyncio.Event()

    async def submit(self, spec, route=SHARED):
        entry = await super().submit(spec, route)
        self.queued.set()
        await asyncio.Event().wait()
        return entry


def test_a_call_cancelled_while_its_job_is_queued_cancels_the_job(llm, redis_server, key_prefix):
    """The caller leaves after Redis took the job but before the call relays it: relay's cancel
    never runs, so start must cancel it (else the job runs until its reader lease lapses)."""
    keys = Keys(key_prefix)

    async def leave_while_queueing() -> int:
        client = connect(redis_server.url, asyncio=True)
        try:
            jobs = _HeldAfterQueueing(client, keys)
            servicer = GenerationServicer(llm, jobs, GenerationLimits())
            start = asyncio.ensure_future(servicer.start(
                generation_pb2.GenerateRequest(text="Once upon a time", request_id="left-early")))
            await asyncio.wait_for(jobs.queued.wait(), 10)
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            for _ in range(50):                          # the cancel goes out beside the call's end
                if await client.exists(keys.job_cancel("left-early")):
                    return 1
                await asyncio.sleep(0.05)
            return 0
        finally:
            await client.aclose()

    assert asyncio.run(leave_while_queueing()) == 1


def test_model_info(gen):
    info = gen.ModelInfo(generation_pb2.ModelInfoRequest())
    assert info.architecture == "llama" and info.context_length == 8192 and info.workers == 1
    assert len(info.fingerprint) == 32 and info.max_new_tokens_limit == 4096


@pytest.mark.parametrize("request_kwargs,code,message", [
    ({}, "INVALID_ARGUMENT", "set one input"),
    ({"text": ""}, "INVALID_ARGUMENT", "text is empty"),
    ({"chat": generation_pb2.Chat()}, "INVALID_ARGUMENT", "no messages"),
    ({"token_ids": generation_pb2.TokenIds(ids=[5] * 9000)}, "INVALID_ARGUMENT", "context holds 8192"),
    ({"token_ids": generation_pb2.TokenIds(ids=[5, 60000])}, "INVALID_ARGUMENT", "unknown token ids"),
    ({"text": "hi", "stopping": generation_pb2.StoppingCriteria(max_new_tokens=100000)}, "INVALID_ARGUMENT",
     "max_new_tokens is 100000"),
    ({"text": "hi", "sampling": generation_pb2.SamplingParams(temperature=-1)}, "INVALID_ARGUMENT", "temperature"),
    ({"text": "hi", "sampling": generation_pb2.SamplingParams(top_p=0.0)}, "INVALID_ARGUMENT", "top_p"),
    ({"text": "hi", "sampling": generation_pb2.SamplingParams(top_p=1.5)}, "INVALID_ARGUMENT", "top_p"),
    ({"text": "hi", "sampling": generation_pb2.SamplingParams(no_repeat_ngram_size=1)}, "INVALID_ARGUMENT",
     "no_repeat_ngram_size"),
    ({"text": "hi", "response": generation_pb2.ResponseOptions(top_logprobs=50)}, "INVALID_ARGUMENT",
     "top_logprobs"),
    ({"text": "hi", "request_id": "bad id with spaces"}, "INVALID_ARGUMENT", "request_id"),
    ({"text": "hi", "speculation": generation_pb2.Speculation(num_draft_tokens=17)}, "INVALID_ARGUMENT",
     "num_draft_tokens"),
    ({"chat": generation_pb2.Chat(messages=[common_pb2.ChatMessage(role="x", content="y")])}, "INVALID_ARGUMENT",
     "role"),
    ({"text": "hi", "constraint": generation_pb2.OutputConstraint()}, "INVALID_ARGUMENT", "set one of json_schema"),
    ({"text": "hi", "constraint": generation_pb2.OutputConstraint(json_schema='{"type": "strin"}')},
     "INVALID_ARGUMENT", "Invalid type: strin"),
    ({"text": "hi", "constraint": generation_pb2.OutputConstraint(lark_grammar='start: "a" <|no_such_token|>')},
     "INVALID_ARGUMENT", "unknown special token"),
    ({"text": "hi", "constraint": generation_pb2.OutputConstraint(regex="(")}, "INVALID_ARGUMENT", "regex"),
])
def test_bad_requests_get_clear_codes(gen, request_kwargs, code, message):
    for call in (gen.Generate, lambda r: list(gen.GenerateStream(r))):
        with pytest.raises(grpc.RpcError) as e:
            call(generation_pb2.GenerateRequest(**request_kwargs))
        assert e.value.code().name == code and message in e.value.details(), e.value.details()


def test_oversized_messages_are_refused(gen):
    with pytest.raises(grpc.RpcError) as e:
        gen.Generate(generation_pb2.GenerateRequest(text="x" * (9 * 2**20)))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as e:
        gen.Generate(generation_pb2.GenerateRequest(text="word " * 300_000))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "characters" in e.value.details()


def test_a_request_id_in_use_is_already_exists(gen):
    request_id = f"dup-{uuid.uuid4().hex[:8]}"
    gen.Generate(generation_pb2.GenerateRequest(request_id=request_id, text="hi", **greedy(2)))
    with pytest.raises(grpc.RpcError) as e:
        gen.Generate(generation_pb2.GenerateRequest(request_id=request_id, text="hi", **greedy(2)))
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_health_reflection_and_metrics(mesh, gen):
    with channel(mesh.generation) as ch:
        assert health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="meshllm.v1.Generation")).status == 1
        reply = next(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"meshllm.v1.Generation", "grpc.health.v1.Health"} <= names
    gen.Generate(generation_pb2.GenerateRequest(text="Hello", **greedy(3)))
    time.sleep(1.2)                                           # the gauges refresh every second
    text = urllib.request.urlopen(f"http://127.0.0.1:{mesh.generation.metrics_port}/metrics").read().decode()
    for name in ("meshllm_requests_total", "meshllm_request_seconds", "meshllm_time_to_first_token_seconds",
                 "meshllm_inter_token_latency_seconds", "meshllm_prompt_tokens_total", "meshllm_generated_tokens_total",
                 "meshllm_queue_length", "meshllm_running_sequences", "meshllm_kv_cache_usage_ratio",
                 "meshllm_prefix_cache_hit_rate"):
        assert name in text, name
    assert 'meshllm_requests_total{code="OK",method="Generate",service="meshllm.v1.Generation"}' in text
    assert "meshllm_workers 1.0" in text


def test_concurrent_streams_are_batched_and_answered(gen, llm):
    prompts = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "Large language models are"]
    results = {}

    def run(p):
        results[p] = "".join(c.text for c in gen.GenerateStream(generation_pb2.GenerateRequest(text=p, **greedy(24))))
    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for p in prompts:
        alone = gen.Generate(generation_pb2.GenerateRequest(text=p, **greedy(24))).text
        assert results[p] == alone
