"""Generate for one prompt at a time, as an iterator of token events: the engine with one slot.

For many concurrent requests use LLMEngine directly (or the services, which do).
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

from .llm_engine import EngineConfig, GenerationError, LLMEngine
from .model import DecoderModel
from .sequence import RequestOptions, TokenEvent
from .tokenizer import Tokenizer

__all__ = ["Generator", "GenerationError", "RequestOptions", "TokenEvent"]


class Generator:
    """A KV cache sized for the whole context; prefill in chunks of `prefill_chunk` tokens."""

    def __init__(self, model: DecoderModel, tokenizer: Tokenizer, max_context: int | None = None,
                 block_size: int = 16, prefill_chunk: int = 512, kv_cache_dtype: str = "float32"):
        context = min(max_context or model.config.context_length, model.config.context_length)
        # no prefault: a one-shot command would pay for the whole context's memory at start-up
        config = EngineConfig(block_size=block_size, num_kv_blocks=-(-context // block_size),
                              max_num_batched_tokens=prefill_chunk, max_num_seqs=1, max_context=context,
                              prefault_kv=False, kv_cache_dtype=kv_cache_dtype)
        self.engine = LLMEngine(model, tokenizer, config)
        self.max_context = context

    def generate(self, prompt_ids: Sequence[int], options: RequestOptions | None = None) -> Iterator[TokenEvent]:
        request_id = uuid.uuid4().hex
        self.engine.add_request(request_id, list(prompt_ids), options)
        try:
            while True:
                for output in self.engine.step():
                    yield from output.events
                    if output.finished:
                        return
        finally:
            self.engine.abort(request_id)             # a consumer that stops early frees the blocks
