"""meshllm gRPC responses -> OpenAI response bodies and stream chunks. Pure functions.

Token names for logprobs come in as a {token_id: text} map (the gateway asks the Tokenizer
service for them: TokenInfo carries ids only); `bytes` is that text's UTF-8.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from engine.tool_calls import ArgumentsDelta, ContentDelta, ToolCallStart

from ..api import common_pb2

# Why generation ended -> OpenAI's finish_reason: the model or a stop criterion ending the answer
# is "stop"; anything that cut it short (the token budget, the deadline, a Cancel) is "length".
_FINISH = {
    common_pb2.FINISH_REASON_EOS: "stop", common_pb2.FINISH_REASON_STOP_SEQUENCE: "stop",
    common_pb2.FINISH_REASON_STOP_TOKEN: "stop", common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_TIME_LIMIT: "length", common_pb2.FINISH_REASON_CANCELLED: "length",
    common_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


def finish_reason(value: int) -> str | None:
    """None while a stream goes on (FINISH_REASON_UNSPECIFIED)."""
    if value == common_pb2.FINISH_REASON_UNSPECIFIED:
        return None
    return _FINISH.get(value, "stop")


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, usage: common_pb2.Usage, count_prompt: bool) -> None:
        """count_prompt: False for the 2nd..nth choice of one prompt (OpenAI counts a prompt once)."""
        if count_prompt:
            self.prompt_tokens += usage.prompt_tokens
            self.cached_tokens += usage.cached_prompt_tokens
        self.completion_tokens += usage.completion_tokens

    def body(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


@dataclass(frozen=True)
class Envelope:
    """The fields every body and chunk of one response repeats."""
    id: str
    created: int
    model: str
    system_fingerprint: str | None = None

    def head(self, object_: str) -> dict:
        head = {"id": self.id, "object": object_, "created": self.created, "model": self.model}
        if self.system_fingerprint is not None:
            head["system_fingerprint"] = self.system_fingerprint
        return head


# ---------------------------------------------------------------------------- logprobs

def _named(token_id: int, logprob: float, names: dict[int, str]) -> dict:
    text = names.get(token_id, "")
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokens, names: dict[int, str]) -> dict:
    """choices[i].logprobs of a chat completion (or chunk) for these TokenInfos."""
    content = []
    for t in tokens:
        entry = _named(t.token_id, t.logprob, names)
        entry["top_logprobs"] = [_named(a.token_id, a.logprob, names) for a in t.top_logprobs]
        content.append(entry)
    return {"content": content, "refusal": None}


def completion_logprobs(tokens, names: dict[int, str], text_offset: int) -> tuple[dict, int]:
    """The legacy completions logprobs object, and the text offset after these tokens (a stream's
    next chunk continues from it)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        text = names.get(t.token_id, "")
        out["tokens"].append(text)
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append({names.get(a.token_id, ""): a.logprob for a in t.top_logprobs})
        out["text_offset"].append(text_offset)
        text_offset += len(text)
    return out, text_offset


def token_ids_to_name(responses) -> set[int]:
    """Every token id (chosen and alternative) the logprobs of these responses mention."""
    return {i for r in responses for t in r.tokens for i in (t.token_id, *(a.token_id for a in t.top_logprobs))}


# ---------------------------------------------------------------------------- chat completions

@dataclass
class Choice:
    """One finished choice of a unary response."""
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict | None = None
    tool_calls: list | None = None          # common_pb2.ToolCall of a chat answer that made calls


def tool_call(call) -> dict:
    """A ToolCall as OpenAI's message.tool_calls[i]."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _message(c: Choice) -> dict:
    if not c.tool_calls:
        return {"role": "assistant", "content": c.text, "refusal": None}
    return {"role": "assistant", "content": c.text or None, "refusal": None,
            "tool_calls": [tool_call(t) for t in c.tool_calls]}


def chat_completion(env: Envelope, choices: list[Choice], usage: Usage) -> dict:
    return {**env.head("chat.completion"),
            "choices": [{"index": c.index, "message": _message(c), "logprobs": c.logprobs,
                         "finish_reason": c.finish_reason} for c in choices],
            "usage": usage.body()}


def tool_call_deltas(events) -> list[dict]:
    """engine.tool_calls stream events as chat chunk deltas: content, a call's start (id, name,
    empty arguments), then its arguments in pieces, as OpenAI streams them."""
    deltas = []
    for e in events:
        if isinstance(e, ContentDelta):
            deltas.append({"content": e.text})
        elif isinstance(e, ToolCallStart):
            deltas.append({"tool_calls": [{"index": e.index, "id": e.id, "type": "function",
                                           "function": {"name": e.name, "arguments": ""}}]})
        elif isinstance(e, ArgumentsDelta):
            deltas.append({"tool_calls": [{"index": e.index, "function": {"arguments": e.text}}]})
    return deltas


def chat_chunk(env: Envelope, index: int, delta: dict, finish: str | None = None, logprobs: dict | None = None,
               with_usage: bool = False) -> dict:
    chunk = {**env.head("chat.completion.chunk"),
             "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
    if with_usage:                          # stream_options.include_usage: null on every chunk but the last
        chunk["usage"] = None
    return chunk


def usage_chunk(env: Envelope, object_: str, usage: Usage) -> dict:
    """The last chunk of a stream with include_usage: no choices, the whole request's usage."""
    return {**env.head(object_), "choices": [], "usage": usage.body()}


# ---------------------------------------------------------------------------- text completions

def text_completion(env: Envelope, choices: list[Choice], usage: Usage) -> dict:
    return {**env.head("text_completion"),
            "choices": [{"index": c.index, "text": c.text, "logprobs": c.logprobs, "finish_reason": c.finish_reason}
                        for c in choices],
            "usage": usage.body()}


def text_chunk(env: Envelope, index: int, text: str, finish: str | None = None, logprobs: dict | None = None,
               with_usage: bool = False) -> dict:
    chunk = {**env.head("text_completion"),
             "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
    if with_usage:
        chunk["usage"] = None
    return chunk


# ---------------------------------------------------------------------------- embeddings, models, RAG

def embeddings(vectors: list[list[float]], model: str, encoding_format: str | None) -> dict:
    def encode(v):
        if encoding_format == "base64":       # what the openai package asks for by default
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
        return list(v)
    # EmbedResponse counts no tokens: usage stays 0 (see the README's list of what the protos lack)
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": 0, "total_tokens": 0}}


def model_card(model_id: str, created: int, **details) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "meshllm", **details}


def citation(c) -> dict:
    return {"number": c.number, "chunk_id": c.chunk_id, "document_id": c.document_id, "source": c.source,
            "snippet": c.snippet, "score": round(c.score, 6), "cited": c.cited}


def rag_completion(env: Envelope, text: str, finish: str | None, citations: list, answered_from_sources: bool,
                   usage: Usage) -> dict:
    return {**env.head("rag.completion"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "citations": [citation(c) for c in citations], "answered_from_sources": answered_from_sources,
            "usage": usage.body()}


def rag_chunk(env: Envelope, delta: dict, finish: str | None, citations: list | None, answered_from_sources: bool,
              with_usage: bool = False) -> dict:
    """Citations ride on the first chunk (the sources given to the model) and the last (with `cited`)."""
    chunk = {**env.head("rag.completion.chunk"),
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
             "answered_from_sources": answered_from_sources}
    if citations:
        chunk["citations"] = [citation(c) for c in citations]
    if with_usage:
        chunk["usage"] = None
    return chunk
