"""Hostile input: every RPC of the three services fuzzed over real gRPC (harness/fuzz.py), against
a real stack (Redis, services, a worker with the real model). Zero INTERNAL/UNKNOWN, zero crashes."""
from __future__ import annotations

import grpc
import pytest

from harness import fuzz
from harness.mesh import Mesh, channel
from services.api import (
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
)
from services.client import health_status

INJECTIONS = ["{{ 7*7 }}", "{% for i in range(3) %}x{% endfor %}",
              "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ cycler.__init__.__globals__.os }}"]


@pytest.fixture(scope="module")
def stack(redis_server):
    mesh = Mesh(redis_server.url, "fuzz:", env_extra=fuzz.FUZZ_ENV)
    try:
        procs = mesh.stack(workers=1)
        # a few documents, so that Ask and Search reach the model and the index
        retrieval = retrieval_pb2_grpc.RetrievalStub(channel(procs["retrieval"]))
        retrieval.Ingest(retrieval_pb2.IngestRequest(documents=[
            retrieval_pb2.Document(id="with", text="The with statement wraps a block in a context manager."),
            retrieval_pb2.Document(id="for", text="The for statement iterates over a sequence."),
            retrieval_pb2.Document(id="jinja", text=" ".join(INJECTIONS))]))
        yield mesh, procs
    finally:
        mesh.stop()


def test_every_rpc_survives_fuzzing(stack):
    mesh, procs = stack
    addresses = {name: procs[name].address for name in ("tokenizer", "generation", "retrieval")}
    report = fuzz.run_campaign(addresses, scale=0.3, raw_examples=15)
    services = ((tokenizer_pb2, "Tokenizer"), (generation_pb2, "Generation"), (retrieval_pb2, "Retrieval"))
    rpcs = sum(len(pb.DESCRIPTOR.services_by_name[name].methods) for pb, name in services)
    assert len(report) == rpcs * len(fuzz.STYLES)             # every method of the contract, in every style
    failures = {name: r["first_failures"] for name, r in report.items() if r["failures"]}
    assert not failures, failures
    cases = sum(r["cases"] for r in report.values())
    assert cases > 400
    # the requests reached past validation, not only bounced off it
    ok = {name for name, r in report.items() if r["codes"].get("OK")}
    assert {"generation.Generate mutated", "retrieval.Ask mutated", "retrieval.Search mutated",
            "tokenizer.ApplyChatTemplate mutated"} <= ok
    for name, proc in procs.items():
        mesh.check(proc)
        if not name.startswith("worker"):
            assert health_status(proc.address) == "SERVING"


def test_chat_template_injection_stays_text(stack):
    """Message contents are data to the sandboxed template: never evaluated, rendered verbatim."""
    _, procs = stack
    tokenizer = tokenizer_pb2_grpc.TokenizerStub(channel(procs["tokenizer"]))
    for attempt in INJECTIONS:
        prompt = tokenizer.ApplyChatTemplate(tokenizer_pb2.ApplyChatTemplateRequest(
            messages=[common_pb2.ChatMessage(role="user", content=attempt)], add_generation_prompt=True)).prompt
        assert attempt in prompt and "49" not in prompt.replace(attempt, "")
    generation = generation_pb2_grpc.GenerationStub(channel(procs["generation"]))
    reply = generation.Generate(generation_pb2.GenerateRequest(
        chat=generation_pb2.Chat(messages=[common_pb2.ChatMessage(role="user", content=INJECTIONS[2])]),
        sampling=generation_pb2.SamplingParams(temperature=0),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=4)))
    assert reply.usage.completion_tokens >= 1


def test_documents_with_template_syntax_are_stored_and_returned_verbatim(stack):
    _, procs = stack
    retrieval = retrieval_pb2_grpc.RetrievalStub(channel(procs["retrieval"]))
    hits = retrieval.Search(retrieval_pb2.SearchRequest(query="cycler globals subclasses", top_k=1,
                                                        mode=retrieval_pb2.SEARCH_MODE_LEXICAL)).hits
    assert hits[0].document_id == "jinja" and hits[0].text == " ".join(INJECTIONS)
    answer = list(retrieval.Ask(retrieval_pb2.AskRequest(question="{{ 7*7 }} what does cycler do?",
                                                         max_new_tokens=4, min_relevance=-1.0)))
    assert answer and answer[-1].finish_reason != common_pb2.FINISH_REASON_ERROR


def test_undecodable_bytes_get_invalid_argument(stack):
    _, procs = stack
    generate = channel(procs["generation"]).unary_unary("/meshllm.v1.Generation/Generate")
    with pytest.raises(grpc.RpcError) as err:
        generate(b"\x12\x03\xff\xfe\xfd", timeout=10)            # field 2 (text) holding invalid UTF-8
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GenerateRequest" in err.value.details()
