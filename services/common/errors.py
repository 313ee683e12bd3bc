"""Failures as gRPC status codes with messages a user can act on, at the servicer boundary.

`unary` and `streaming` wrap servicer methods: every exception becomes a status with the right
code (a user's mistake is never INTERNAL), and every call is counted and timed by method and code.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid

import grpc

from engine.chat_template import ChatTemplateError
from engine.constraints import ConstraintError
from engine.llm_engine import GenerationError
from engine.sampling import SamplingError
from engine.speculation import SpeculationError
from engine.stopping import StoppingError

from .jobs import JobFailed, QueueFull
from .metrics import METRICS
from .redis_client import UNAVAILABLE as REDIS_UNAVAILABLE

log = logging.getLogger("meshllm.rpc")


class InvalidRequest(ValueError):
    """Something the caller sent is wrong (INVALID_ARGUMENT)."""


class ServiceError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


USER_ERRORS = (InvalidRequest, GenerationError, SamplingError, StoppingError, SpeculationError, ChatTemplateError,
               ConstraintError)
_JOB_CODES = {"invalid_argument": grpc.StatusCode.INVALID_ARGUMENT, "internal": grpc.StatusCode.INTERNAL,
              "unavailable": grpc.StatusCode.UNAVAILABLE}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    if isinstance(exc, USER_ERRORS):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, JobFailed):
        return _JOB_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc)
    if isinstance(exc, (*REDIS_UNAVAILABLE, ConnectionError)):
        return grpc.StatusCode.UNAVAILABLE, "the mesh's Redis is unreachable; retry shortly"
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):     # a downstream service's status
        code = exc.code()
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            return code, f"the Generation service is unreachable: {detail}"
        return code, detail
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded"
    incident = uuid.uuid4().hex[:12]
    log.error("internal error %s: %r", incident, exc, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident})"


class _CallBoundary:
    """Around one servicer call: every exception becomes a status (status_for), and the call is
    counted and timed by method and code. Shared by unary and streaming methods."""

    def __init__(self, service: str, method: str, context):
        self.service, self.method, self.context = service, method, context

    async def __aenter__(self):
        self.start = time.perf_counter()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        code = grpc.StatusCode.OK
        try:
            if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                # the caller went away: a task cancel, or grpc.aio closing a stream's generator
                code = grpc.StatusCode.CANCELLED
            elif isinstance(exc, grpc.aio.AbortError):       # the method aborted with its own status
                code = self.context.code() or grpc.StatusCode.UNKNOWN
            elif isinstance(exc, Exception):                 # the boundary
                code, message = status_for(exc)
                await self.context.abort(code, message)
            return False
        finally:
            METRICS.observe_request(self.service, self.method, code, time.perf_counter() - self.start)


def unary(service: str):
    def decorate(method):
        @functools.wraps(method)
        async def wrapper(self, request, context):
            async with _CallBoundary(service, method.__name__, context):
                return await method(self, request, context)
        return wrapper
    return decorate


def streaming(service: str):
    def decorate(method):
        @functools.wraps(method)
        async def wrapper(self, request, context):
            async with _CallBoundary(service, method.__name__, context):
                async for item in method(self, request, context):
                    yield item
        return wrapper
    return decorate
