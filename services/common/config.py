"""Configuration: one frozen dataclass per concern, validated on construction.

Every field documents itself (metadata "help") and can be set three ways, strongest first:
a command-line flag (--field-name), an environment variable (MESHLLM_FIELD_NAME, or the field's
own "env" name such as REDIS_URL), or the default here. `add_arguments` and `from_sources` derive
both from the fields, so flags, variables and docs cannot drift apart.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine.block_store import KV_DTYPES
from engine.model_registry import DEFAULT_MODEL

from .redis_url import parse_url

T = TypeVar("T")


def _env_name(f: dataclasses.Field) -> str:
    return f.metadata.get("env") or f"MESHLLM_{f.name.upper()}"


def _flag(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def _convert(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if "bool" in kind:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{_env_name(f)}={raw!r} is not a boolean")
    if "int" in kind and "None" not in kind:
        return int(raw)
    if "float" in kind:
        return float(raw)
    if "int" in kind:
        return int(raw) if raw else None
    return raw


def add_arguments(parser: argparse.ArgumentParser, cls: type, title: str | None = None) -> None:
    """One flag per field. A field another config already added (the same name, e.g.
    generation_address for Retrieval and the OpenAI gateway) keeps that one flag: both read it."""
    group = parser.add_argument_group(title or cls.__name__)
    for f in dataclasses.fields(cls):
        if _flag(f) in parser._option_string_actions:
            continue
        help_text = f"{f.metadata.get('help', '')} [env {_env_name(f)}; default {f.default!r}]"
        if "bool" in str(f.type):
            group.add_argument(_flag(f), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(_flag(f), dest=f.name, default=None, help=help_text)


def from_sources(cls: type[T], args: argparse.Namespace | None = None, env: dict | None = None,
                 defaults: dict | None = None, **overrides) -> T:
    """cls built from overrides, then flags, then environment, then `defaults` (a command's own
    defaults, such as a service's port), then the dataclass's."""
    env = os.environ if env is None else env
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            values[f.name] = flag_value if isinstance(flag_value, bool) else _convert(f, str(flag_value))
        elif _env_name(f) in env:
            values[f.name] = _convert(f, env[_env_name(f)])
        elif defaults and f.name in defaults:
            values[f.name] = defaults[f.name]
    return cls(**values)


class ConfigError(ValueError):
    pass


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class RedisConfig:
    redis_url: str = field(default="redis://127.0.0.1:6379/0", metadata={
        "help": "Redis to share state through: redis://[:password@]host:port/db (rediss:// for TLS), "
                "redis+cluster://[:password@]host:port[,host:port...] for a Redis Cluster, "
                "redis+sentinel://[:password@]host:port[,...]/service_name for a Sentinel-managed primary",
        "env": "REDIS_URL"})
    key_prefix: str = field(default="meshllm:", metadata={"help": "prefix of every Redis key (see docs/redis.md)"})

    def __post_init__(self):
        try:
            parse_url(self.redis_url)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _check(bool(self.key_prefix), "key_prefix must not be empty")
        _check("{" not in self.key_prefix and "}" not in self.key_prefix,
               "key_prefix must not contain braces (they are the keys' hash tags)")


@dataclass(frozen=True)
class QueueConfig:
    max_queue_len: int = field(default=256, metadata={
        "help": "jobs queued or running at once; more are refused (RESOURCE_EXHAUSTED)"})
    output_ttl_s: int = field(default=3600, metadata={"help": "seconds a job's output stream is kept"})
    claim_idle_ms: int = field(default=5000, metadata={
        "help": "a job whose worker has not renewed it for this long is taken over by another worker"})
    heartbeat_ms: int = field(default=1000, metadata={"help": "how often a worker renews its jobs"})
    reader_lease_ms: int = field(default=15000, metadata={
        "help": "a job nobody has read for this long is cancelled (its caller or front-end is gone; 0: never)"})
    redis_outage_s: float = field(default=10.0, metadata={
        "help": "a stream's reader rides out a Redis outage (a failover) this long before it fails UNAVAILABLE"})
    kv_routing: bool = field(default=True, metadata={
        "help": "send a job to the worker whose prefix cache holds most of its prompt (else any worker)"})
    routing_load_blocks: float = field(default=4.0, metadata={
        "help": "KV-aware routing: each job a worker already runs or queues costs as much as this many "
                "uncached prompt blocks"})

    def __post_init__(self):
        _check(self.max_queue_len >= 1, "max_queue_len must be >= 1")
        _check(self.output_ttl_s >= 1, "output_ttl_s must be >= 1")
        _check(self.heartbeat_ms >= 10, "heartbeat_ms must be >= 10")
        _check(self.claim_idle_ms >= 2 * self.heartbeat_ms, "claim_idle_ms must be at least twice heartbeat_ms")
        _check(self.reader_lease_ms == 0 or self.reader_lease_ms >= 2 * self.heartbeat_ms,
               "reader_lease_ms must be 0 or at least twice heartbeat_ms")
        _check(self.routing_load_blocks >= 0, "routing_load_blocks must be >= 0")


@dataclass(frozen=True)
class WorkerConfig:
    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": "a model name from `meshllm models list` or the path of a GGUF file"})
    kv_cache_mb: int = field(default=1024, metadata={"help": "memory for the worker's KV block pool"})
    kv_cache_dtype: str = field(default="float32", metadata={
        "help": "the KV cache's element type: float32, or float16 (twice the tokens in kv_cache_mb, half the "
                "bytes attention reads; keys and values rounded to halves, as llama.cpp's default f16 cache)"})
    block_size: int = field(default=16, metadata={"help": "tokens per KV block"})
    max_num_seqs: int = field(default=64, metadata={"help": "sequences a worker runs at once"})
    max_num_batched_tokens: int = field(default=512, metadata={"help": "token budget of one step"})
    step_target_s: float = field(default=0.5, metadata={
        "help": "a step that decodes takes prompt chunks only up to this many seconds of work, as measured "
                "on this machine (bounds the stall a long prompt causes the streams beside it; 0: no bound)"})
    max_context: int = field(default=0, metadata={"help": "longest sequence (0: the model's context length)"})
    fast: bool = field(default=False, metadata={"help": "int8 activations in decode (faster, may flip near-ties)"})
    device: str = field(default="auto", metadata={
        "help": "where the model runs: cpu, cuda, or auto (cuda when numba finds an NVIDIA GPU)"})
    threads: int = field(default=0, metadata={"help": "kernel threads (0: all cores)"})
    kv_block_ttl_s: int = field(default=3600, metadata={"help": "seconds a shared KV block lives in Redis"})
    share_kv: bool = field(default=True, metadata={"help": "read and write prefix KV blocks through Redis"})
    heartbeat_file: str = field(default="", metadata={
        "help": "touched every heartbeat while the worker is healthy (for container health checks)"})

    def __post_init__(self):
        _check(self.kv_cache_mb >= 1, "kv_cache_mb must be >= 1")
        _check(self.kv_cache_dtype in KV_DTYPES,
               f"kv_cache_dtype must be {' or '.join(KV_DTYPES)}, got {self.kv_cache_dtype!r}")
        _check(self.block_size >= 16 and self.block_size % 16 == 0, "block_size must be a multiple of 16")
        _check(self.max_num_seqs >= 1 and self.max_num_batched_tokens >= 1, "batch limits must be >= 1")
        _check(self.max_context >= 0 and self.threads >= 0, "max_context and threads must be >= 0")
        _check(self.step_target_s >= 0, "step_target_s must be >= 0")
        _check(self.kv_block_ttl_s >= 1, "kv_block_ttl_s must be >= 1")
        _check(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0 in containers)"})
    port: int = field(default=0, metadata={"help": "gRPC port (tokenizer 50051, retrieval 50052, generation 50053)"})
    metrics_port: int = field(default=0, metadata={"help": "Prometheus metrics HTTP port (0: none)"})
    api_keys: str = field(default="", metadata={
        "help": "comma-separated API keys; when set, every call but health and reflection needs "
                "'authorization: Bearer KEY'"})
    tls_cert: str = field(default="", metadata={"help": "PEM certificate chain: serve TLS (with tls_key)"})
    tls_key: str = field(default="", metadata={"help": "PEM private key of tls_cert"})
    max_message_mb: int = field(default=8, metadata={"help": "largest request or response message"})
    max_concurrent_rpcs: int = field(default=1024, metadata={
        "help": "calls served at once; more are refused (RESOURCE_EXHAUSTED)"})

    def __post_init__(self):
        _check(0 <= self.port < 65536 and 0 <= self.metrics_port < 65536, "ports must be in 0..65535")
        _check(bool(self.tls_cert) == bool(self.tls_key), "TLS needs both tls_cert and tls_key")
        _check(1 <= self.max_message_mb <= 256, "max_message_mb must be in 1..256")
        _check(self.max_concurrent_rpcs >= 1, "max_concurrent_rpcs must be >= 1")

    @property
    def keys(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]


@dataclass(frozen=True)
class GenerationLimits:
    max_new_tokens_limit: int = field(default=4096, metadata={"help": "largest max_new_tokens a request may ask"})
    default_max_new_tokens: int = field(default=256, metadata={"help": "max_new_tokens when a request leaves it 0"})
    max_top_logprobs: int = field(default=20, metadata={"help": "largest top_logprobs a request may ask"})
    max_input_chars: int = field(default=1_000_000, metadata={"help": "longest prompt text or chat, in characters"})
    max_chat_messages: int = field(default=256, metadata={"help": "most messages in a chat input"})

    def __post_init__(self):
        _check(1 <= self.default_max_new_tokens <= self.max_new_tokens_limit, "default_max_new_tokens out of range")
        _check(0 <= self.max_top_logprobs <= 100 and self.max_input_chars >= 1 and self.max_chat_messages >= 1,
               "bad generation limits")


@dataclass(frozen=True)
class RetrievalConfig:
    generation_address: str = field(default="127.0.0.1:50053", metadata={
        "help": "the Generation service Ask calls (host:port)"})
    generation_api_key: str = field(default="", metadata={"help": "API key for the Generation service"})
    generation_tls_ca: str = field(default="", metadata={"help": "PEM CA of the Generation service's TLS"})
    chunk_tokens: int = field(default=160, metadata={"help": "embedding-model tokens per chunk"})
    overlap_tokens: int = field(default=32, metadata={"help": "tokens shared by neighbouring chunks"})
    max_document_chars: int = field(default=2_000_000, metadata={"help": "largest document accepted"})
    max_documents_per_request: int = field(default=1000, metadata={"help": "documents in one Ingest call"})
    ask_sources: int = field(default=4, metadata={
        "help": "sources Ask hands the model when a request leaves top_k 0 (best first, within ask_prompt_tokens)"})
    ask_prompt_tokens: int = field(default=2048, metadata={
        "help": "prompt budget of Ask (sources + question), in the generation model's tokens"})
    min_relevance: float = field(default=0.25, metadata={
        "help": "cosine similarity below which a source counts as unrelated to the question"})
    answerable_relevance: float = field(default=0.40, metadata={
        "help": "Ask declines when its best source's cosine to the question is below this"})
    answerable_relevance_unknown_term: float = field(default=0.50, metadata={
        "help": "... or below this when the question has a word no document contains"})
    ask_no_repeat_ngram: int = field(default=8, metadata={
        "help": "Ask's answers never hold the same this many tokens twice (0: off); a request's sampling overrides"})
    ask_draft_tokens: int = field(default=8, metadata={
        "help": "prompt-lookup draft tokens per step for Ask's answers (0: off); a request may override"})
    contextual_headers: bool = field(default=True, metadata={
        "help": "index and embed each chunk with its document's title and section (\"source: Title > Section\")"})
    bm25_stemming: bool = field(default=True, metadata={"help": "Snowball English stemming in BM25"})
    hybrid_fusion: str = field(default="zscore", metadata={
        "help": "how hybrid search fuses BM25 and dense: zscore (standardised scores, weighted) or rrf (ranks)"})
    hybrid_dense_share: float = field(default=0.7, metadata={
        "help": "zscore fusion: weight of the dense score (BM25 gets the rest)"})
    rrf_lexical_weight: float = field(default=1.0, metadata={
        "help": "weight of the BM25 ranking in hybrid search's reciprocal rank fusion (the dense one has 1)"})

    def __post_init__(self):
        _check(0 <= self.ask_draft_tokens <= 16, "ask_draft_tokens must be in 0..16")
        _check(self.ask_no_repeat_ngram == 0 or 2 <= self.ask_no_repeat_ngram <= 64, "ask_no_repeat_ngram: 0 or 2..64")
        _check(8 <= self.chunk_tokens <= 254, "chunk_tokens must be in 8..254 (the encoder reads 256)")
        _check(0 <= self.overlap_tokens < self.chunk_tokens // 2, "overlap_tokens must be < chunk_tokens / 2")
        _check(self.max_document_chars >= 1 and self.max_documents_per_request >= 1, "bad ingest limits")
        _check(256 <= self.ask_prompt_tokens, "ask_prompt_tokens must be >= 256")
        _check(1 <= self.ask_sources <= 20, "ask_sources must be in 1..20")
        _check(-1.0 <= self.min_relevance <= 1.0, "min_relevance is a cosine similarity, in [-1, 1]")
        _check(-1.0 <= self.answerable_relevance <= self.answerable_relevance_unknown_term <= 1.0,
               "answerable_relevance <= answerable_relevance_unknown_term, both cosines in [-1, 1]")
        _check(0.0 <= self.rrf_lexical_weight <= 10.0, "rrf_lexical_weight must be in 0..10")
        _check(self.hybrid_fusion in ("zscore", "rrf"), "hybrid_fusion must be zscore or rrf")
        _check(0.0 <= self.hybrid_dense_share <= 1.0, "hybrid_dense_share must be in 0..1")


@dataclass(frozen=True)
class OpenAIConfig:
    """The OpenAI-compatible HTTP gateway (`meshllm serve openai`). Its port comes from here rather
    than MESHLLM_PORT, which names a gRPC service's port: `meshllm up` and compose share one
    environment between the services."""
    openai_port: int = field(default=8000, metadata={"help": "HTTP port of the OpenAI-compatible API"})
    openai_metrics_port: int = field(default=9104, metadata={"help": "the gateway's Prometheus metrics port (0: none)"})
    generation_address: str = field(default="127.0.0.1:50053", metadata={
        "help": "the Generation service (host:port)"})
    retrieval_address: str = field(default="127.0.0.1:50052", metadata={
        "help": "the Retrieval service (host:port; empty: no /v1/embeddings nor /v1/rag/completions)"})
    tokenizer_address: str = field(default="127.0.0.1:50051", metadata={
        "help": "the Tokenizer service, which names the tokens of logprobs (empty: logprobs are refused)"})
    tls_ca: str = field(default="", metadata={
        "help": "PEM CA of the services' TLS (empty: plaintext gRPC)", "env": "MESHLLM_TLS_CA"})
    served_model_name: str = field(default="", metadata={
        "help": "the model id clients name (default: --model when it is a catalogue name, else the name the "
                "Generation service reports)"})
    request_timeout_s: float = field(default=600.0, metadata={"help": "deadline of each call to a service"})
    max_choices: int = field(default=16, metadata={"help": "largest n (choices per request; one generation each)"})

    def __post_init__(self):
        _check(0 < self.openai_port < 65536 and 0 <= self.openai_metrics_port < 65536, "ports must be in 1..65535")
        _check(bool(self.generation_address), "the gateway needs generation_address")
        _check(self.request_timeout_s > 0, "request_timeout_s must be > 0")
        _check(1 <= self.max_choices <= 128, "max_choices must be in 1..128")
