"""Token-by-token generation for one sequence, yielded as events while they are produced."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .detokenizer import IncrementalDetokenizer
from .model import ForwardBatch, KVCache, LlamaModel
from .sampling import GREEDY, Sampler, SamplingParams, logprobs_of
from .stopping import FinishReason, StoppingCriteria, StopSequenceMatcher
from .tokenizer import Tokenizer


class GenerationError(ValueError):
    """The request cannot be served as asked (empty prompt, too long for the context, bad ids)."""


@dataclass
class TokenEvent:
    index: int                              # 0 for the first generated token
    token_id: int
    text: str                               # text this token completed (may be "": partial UTF-8, held stop text)
    logprob: float | None = None            # log p(token) under the model, when asked for
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    finish_reason: FinishReason | None = None   # set on the last event only
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass
class RequestOptions:
    sampling: SamplingParams = GREEDY
    stopping: StoppingCriteria = field(default_factory=StoppingCriteria)
    logprobs: bool = False
    top_logprobs: int = 0                   # also report this many most likely alternatives
    skip_special_tokens: bool = True


class Generator:
    """Runs one sequence at a time over a private KV cache sized for the whole context.

    Prefill goes in chunks of `prefill_chunk` tokens (bounded scratch memory); decode is one token
    per forward.
    """

    def __init__(self, model: LlamaModel, tokenizer: Tokenizer, max_context: int | None = None,
                 block_size: int = 16, prefill_chunk: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.max_context = min(max_context or model.config.context_length, model.config.context_length)
        self.block_size = block_size
        self.prefill_chunk = prefill_chunk
        num_blocks = -(-self.max_context // block_size)
        self.kv_cache = KVCache(model.config, num_blocks, block_size)
        self._block_table = np.arange(num_blocks, dtype=np.int32).reshape(1, num_blocks)

    def validate_prompt(self, prompt_ids: Sequence[int]) -> None:
        if len(prompt_ids) == 0:
            raise GenerationError("the prompt is empty")
        if len(prompt_ids) >= self.max_context:
            raise GenerationError(f"the prompt has {len(prompt_ids)} tokens; the context holds {self.max_context}")
        vocab = self.model.config.vocab_size
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise GenerationError(f"token ids out of range [0, {vocab}): {bad[:5]}")

    def _forward(self, token_ids, start: int) -> np.ndarray:
        """Logits of the last of token_ids, which sit at positions start.. of the sequence."""
        n = len(token_ids)
        positions = np.arange(start, start + n, dtype=np.int32)
        batch = ForwardBatch(np.asarray(token_ids, dtype=np.int32), positions, np.zeros(n, np.int32),
                             self._block_table, positions.copy(), np.array([n - 1], np.int32))
        return self.model.forward(batch, self.kv_cache)[0]

    def prefill(self, prompt_ids: Sequence[int]) -> np.ndarray:
        logits = None
        for start in range(0, len(prompt_ids), self.prefill_chunk):
            logits = self._forward(prompt_ids[start:start + self.prefill_chunk], start)
        return logits

    def generate(self, prompt_ids: Sequence[int], options: RequestOptions | None = None) -> Iterator[TokenEvent]:
        options = options or RequestOptions()
        prompt_ids = list(prompt_ids)
        self.validate_prompt(prompt_ids)
        stopping = options.stopping
        sampler = Sampler(options.sampling, prompt_ids)
        detok = IncrementalDetokenizer(self.tokenizer, skip_special=options.skip_special_tokens)
        matcher = StopSequenceMatcher(stopping.stop_sequences, stopping.include_stop_sequence)
        end_ids = frozenset() if stopping.ignore_eos else self.tokenizer.special.end_of_generation_ids
        stop_ids = frozenset(stopping.stop_token_ids)

        logits = self.prefill(prompt_ids)
        position = len(prompt_ids)
        for index in range(stopping.max_new_tokens):
            token = sampler.sample(logits)
            sampler.observe(token)
            event = TokenEvent(index, token, "", prompt_tokens=len(prompt_ids))
            if options.logprobs or options.top_logprobs:
                event.logprob, event.top_logprobs = logprobs_of(logits, token, options.top_logprobs)
            if token in end_ids:
                event.finish_reason = FinishReason.END_OF_TURN
            elif token in stop_ids:
                event.finish_reason = FinishReason.STOP_TOKEN
            else:
                event.text = matcher.feed(detok.push(token))
                if matcher.stopped:
                    event.finish_reason = FinishReason.STOP_SEQUENCE
                elif index + 1 == stopping.max_new_tokens or position + 1 >= self.max_context:
                    event.finish_reason = FinishReason.LENGTH
            if event.finish_reason is not None:
                if event.finish_reason is not FinishReason.STOP_SEQUENCE:
                    event.text += matcher.feed(detok.flush()) + matcher.flush()
                yield event
                return
            yield event
            logits = self._forward([token], position)
            position += 1
