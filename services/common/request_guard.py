"""Requests that do not parse: INVALID_ARGUMENT, not UNKNOWN.

grpcio turns a request its deserializer cannot parse (corrupt wire format, a string field that is
not UTF-8: both legal for a client in another language to send) into UNKNOWN with the parser's
exception text. This interceptor wraps every method's deserializer so such a request reaches the
method as a `Malformed` marker, which is answered INVALID_ARGUMENT before the method runs.
Health and reflection are left as grpcio serves them.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import grpc

from .auth import OPEN_PREFIXES


@dataclass(frozen=True)
class Malformed:
    type_name: str
    reason: str

    @property
    def message(self) -> str:
        return f"the request is not a valid {self.type_name}: {self.reason}"


def _guarded_deserializer(deserialize):
    type_name = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    type_name = type_name.full_name if type_name is not None else "request message"

    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception as e:                    # noqa: BLE001 - DecodeError and whatever upb raises
            return Malformed(type_name, str(e).rsplit(": ", 1)[-1] or type(e).__name__)
    return parse


async def _refuse(context, request: Malformed):
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


def _guard_unary_request(behavior):
    if inspect.isasyncgenfunction(behavior):
        async def stream_out(request, context):
            if isinstance(request, Malformed):
                await _refuse(context, request)
            async for item in behavior(request, context):
                yield item
        return stream_out

    async def unary_out(request, context):
        if isinstance(request, Malformed):
            await _refuse(context, request)
        return await behavior(request, context)
    return unary_out


def _guard_request_stream(behavior):
    def checked(requests, context):
        async def iterate():
            async for request in requests:
                if isinstance(request, Malformed):
                    await _refuse(context, request)
                yield request
        return iterate()

    if inspect.isasyncgenfunction(behavior):
        async def stream_out(requests, context):
            async for item in behavior(checked(requests, context), context):
                yield item
        return stream_out

    async def unary_out(requests, context):
        return await behavior(checked(requests, context), context)
    return unary_out


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES) or handler.request_deserializer is None:
            return handler
        kwargs = {"request_deserializer": _guarded_deserializer(handler.request_deserializer),
                  "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_guard_unary_request(handler.unary_unary), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_guard_unary_request(handler.unary_stream), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_guard_request_stream(handler.stream_unary), **kwargs)
        return grpc.stream_stream_rpc_method_handler(_guard_request_stream(handler.stream_stream), **kwargs)
