"""OpenTelemetry tracing across one request's hops: the HTTP gateway or a gRPC front door, Retrieval,
Generation, the Redis job, the worker. Off unless an OTLP endpoint is configured.

`configure(service)`, called once by each process's entry point, installs the SDK with a batching
OTLP/gRPC exporter when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.
Otherwise it does nothing: the SDK is never imported, no interceptor is installed, and the
OpenTelemetry API stays its no-op self. The SDK reads the other OTEL_* variables itself
(batch delay, exporter headers, sampler) and flushes its last batch at exit.

Context crosses each hop as W3C trace context: HTTP headers into the gateway, gRPC metadata
between services (`traceparent`, `tracestate`), JobSpec.traceparent through Redis. The spans:
- SERVER per RPC, named "meshllm.v1.Generation/GenerateStream", with rpc.* attributes and the
  status code (health and reflection are not traced: they are polled every second);
- SERVER per HTTP request at the gateway, named "POST /v1/chat/completions" (/health aside): FastAPI
  makes these itself (its native OpenTelemetry support, FastAPI >= 0.143) once a provider is set;
- "generate job" at the worker, from the job's submission (so its queue wait shows) to its final
  event, a child of the Generation span that queued it.
Outgoing calls carry the context but get no CLIENT span of their own: the callee's SERVER span
hangs directly under the caller's.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import time
from contextlib import contextmanager

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .auth import OPEN_PREFIXES

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_CARRIED = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()
# Codes that mark a SERVER span as failed (OpenTelemetry's gRPC conventions): the others are the caller's doing
_SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                  grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}

_tracer: trace.Tracer | None = None          # set by configure(): tracing is on in this process


def configure(service: str) -> bool:
    """Turn tracing on in this process if an OTLP endpoint is set; True if it is on. The spans'
    service.name is OTEL_SERVICE_NAME, else "meshllm-<service>" (service: "generation", "worker", ...)."""
    global _tracer
    if _tracer is None and any(os.environ.get(v) for v in ENDPOINT_VARIABLES):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        name = os.environ.get("OTEL_SERVICE_NAME") or f"meshllm-{service}"
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))   # shuts down (flushes) at exit
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))       # endpoint etc. from OTEL_*
        trace.set_tracer_provider(provider)
        _tracer = provider.get_tracer("meshllm")
    return _tracer is not None


def enabled() -> bool:
    return _tracer is not None


def outgoing_metadata() -> list[tuple[str, str]]:
    """The current trace context as gRPC metadata pairs (none outside a span)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return list(carrier.items())


def current_traceparent() -> str:
    """The current span's traceparent, for the hop through Redis; "" when tracing is off."""
    if _tracer is None:
        return ""
    return dict(outgoing_metadata()).get("traceparent", "")


# ---------------------------------------------------------------------------- gRPC server

class ServerTracing(grpc.aio.ServerInterceptor):
    """A SERVER span around each RPC, a child of the trace context in the caller's metadata. It
    must come first among the interceptors so that calls they refuse (a bad key) are traced too."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        for kind, make in _HANDLER_KINDS.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                traced = _traced(behavior, details.method, details.invocation_metadata)
                return make(traced, request_deserializer=handler.request_deserializer,
                            response_serializer=handler.response_serializer)
        return handler


_HANDLER_KINDS = {"unary_unary": grpc.unary_unary_rpc_method_handler,
                  "unary_stream": grpc.unary_stream_rpc_method_handler,
                  "stream_unary": grpc.stream_unary_rpc_method_handler,
                  "stream_stream": grpc.stream_stream_rpc_method_handler}


def _traced(behavior, method: str, metadata):
    """behavior in a span, keeping its kind: grpc.aio runs a behavior by its type (async generator or coroutine)."""
    if inspect.isasyncgenfunction(behavior):
        async def stream_out(request, context):
            with _rpc_span(method, metadata, context):
                async for item in behavior(request, context):
                    yield item
        return stream_out
    if inspect.iscoroutinefunction(behavior):
        async def unary_out(request, context):
            with _rpc_span(method, metadata, context):
                return await behavior(request, context)
        return unary_out
    return behavior


@contextmanager
def _rpc_span(method: str, metadata, context):
    full_name = method.lstrip("/")                    # "meshllm.v1.Generation/GenerateStream"
    service, _, name = full_name.partition("/")
    parent = _PROPAGATOR.extract({k: v for k, v in metadata or () if k in _CARRIED})
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    with _tracer.start_as_current_span(full_name, context=parent, kind=SpanKind.SERVER, attributes=attributes,
                                       record_exception=False, set_status_on_exception=False) as span:
        code = grpc.StatusCode.OK
        try:
            yield span
            code = context.code() or grpc.StatusCode.OK
        except (asyncio.CancelledError, GeneratorExit):  # the caller went away
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:                            # an abort carries its code; anything else is UNKNOWN
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_FAULTS:
                span.set_status(Status(StatusCode.ERROR, context.details() or code.name))


# ---------------------------------------------------------------------------- the worker's job span

class JobSpan:
    """A worker's "generate job" span: from the job's submission (its queue wait, as an attribute
    too) to its final event. `record` is given every batch of events the worker writes."""

    def __init__(self, job_id: str, traceparent: str, submitted_at: float, prompt_tokens: int, resumed_tokens: int):
        now = time.time()
        submitted = min(submitted_at or now, now)        # the front-end's clock may run ahead of this host's
        attributes = {"meshllm.job_id": job_id, "meshllm.queue_wait_s": round(now - submitted, 6),
                      "meshllm.prompt_tokens": prompt_tokens}
        if resumed_tokens:                               # taken over from a dead worker
            attributes["meshllm.resumed_tokens"] = resumed_tokens
        parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
        self.span = _tracer.start_span("generate job", context=parent, kind=SpanKind.CONSUMER,
                                       start_time=int(submitted * 1e9), attributes=attributes)
        self.generated_tokens = 0

    def record(self, events, lost: bool = False, written_ns: int | None = None) -> None:
        """Count the written events' tokens; end the span at the final one, or when the job was lost.
        written_ns: when the write began, the span's end (the reader may see the final event before
        the write returns, e.g. while it waits for a replica)."""
        self.generated_tokens += sum(e.token_id is not None for e in events)
        final = next((e for e in events if e.is_final), None)
        if final is None and not lost:
            return
        self.span.set_attribute("meshllm.generated_tokens", self.generated_tokens)
        if lost:
            self.span.set_status(Status(StatusCode.ERROR, "another worker took the job over"))
        else:
            self.span.set_attributes({"meshllm.finish_reason": final.finish_reason,
                                      "meshllm.cached_prompt_tokens": final.cached_prompt_tokens})
            if final.error:
                self.span.set_status(Status(StatusCode.ERROR, f"{final.error_code}: {final.error}"))
        self.span.end(end_time=written_ns)


def job_span(spec, resumed_tokens: int = 0) -> JobSpan | None:
    """The span of a job a worker starts (spec: a JobSpec); None when tracing is off."""
    if _tracer is None:
        return None
    return JobSpan(spec.job_id, spec.traceparent, spec.submitted_at, len(spec.prompt_ids), resumed_tokens)
