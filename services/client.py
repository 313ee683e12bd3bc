"""Client side helpers: a channel to a meshllm service, with TLS and an API key when asked (and, on
the channels services open to each other, the trace context when tracing is on)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .common import tracing


def channel_options(max_message_mb: int = 8) -> list[tuple[str, int]]:
    """Message size limits, and reconnection that retries every 0.2-2 s (grpcio's default backs off
    to 120 s): a service that restarts is reached again within seconds of its return."""
    return [("grpc.max_receive_message_length", max_message_mb * 2**20),
            ("grpc.max_send_message_length", max_message_mb * 2**20),
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000)]


def open_channel(address: str, tls_ca: str | None = None, api_key: str | None = None,
                 max_message_mb: int = 8) -> grpc.Channel:
    """A channel to address (host:port). tls_ca: PEM of the CA to trust (TLS); api_key: sent as
    'authorization: Bearer KEY' on every call (also read from MESHLLM_API_KEY)."""
    options = channel_options(max_message_mb)
    tls_ca = tls_ca or os.environ.get("MESHLLM_TLS_CA") or None
    if tls_ca:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(Path(tls_ca).read_bytes()), options)
    else:
        channel = grpc.insecure_channel(address, options)
    api_key = api_key or os.environ.get("MESHLLM_API_KEY") or None
    if api_key:
        channel = grpc.intercept_channel(channel, _BearerToken(api_key))
    return channel


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, key: str):
        self._pair = ("authorization", f"Bearer {key}")

    def _with_key(self, details):
        metadata = list(details.metadata or []) + [self._pair]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_key(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_key(details), requests)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base, metadata):
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def open_channel_async(address: str, tls_ca: str | None = None, api_key: str | None = None,
                       max_message_mb: int = 8) -> grpc.aio.Channel:
    """The asyncio twin of open_channel, for services that call other services."""
    options = channel_options(max_message_mb)
    interceptors = []
    if api_key:
        key = [("authorization", f"Bearer {api_key}")]
        interceptors += _async_metadata(lambda: key)
    if tracing.enabled():                        # the caller's span is the callee's parent
        interceptors += _async_metadata(tracing.outgoing_metadata)
    interceptors = interceptors or None
    if tls_ca:
        credentials = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
        return grpc.aio.secure_channel(address, credentials, options, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options, interceptors=interceptors)


class _AsyncMetadata:
    """Adds pairs() (asked per call) to every call's metadata."""

    def __init__(self, pairs: Callable[[], list[tuple[str, str]]]):
        self._pairs = pairs

    def _details(self, details):
        pairs = self._pairs()
        if not pairs:
            return details
        return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), *pairs))


# One interceptor per call kind: grpc.aio files an interceptor under the first kind it is an
# instance of, so a single class of all four would carry the key on unary-unary calls only (and
# Retrieval's Ask, a GenerateStream, would reach a keyed Generation without one).
class _UnaryUnaryMetadata(_AsyncMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _UnaryStreamMetadata(_AsyncMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _StreamUnaryMetadata(_AsyncMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, requests):
        return await continuation(self._details(details), requests)


class _StreamStreamMetadata(_AsyncMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, requests):
        return await continuation(self._details(details), requests)


def _async_metadata(pairs: Callable[[], list[tuple[str, str]]]) -> list:
    return [kind(pairs) for kind in (_UnaryUnaryMetadata, _UnaryStreamMetadata, _StreamUnaryMetadata,
                                     _StreamStreamMetadata)]


def health_status(address: str, service: str = "", timeout: float = 2.0, tls_ca: str | None = None) -> str:
    """'SERVING', 'NOT_SERVING', ... or 'UNREACHABLE'."""
    try:
        with open_channel(address, tls_ca) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError:
        return "UNREACHABLE"


def http_health_status(url: str, timeout: float = 2.0, tls_ca: str | None = None) -> str:
    """The OpenAI gateway's /health as health_status words: 'SERVING' (200), 'NOT_SERVING' (another
    status) or 'UNREACHABLE'. https:// trusts tls_ca (or MESHLLM_TLS_CA) when given."""
    import ssl
    import urllib.error
    import urllib.request
    tls_ca = tls_ca or os.environ.get("MESHLLM_TLS_CA") or None
    context = ssl.create_default_context(cafile=tls_ca) if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:
            return "SERVING" if reply.status == 200 else "NOT_SERVING"
    except urllib.error.HTTPError:
        return "NOT_SERVING"
    except (OSError, ValueError):
        return "UNREACHABLE"
