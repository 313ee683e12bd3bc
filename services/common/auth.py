"""API-key authentication: `authorization: Bearer KEY` metadata on every call but health and
reflection, which stay open for load balancers and tools. The OpenAI gateway checks its HTTP
`Authorization` header with the same functions against the same keys."""
from __future__ import annotations

import hmac

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def bearer_token(value: str | bytes | None) -> str | None:
    """The KEY of an 'authorization: Bearer KEY' value; None for any other value."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    scheme, _, token = (value or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def key_matches(token: str | None, keys: list[bytes]) -> bool:
    """Constant-time comparison with every key (a timing difference would leak a key's prefix)."""
    return token is not None and any(hmac.compare_digest(token.encode(), key) for key in keys)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: list[str]):
        self._keys = [k.encode() for k in keys]

    def _authorized(self, metadata) -> bool:
        value = next((v for k, v in (metadata or ()) if k == "authorization"), "")
        return key_matches(bearer_token(value), self._keys)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES) or self._authorized(details.invocation_metadata):
            return handler
        return _denied(handler)


_MESSAGE = "missing or wrong API key: send metadata 'authorization: Bearer <key>'"


def _denied(handler):
    """A handler of the same shape that refuses. Each behaviour must itself be a coroutine function
    (or async generator): grpc.aio decides how to run it from its type, and a lambda returning a
    coroutine would be run as a plain function, its coroutine then 'serialized' (UNKNOWN)."""
    async def deny(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)

    async def deny_streaming(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)
        yield  # pragma: no cover  (makes this an async generator)

    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_streaming, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny_streaming, **kwargs)
