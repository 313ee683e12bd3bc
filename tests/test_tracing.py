"""OpenTelemetry tracing (services/common/tracing.py) with real parts: a small OTLP collector, a
real gRPC server implementing opentelemetry's TraceService, receives what the processes export.

One stack (Redis, Generation, Retrieval, one worker, the OpenAI gateway), all exporting to the
collector: a RAG request over HTTP and a Generate over gRPC, each with a traceparent of ours, must
come back as one connected trace per request: gateway -> Retrieval.Ask -> Generation.GenerateStream
-> the worker's job. Without an endpoint, a process stays on the API's no-op tracer and never
imports the SDK (in a subprocess: the tracer provider is set once per process).
"""
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from harness.mesh import Mesh, channel
from services.api import generation_pb2, generation_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.common.jobs import JobSpec

trace_service_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc  # noqa: E402
from opentelemetry.proto.trace.v1 import trace_pb2  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
SERVER, CONSUMER = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CONSUMER


@dataclass
class Span:
    service: str                 # the exporting process's service.name
    name: str
    kind: int
    trace_id: str                # hex
    span_id: str
    parent_id: str               # "" for a root
    start_ns: int
    end_ns: int
    attributes: dict
    status: int                  # trace_pb2.Status.STATUS_CODE_*


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP/gRPC trace receiver: keeps every span it is sent."""

    def __init__(self):
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for s in scope_spans.spans:
                        self.spans.append(Span(
                            resource.get("service.name", ""), s.name, s.kind, s.trace_id.hex(), s.span_id.hex(),
                            s.parent_span_id.hex(), s.start_time_unix_nano, s.end_time_unix_nano,
                            {a.key: _value(a.value) for a in s.attributes}, s.status.code))
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str, until, timeout_s: float = 30.0) -> list[Span]:
        """The spans of trace_id once until(spans) holds (exports arrive in batches, per process)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                spans = [s for s in self.spans if s.trace_id == trace_id]
            if until(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)


@pytest.fixture(scope="module")
def collector():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    receiver = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    receiver.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver
    server.stop(None)


def traceparent() -> tuple[str, str, str]:
    """(header, trace id, span id) of a sampled caller span of ours."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def one(spans: list[Span], service: str, name: str) -> Span:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, f"{service} {name!r}: {len(found)} spans among {[(s.service, s.name) for s in spans]}"
    return found[0]


# ---------------------------------------------------------------------------- off: no SDK, no spans

def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_without_an_endpoint_the_tracer_is_the_no_op_and_the_sdk_is_never_loaded():
    result = _run_python("""
        import sys
        from opentelemetry import trace
        import services.client, services.common.grpc_server, services.openai_api.app  # noqa: F401, E401
        from services.common import tracing

        assert tracing.configure("generation") is False and not tracing.enabled()
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        with trace.get_tracer("test").start_as_current_span("request") as span:
            assert not span.is_recording()
            assert tracing.current_traceparent() == ""
        loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter")))
        assert not loaded, loaded
        print("no-op")
        """, OTEL_SERVICE_NAME="meshllm-test", OTEL_BSP_SCHEDULE_DELAY="10")
    assert result.returncode == 0 and result.stdout.strip() == "no-op", result.stderr


def test_with_an_endpoint_spans_are_flushed_at_exit_under_the_service_name(collector):
    """A schedule delay far beyond the process's life: only the flush at exit can deliver the span."""
    header, trace_id, span_id = traceparent()
    result = _run_python(f"""
        from services.common import tracing
        assert tracing.configure("worker")
        from services.common.jobs import JobSpec
        span = tracing.job_span(JobSpec("job-1", [1, 2, 3], traceparent="{header}"))
        span.record([])                      # no final event yet: the span stays open
        from services.common.jobs import OutputEvent
        span.record([OutputEvent(0, 7, "a"), OutputEvent(1, 8, "b", finish_reason="length", prompt_tokens=3)])
        """, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}", OTEL_BSP_SCHEDULE_DELAY="600000",
        OTEL_SERVICE_NAME="meshllm-worker-a")
    assert result.returncode == 0, result.stderr
    (job,) = collector.trace(trace_id, lambda spans: spans)
    assert (job.service, job.name, job.kind, job.parent_id) == ("meshllm-worker-a", "generate job", CONSUMER, span_id)
    assert job.attributes["meshllm.job_id"] == "job-1" and job.attributes["meshllm.prompt_tokens"] == 3
    assert job.attributes["meshllm.generated_tokens"] == 2 and job.attributes["meshllm.finish_reason"] == "length"


def test_job_spec_json_without_a_traceparent_still_parses():
    old = '{"job_id":"j","prompt_ids":[1,2],"sampling":{},"stopping":{},"logprobs":false,"top_logprobs":0,' \
          '"skip_special_tokens":true,"submitted_at":1.0,"speculation":{}}'
    assert JobSpec.from_json(old).traceparent == ""
    spec = JobSpec("j", [1], traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert JobSpec.from_json(spec.to_json()) == spec


# ---------------------------------------------------------------------------- a traced stack

@pytest.fixture(scope="module")
def stack(redis_server, collector):
    m = Mesh(redis_server.url, f"tr{uuid.uuid4().hex[:8]}:",
             env_extra={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
                        "OTEL_BSP_SCHEDULE_DELAY": "200"})
    try:
        procs = {"generation": m.service("generation", wait=False)}
        procs["retrieval"] = m.service("retrieval", wait=False, MESHLLM_GENERATION_ADDRESS=procs["generation"].address)
        for proc in procs.values():
            m.wait_serving(proc, timeout=600)
        procs["worker"] = m.worker()
        with channel(procs["retrieval"]) as ch:
            retrieval_pb2_grpc.RetrievalStub(ch).Ingest(retrieval_pb2.IngestRequest(documents=[retrieval_pb2.Document(
                id="zephyr", text="The Zephyr rocket launch is scheduled for Monday at 9am from pad 39A.")]),
                timeout=300)
        procs["openai"] = m.gateway(procs, wait=False)
        m.wait_serving(procs["openai"], timeout=300)
        yield procs
    finally:
        m.stop()


def test_a_rag_request_over_http_is_one_trace_from_the_gateway_to_the_worker(stack, collector):
    header, trace_id, caller_span = traceparent()
    reply = httpx.post(f"{stack['openai'].url}/v1/rag/completions", headers={"traceparent": header}, timeout=120,
                       json={"model": MODEL, "query": "When is the Zephyr rocket launch?", "max_tokens": 3})
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]

    # every span of the chain exported (each service's exporter sends in its own batches; the
    # front-end's ModelInfo span may arrive before its GenerateStream span)
    chain = {("meshllm-openai", "POST /v1/rag/completions"), ("meshllm-retrieval", "meshllm.v1.Retrieval/Ask"),
             ("meshllm-generation", "meshllm.v1.Generation/GenerateStream"), ("meshllm-worker", "generate job")}
    spans = collector.trace(trace_id, lambda spans: {(s.service, s.name) for s in spans} >= chain)
    gateway = one(spans, "meshllm-openai", "POST /v1/rag/completions")
    ask = one(spans, "meshllm-retrieval", "meshllm.v1.Retrieval/Ask")
    generate = one(spans, "meshllm-generation", "meshllm.v1.Generation/GenerateStream")
    job = one(spans, "meshllm-worker", "generate job")
    # the chain: our span -> gateway -> Ask -> GenerateStream -> the job
    assert (gateway.parent_id, ask.parent_id, generate.parent_id, job.parent_id) == \
        (caller_span, gateway.span_id, ask.span_id, generate.span_id)
    assert gateway.kind == ask.kind == generate.kind == SERVER and job.kind == CONSUMER
    assert gateway.attributes["http.response.status_code"] == 200
    assert gateway.attributes["http.route"] == "/v1/rag/completions"
    assert ask.attributes == {"rpc.system": "grpc", "rpc.service": "meshllm.v1.Retrieval", "rpc.method": "Ask",
                              "rpc.grpc.status_code": 0}
    assert generate.attributes["rpc.method"] == "GenerateStream" and generate.attributes["rpc.grpc.status_code"] == 0
    # the job's span starts when Generation queued it and ends with its final event, within the RPC
    assert generate.start_ns <= job.start_ns <= job.end_ns <= generate.end_ns <= ask.end_ns <= gateway.end_ns
    assert job.attributes["meshllm.queue_wait_s"] >= 0
    assert job.attributes["meshllm.prompt_tokens"] == usage["prompt_tokens"]
    assert job.attributes["meshllm.generated_tokens"] == usage["completion_tokens"] <= 3
    assert job.attributes["meshllm.finish_reason"] in ("length", "eos", "stop_sequence")


def test_a_generate_over_grpc_continues_the_callers_trace_and_reports_status_codes(stack, collector):
    header, trace_id, caller_span = traceparent()
    request = generation_pb2.GenerateRequest(
        text="The capital of France is", sampling=generation_pb2.SamplingParams(temperature=0.0),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=3, ignore_eos=True))
    with channel(stack["generation"]) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        reply = stub.Generate(request, metadata=[("traceparent", header)], timeout=120)
        bad_header, bad_trace, _ = traceparent()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Generate(generation_pb2.GenerateRequest(text=""), metadata=[("traceparent", bad_header)], timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    spans = collector.trace(trace_id, lambda spans: len(spans) == 2)
    generate = one(spans, "meshllm-generation", "meshllm.v1.Generation/Generate")
    job = one(spans, "meshllm-worker", "generate job")
    assert (generate.parent_id, job.parent_id) == (caller_span, generate.span_id)
    assert job.attributes["meshllm.job_id"] == reply.request_id
    assert job.attributes["meshllm.generated_tokens"] == len(reply.token_ids) == 3
    assert job.attributes["meshllm.prompt_tokens"] == reply.usage.prompt_tokens
    assert job.attributes["meshllm.finish_reason"] == "length"

    (invalid,) = collector.trace(bad_trace, lambda spans: spans)
    assert invalid.name == "meshllm.v1.Generation/Generate" and invalid.attributes["rpc.grpc.status_code"] == 3
    assert invalid.status == trace_pb2.Status.STATUS_CODE_UNSET          # the caller's mistake, not a fault
