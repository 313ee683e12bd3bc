"""The HTTP routes: OpenAI's models, chat completions, completions and embeddings, and the RAG
route in their style. Each route is translate -> gRPC call(s) -> responses; what can go wrong
is an OpenAIError (the app turns it into its HTTP status and body)."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..api import generation_pb2, retrieval_pb2
from . import responses as out
from . import translate
from .errors import OpenAIError, from_rpc_error, model_not_found
from .mesh import Mesh, Metadata, caller_metadata
from .metrics import GatewayMetrics
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, RagCompletionRequest
from .streaming import DONE, SSE_HEADERS, first_messages, merged, sse, unless_disconnected
from .tool_stream import ChatToolStream

log = logging.getLogger("meshllm.openai")
router = APIRouter()
EMBED_BATCH = 256                 # Retrieval.Embed's limit per call; longer inputs take several calls
STARTED = int(time.time())        # /v1/models' `created` (ModelInfo has no date)


class EventStream(StreamingResponse):
    """A StreamingResponse that always closes its body generator, also when the client went away
    mid-stream (Starlette then cancels the send, leaving the generator suspended): closing it
    runs its `finally`, which cancels the gRPC calls behind it."""

    def __init__(self, events: AsyncIterator[bytes]):
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def _mesh(request: Request) -> Mesh:
    return request.app.state.mesh


def _metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


def _caller(request: Request) -> Metadata:
    return caller_metadata(request.headers)


def _log(kind: str, request_id: str, body, **extra) -> None:
    log.info("%s %s", kind, request_id, extra={"ctx_request_id": request_id, "ctx_user": getattr(body, "user", None),
                                               "ctx_stream": getattr(body, "stream", False),
                                               **{f"ctx_{k}": v for k, v in extra.items()}})


# ---------------------------------------------------------------------------- models

async def _model_cards(request: Request) -> list[dict]:
    mesh, caller = _mesh(request), _caller(request)
    served = await mesh.model(caller)
    info = served.info
    cards = [out.model_card(served.id, STARTED, architecture=info.architecture, context_length=info.context_length,
                            max_model_len=info.context_length, max_new_tokens_limit=info.max_new_tokens_limit,
                            fingerprint=info.fingerprint)]
    if mesh.has_retrieval:
        try:
            name, dimensions = await mesh.embedding_model(caller)
            cards.append(out.model_card(name, STARTED, dimensions=dimensions))
        except OpenAIError as e:           # the generation model is still worth listing
            log.warning("embedding model unknown: %s", e.message)
    return cards


@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": await _model_cards(request)}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request):
    cards = await _model_cards(request)
    for card in cards:
        if card["id"].lower() == model_id.lower():
            return card
    raise model_not_found(model_id, [c["id"] for c in cards])


# ---------------------------------------------------------------------------- generation

async def _prepare(request: Request, body) -> tuple[Mesh, Metadata, out.Envelope]:
    mesh, caller = _mesh(request), _caller(request)
    served = await unless_disconnected(request, mesh.model(caller))
    translate.check_model(body.model, [served.id, *served.aliases])
    translate.refuse_unsupported(body, mesh.has_tokenizer, mesh.config.max_choices)
    prefix = "chatcmpl" if isinstance(body, ChatCompletionRequest) else "cmpl"
    envelope = out.Envelope(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), served.id,
                            f"fp_{served.info.fingerprint[:12]}")
    return mesh, caller, envelope


async def _generate_all(mesh: Mesh, requests: list, caller: Metadata) -> list:
    """One unary Generate per choice, concurrently; the first failure cancels the rest."""
    calls = [mesh.generation.Generate(r, timeout=mesh.timeout, metadata=caller) for r in requests]
    try:
        return list(await asyncio.gather(*calls))
    except grpc.RpcError as e:
        raise from_rpc_error(e, "Generation") from None
    finally:
        for call in calls:
            call.cancel()


async def _names(mesh: Mesh, replies, caller: Metadata) -> dict[int, str]:
    ids = out.token_ids_to_name(replies)
    return await mesh.token_names(ids, caller) if ids else {}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    mesh, caller, env = await _prepare(request, body)
    calls = translate.chat_requests(body, env.id)
    _log("chat.completion", env.id, body, n=body.n, model=body.model)
    if body.stream:
        return await _stream_generation(request, calls, env, chat=True, group=body.n,
                                        include_usage=bool(body.stream_options and body.stream_options.include_usage))
    replies = await unless_disconnected(request, _generate_all(mesh, calls, caller))
    names = await _names(mesh, replies, caller) if body.logprobs else {}
    usage = out.Usage()
    choices = []
    for i, r in enumerate(replies):
        usage.add(r.usage, count_prompt=i == 0)
        choices.append(out.Choice(i, r.text, out.finish_reason(r.finish_reason),
                                  out.chat_logprobs(r.tokens, names) if body.logprobs else None,
                                  list(r.tool_calls) or None))
    return JSONResponse(out.chat_completion(env, choices, usage))


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    mesh, caller, env = await _prepare(request, body)
    calls = translate.completion_requests(body, env.id)
    _log("text_completion", env.id, body, n=body.n, prompts=len(calls) // body.n, model=body.model)
    if body.stream:
        return await _stream_generation(request, calls, env, chat=False, group=body.n,
                                        include_usage=bool(body.stream_options and body.stream_options.include_usage))
    replies = await unless_disconnected(request, _generate_all(mesh, calls, caller))
    wants_logprobs = body.logprobs is not None
    names = await _names(mesh, replies, caller) if wants_logprobs else {}
    usage = out.Usage()
    choices = []
    for i, r in enumerate(replies):
        usage.add(r.usage, count_prompt=i % body.n == 0)
        logprobs = out.completion_logprobs(r.tokens, names, 0)[0] if wants_logprobs else None
        choices.append(out.Choice(i, r.text, out.finish_reason(r.finish_reason), logprobs))
    return JSONResponse(out.text_completion(env, choices, usage))


async def _stream_generation(request: Request, requests: list, env: out.Envelope, chat: bool, group: int,
                             include_usage: bool) -> StreamingResponse:
    """SSE of n GenerateStreams merged, chunk by chunk as OpenAI sends them. `group`: choices per
    prompt (a prompt's tokens are counted once in usage)."""
    mesh, caller, metrics = _mesh(request), _caller(request), _metrics(request)
    route = request.scope["route"].path
    wants_logprobs = any(r.response.logprobs or r.response.top_logprobs for r in requests)
    calls = [mesh.generation.GenerateStream(r, timeout=mesh.timeout, metadata=caller) for r in requests]
    firsts = await unless_disconnected(request, first_messages(calls, "Generation"))

    # chat choices whose answer may hold tool calls: their text goes through a parser that turns
    # the <tool_call> blocks into tool_calls deltas
    parsers = {i: ChatToolStream() for i, r in enumerate(requests)
               if chat and r.chat.tools and r.chat.tool_choice.mode != generation_pb2.TOOL_CHOICE_NONE}

    async def events() -> AsyncIterator[bytes]:
        usage, offsets = out.Usage(), [0] * len(calls)
        try:
            if chat:
                for i in range(len(calls)):
                    yield sse(out.chat_chunk(env, i, {"role": "assistant", "content": ""}, with_usage=include_usage))
            async with aclosing(merged(calls, firsts, "Generation")) as messages:
                async for i, r in messages:
                    metrics.streamed_tokens.labels(route).inc(len(r.token_ids))
                    finish = out.finish_reason(r.finish_reason)
                    names = await _names(mesh, [r], caller) if wants_logprobs else {}
                    if chat and i in parsers:
                        logprobs = out.chat_logprobs(r.tokens, names) if wants_logprobs and r.tokens else None
                        found = parsers[i].feed(r.text) + (parsers[i].finish(r.tool_calls) if finish else [])
                        deltas = out.tool_call_deltas(found) or ([{"content": ""}] if logprobs else [])
                        for k, delta in enumerate(deltas):
                            yield sse(out.chat_chunk(env, i, delta, None, logprobs if k == 0 else None, include_usage))
                        if finish:
                            yield sse(out.chat_chunk(env, i, {}, finish, None, include_usage))
                    elif chat:
                        logprobs = out.chat_logprobs(r.tokens, names) if wants_logprobs and r.tokens else None
                        if r.text or logprobs:
                            yield sse(out.chat_chunk(env, i, {"content": r.text}, None, logprobs, include_usage))
                        if finish:
                            yield sse(out.chat_chunk(env, i, {}, finish, None, include_usage))
                    else:
                        logprobs = None
                        if wants_logprobs and r.tokens:
                            logprobs, offsets[i] = out.completion_logprobs(r.tokens, names, offsets[i])
                        if r.text or logprobs or finish:
                            yield sse(out.text_chunk(env, i, r.text, finish, logprobs, include_usage))
                    if finish:
                        usage.add(r.usage, count_prompt=i % group == 0)
            if include_usage:
                yield sse(out.usage_chunk(env, "chat.completion.chunk" if chat else "text_completion", usage))
            yield DONE
        except OpenAIError as e:             # after the 200: OpenAI's clients raise on an error event
            log.warning("stream %s failed: %s", env.id, e.message)
            yield sse(e.body())
        finally:
            for call in calls:
                call.cancel()

    return EventStream(events())


# ---------------------------------------------------------------------------- embeddings

@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    mesh, caller = _mesh(request), _caller(request)
    name, dimensions = await mesh.embedding_model(caller)
    if body.model.lower() != name.lower():
        raise model_not_found(body.model, [name])
    texts = translate.embed_texts(body, dimensions)

    async def embed_all() -> list:
        vectors = []
        for start in range(0, len(texts), EMBED_BATCH):
            try:
                reply = await mesh.retrieval.Embed(retrieval_pb2.EmbedRequest(texts=texts[start:start + EMBED_BATCH]),
                                                   timeout=mesh.timeout, metadata=caller)
            except grpc.RpcError as e:
                raise from_rpc_error(e, "Retrieval") from None
            vectors.extend(list(embedding.values) for embedding in reply.embeddings)
        return vectors
    vectors = await unless_disconnected(request, embed_all())
    return JSONResponse(out.embeddings(vectors, name, body.encoding_format))


# ---------------------------------------------------------------------------- RAG

@router.post("/v1/rag/completions")
async def rag_completions(body: RagCompletionRequest, request: Request):
    mesh, caller, metrics = _mesh(request), _caller(request), _metrics(request)
    served = await unless_disconnected(request, mesh.model(caller))
    translate.check_model(body.model, [served.id, *served.aliases])
    env = out.Envelope(f"rag-{uuid.uuid4().hex}", int(time.time()), served.id)
    _log("rag.completion", env.id, body, top_k=body.top_k, mode=body.mode)
    call = mesh.retrieval.Ask(translate.ask_request(body), timeout=mesh.timeout, metadata=caller)
    (first,) = await unless_disconnected(request, first_messages([call], "Retrieval"))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    if not body.stream:
        async def collect() -> dict:
            text, citations, usage, finish, answered = [], [], out.Usage(), None, False
            async with aclosing(merged([call], [first], "Retrieval")) as messages:
                async for _, r in messages:
                    text.append(r.text)
                    citations = list(r.citations) or citations
                    answered = answered or r.answered_from_sources
                    if r.finish_reason:
                        finish = out.finish_reason(r.finish_reason)
                        usage.add(r.usage, count_prompt=True)
            return out.rag_completion(env, "".join(text), finish, citations, answered, usage)
        return JSONResponse(await unless_disconnected(request, collect()))

    route = request.scope["route"].path

    async def events() -> AsyncIterator[bytes]:
        usage, role_sent = out.Usage(), False
        try:
            async with aclosing(merged([call], [first], "Retrieval")) as messages:
                async for _, r in messages:
                    finish = out.finish_reason(r.finish_reason)
                    if not role_sent:          # the first chunk: the sources the model was given
                        role_sent = True
                        yield sse(out.rag_chunk(env, {"role": "assistant", "content": ""}, None,
                                                None if finish else list(r.citations), r.answered_from_sources,
                                                include_usage))
                    if r.text:
                        metrics.streamed_tokens.labels(route).inc()
                        yield sse(out.rag_chunk(env, {"content": r.text}, None, None, r.answered_from_sources,
                                                include_usage))
                    if finish:                 # the last: which sources the answer cited
                        usage.add(r.usage, count_prompt=True)
                        yield sse(out.rag_chunk(env, {}, finish, list(r.citations), r.answered_from_sources,
                                                include_usage))
            if include_usage:
                yield sse(out.usage_chunk(env, "rag.completion.chunk", usage))
            yield DONE
        except OpenAIError as e:
            log.warning("stream %s failed: %s", env.id, e.message)
            yield sse(e.body())
        finally:
            call.cancel()

    return EventStream(events())
