"""Server-sent events over gRPC streams, and what ends them early.

- A streamed response is answered only once every gRPC stream it merges has sent its first
  message: a request the mesh refuses (bad parameter, prompt too long, queue full) gets its HTTP
  error status, not a 200 stream that then carries an error.
- A client that goes away cancels the gRPC calls it was waiting for: Starlette cancels the
  response's task on http.disconnect, and `merged` cancels its calls on the way out, so the
  Generation service cancels the jobs and the workers free their KV blocks. `unless_disconnected`
  does the same for a unary request (and for the wait for a stream's first messages).
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import grpc
from starlette.requests import Request

from .errors import from_rpc_error

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: dict) -> bytes:
    """One event in OpenAI's framing: `data: {json}` and a blank line."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


async def unless_disconnected(request: Request, awaitable: Awaitable[T]) -> T:
    """awaitable's result, or ClientGone once the client disconnects first (awaitable is then
    cancelled, which cancels its gRPC calls). The body has been read: receive() now returns only
    http.disconnect."""
    work = asyncio.ensure_future(awaitable)

    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnect())
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        raise ClientGone()
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)


async def first_messages(calls: list, service: str) -> list:
    """Each call's first message (grpc.aio.EOF for a stream that ends at once). If any call fails
    (or the wait is cancelled), every call is cancelled and the failure raised as an OpenAIError."""
    try:
        return list(await asyncio.gather(*(call.read() for call in calls)))
    except grpc.RpcError as e:
        for call in calls:
            call.cancel()
        raise from_rpc_error(e, service) from None
    except BaseException:
        for call in calls:
            call.cancel()
        raise


async def merged(calls: list, firsts: list, service: str) -> AsyncIterator[tuple[int, object]]:
    """(call index, message) of every call, the first messages first, then as they arrive; raises
    the first failure as an OpenAIError. However it ends, every call still open is cancelled."""
    queue: asyncio.Queue = asyncio.Queue()
    _END = object()

    async def pump(index: int, call) -> None:
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                queue.put_nowait((index, message))
            queue.put_nowait((index, _END))
        except grpc.RpcError as e:
            queue.put_nowait((index, from_rpc_error(e, service)))

    open_calls = [i for i, first in enumerate(firsts) if first is not grpc.aio.EOF]
    pumps = [asyncio.ensure_future(pump(i, calls[i])) for i in open_calls]
    try:
        for i in open_calls:
            yield i, firsts[i]
        remaining = len(open_calls)
        while remaining:
            index, item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for p in pumps:
            p.cancel()
        for call in calls:
            call.cancel()
