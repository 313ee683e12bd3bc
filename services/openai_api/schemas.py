"""The request bodies the gateway accepts, as pydantic models of OpenAI's API.

Unknown fields are refused (OpenAI does the same: "Unrecognized request argument"). Fields OpenAI
has and the mesh cannot honour are declared, so that translate.py refuses them by name when they
ask for something (a non-default value) instead of dropping them. A few vLLM-style extensions
expose what GenerateRequest has beyond OpenAI: top_k, min_p, repetition_penalty, ignore_eos, and
structured output as guided_json / guided_regex / guided_choice / guided_grammar.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SEED = 2**64 - 1          # SamplingParams.seed is a uint64


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: bool | None = None


class _Sampling(_Body):
    """What chat and text completions share."""
    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    # extensions (vLLM names)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool = False
    # structured output, vLLM's names (chat also takes OpenAI's response_format)
    guided_json: dict | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value):
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return value
        raise ValueError("stop must be a string or a list of strings")


class ContentPart(_Body):
    type: str
    text: str | None = None
    image_url: Any = None
    input_audio: Any = None
    file: Any = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: Any = None
    tool_call_id: str | None = None
    function_call: Any = None
    refusal: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # OpenAI's, refused when they ask for something (translate.refuse_unsupported)
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    store: bool | None = None
    # hints with no effect on the answer: accepted
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value):
        def ids(v):
            return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and (all(isinstance(p, str) for p in value) or ids(value)
                                                  or all(ids(p) for p in value)):
            return value
        raise ValueError("prompt must be a string, a non-empty list of strings, a list of token ids, "
                         "or a list of lists of token ids")


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value):
        if isinstance(value, str) or (isinstance(value, list) and value):
            return value
        raise ValueError("input must be a string or a non-empty list of strings")


class RagCompletionRequest(_Body):
    """POST /v1/rag/completions: a question answered from the indexed documents (Retrieval.Ask)."""
    query: str = Field(..., min_length=1)
    model: str | None = None
    top_k: int | None = Field(None, ge=1, le=20)
    mode: Literal["hybrid", "lexical", "dense"] = "hybrid"
    sources: list[str] = Field(default_factory=list)
    min_relevance: float | None = Field(None, ge=-1, le=1)
    max_tokens: int | None = Field(None, ge=1, le=2048)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
