"""The servicer call boundary counts every call by the status it ended with (pure logic: a stub
context, no server): a caller that goes away is CANCELLED however grpc.aio ends the method."""
import asyncio

import grpc
import pytest

from services.common.errors import streaming, unary
from services.common.metrics import METRICS


class _Context:
    """What the boundary asks of a grpc.aio ServicerContext."""

    def __init__(self):
        self.aborted = None

    def code(self):
        return None

    async def abort(self, code, details):
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


def _count(method: str, code: str) -> float:
    return METRICS.registry.get_sample_value("meshllm_requests_total",
                                             {"service": "test", "method": method, "code": code}) or 0.0


class _Servicer:
    @streaming("test")
    async def Tokens(self, request, context):
        for i in range(10):
            yield i

    @unary("test")
    async def Wait(self, request, context):
        await asyncio.sleep(60)

    @unary("test")
    async def Fails(self, request, context):
        raise ValueError("boom")


def test_a_stream_closed_between_messages_counts_as_cancelled():
    """grpc.aio closes a streaming method's generator (GeneratorExit, not CancelledError) when its
    caller goes away between two messages: counted OK before, which hid cancellations."""
    async def run():
        stream = _Servicer().Tokens(None, _Context())
        assert await stream.__anext__() == 0
        await stream.aclose()
    before = _count("Tokens", "CANCELLED")
    asyncio.run(run())
    assert _count("Tokens", "CANCELLED") == before + 1


def test_a_cancelled_unary_call_counts_as_cancelled():
    async def run():
        task = asyncio.ensure_future(_Servicer().Wait(None, _Context()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    before = _count("Wait", "CANCELLED")
    asyncio.run(run())
    assert _count("Wait", "CANCELLED") == before + 1


def test_an_unexpected_error_is_internal_and_counted_so():
    context = _Context()

    async def run():
        with pytest.raises(grpc.aio.AbortError):
            await _Servicer().Fails(None, context)
    before = _count("Fails", "INTERNAL")
    asyncio.run(run())
    assert context.aborted[0] == grpc.StatusCode.INTERNAL and "incident" in context.aborted[1]
    assert _count("Fails", "INTERNAL") == before + 1
