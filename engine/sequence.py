"""One request's state as it moves through the engine, and what happens when it gains a token.

Counters in the style of vLLM v1: a sequence has `num_tokens` (prompt + generated) and
`num_computed_tokens` (those whose keys and values are in its KV blocks). There is no separate
prefill phase: a step computes some of the uncomputed tokens; when that reaches the end, the
logits of the last one give the next token.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from .constraints import ConstrainedDecoder, OutputConstraint
from .detokenizer import IncrementalDetokenizer
from .sampling import Sampler, SamplingParams, logprobs_of
from .speculation import MAX_DRAFT_TOKENS, NO_SPECULATION, DraftLength, SpeculationParams, propose_drafts
from .stopping import FinishReason, StoppingCriteria, StopSequenceMatcher
from .tokenizer import Tokenizer


@dataclass
class RequestOptions:
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0))
    stopping: StoppingCriteria = field(default_factory=StoppingCriteria)
    logprobs: bool = False
    top_logprobs: int = 0                   # also report this many most likely alternatives
    skip_special_tokens: bool = True
    speculation: SpeculationParams = NO_SPECULATION   # prompt-lookup drafts (speculation.py)
    constraint: OutputConstraint | None = None        # JSON schema, regex, choice, grammar (constraints.py)


@dataclass
class TokenEvent:
    index: int                              # 0 for the first generated token
    token_id: int | None                    # None on a cancellation notice
    text: str                               # text this token completed ("" while UTF-8 or stop text is held)
    logprob: float | None = None            # log p(token) under the model, when asked for
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    finish_reason: FinishReason | None = None   # on the last event only
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0           # prompt tokens whose KV came from the prefix cache


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, request_id: str, prompt_ids: list[int], options: RequestOptions, tokenizer: Tokenizer,
                 max_context: int, arrival: int, resumed_output: list[int] | None = None,
                 constrained: ConstrainedDecoder | None = None):
        """constrained: the parser of options.constraint (the engine compiles it), or None."""
        self.request_id = request_id
        self.options = options
        self.num_prompt_tokens = len(prompt_ids)
        self.token_ids: list[int] = list(prompt_ids)
        self.num_computed_tokens = 0
        self.num_cached_prompt_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []          # chain hashes of the full blocks of token_ids
        self.num_published_blocks = 0                # leading blocks already in the prefix cache
        self.admitted_before = False
        self.status = SequenceStatus.WAITING
        self.arrival = arrival                       # admission order (FIFO; the newest is preempted first)
        self.max_context = max_context
        self.finish_reason: FinishReason | None = None
        self.remote_lookup_done = False
        self.draft_ids: list[int] = []               # this step's speculative tokens, not yet in token_ids
        self.num_drafts_proposed = 0
        self.num_drafts_accepted = 0
        self._draft_length = DraftLength(options.speculation.num_draft_tokens)
        self._draft_tries = [0] * MAX_DRAFT_TOKENS    # per draft position: verified (its drafts before accepted)
        self._draft_hits = [0] * MAX_DRAFT_TOKENS     # ... and accepted
        self._unverified_draft: int | None = None    # the first draft of a step that kept none
        stopping = options.stopping
        self._sampler = Sampler(options.sampling, prompt_ids)
        self._detok = IncrementalDetokenizer(tokenizer, skip_special=options.skip_special_tokens)
        self._matcher = StopSequenceMatcher(stopping.stop_sequences, stopping.include_stop_sequence)
        self._end_ids = frozenset() if stopping.ignore_eos else tokenizer.special.end_of_generation_ids
        self._stop_ids = frozenset(stopping.stop_token_ids)
        self._constrained = constrained
        # Tokens generated before a worker died: replayed silently, then generation continues.
        for token in resumed_output or []:
            if constrained is not None:
                constrained.accept(token)
            self._sampler.observe(token)
            self._matcher.feed(self._detok.push(token))
            self.token_ids.append(token)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        """More than one token to compute: its next step is a prompt chunk, not a decode row."""
        return self.num_uncomputed_tokens > 1

    def propose_drafts(self) -> None:
        """Set draft_ids for a decode step: prompt-lookup tokens, as many as the draft length,
        max_new_tokens and the context leave room for (the step also emits one token of its own)."""
        spec = self.options.speculation
        room = min(self.options.stopping.max_new_tokens - self.num_output_tokens,
                   self.max_context - self.num_tokens) - 1
        limit = min(self._draft_length.current, room)
        self._unverified_draft = None
        self.draft_ids = propose_drafts(np.asarray(self.token_ids, np.int64), limit, spec.min_ngram,
                                        spec.max_ngram) if limit > 0 else []

    def draft_acceptance(self, n: int) -> list[float]:
        """How likely this sequence's drafts 1..n are accepted, each given the ones before it, from
        its verify steps and from the first draft of each step that kept none (scored against the
        token decoded instead, at no cost). By position: a draft deep in an accepted run (a quote)
        is likelier to be accepted than the first. Each position's estimate starts from the one
        before it (weight 2; the first from 1/2) and moves with its own counts."""
        estimates, prior = [], 0.5
        for i in range(n):
            prior = (self._draft_hits[i] + 2 * prior) / (self._draft_tries[i] + 2)
            estimates.append(prior)
        return estimates

    def keep_drafts(self, n: int) -> None:
        """Keep the first n of this step's drafts (speculation.plan_drafts)."""
        if n == 0 and self.draft_ids:
            self._unverified_draft = self.draft_ids[0]
        del self.draft_ids[n:]

    def score_unverified_draft(self, token_id: int | None) -> None:
        """After a step without drafts: whether the draft it dropped was the token decoded."""
        if self._unverified_draft is not None and token_id is not None:
            self._draft_tries[0] += 1
            self._draft_hits[0] += int(token_id == self._unverified_draft)
        self._unverified_draft = None

    def verify_drafts(self, logits: np.ndarray) -> list[TokenEvent]:
        """Emit tokens from logits (1 + len(draft_ids), vocab), the rows of the last token and of
        each draft: position i is sampled as plain decoding would, and the next position is used
        only while the sample equals the draft (speculation.py). Clears draft_ids; counts the
        accepted drafts, whose keys and values the step computed, as computed tokens."""
        drafts, self.draft_ids = self.draft_ids, []
        events = []
        for i in range(len(drafts) + 1):
            event = self.append_token(logits[i])
            events.append(event)
            if event.finish_reason is not None or i == len(drafts) or event.token_id != drafts[i]:
                break
        accepted = sum(1 for e, d in zip(events, drafts) if e.token_id == d)
        self.num_computed_tokens = min(self.num_computed_tokens + accepted, self.num_tokens - 1)
        self.num_drafts_proposed += len(drafts)
        self.num_drafts_accepted += accepted
        for i in range(accepted):
            self._draft_tries[i] += 1
            self._draft_hits[i] += 1
        if accepted < len(drafts) and events[-1].finish_reason is None:
            self._draft_tries[accepted] += 1                 # the rejected one
        self._draft_length.update(len(drafts), accepted)
        return events

    def append_token(self, logits: np.ndarray) -> TokenEvent:
        """Sample the next token from the logits of the last token and apply the stop rules."""
        token = self._sampler.sample(logits if self._constrained is None else self._constrained.masked(logits))
        logprob, top = None, []
        if self.options.logprobs or self.options.top_logprobs:
            logprob, top = logprobs_of(logits, token, self.options.top_logprobs)
        return self.append_sampled(token, logprob, top)

    @property
    def sampler(self) -> Sampler:
        return self._sampler

    def wants_device_sampling(self) -> bool:
        """A device sampler can choose this sequence's tokens (and the logprob it may report)."""
        return (self.options.top_logprobs == 0 and not self.draft_ids and self._constrained is None
                and self._sampler.device_sampling())

    def append_sampled(self, token: int, logprob: float | None = None,
                       top_logprobs: list[tuple[int, float]] | None = None) -> TokenEvent:
        """Append a token already chosen (on the host from logits, or by a device sampler) and apply
        the stop rules. logprob: log p(token) under the model, reported only when the request asked."""
        self._sampler.observe(token)
        if self._constrained is not None:
            self._constrained.accept(token)
        opts = self.options
        event = TokenEvent(self.num_output_tokens, token, "", prompt_tokens=self.num_prompt_tokens,
                           cached_prompt_tokens=self.num_cached_prompt_tokens)
        if opts.logprobs or opts.top_logprobs:
            event.logprob, event.top_logprobs = logprob, list(top_logprobs or [])
        self.token_ids.append(token)
        if token in self._end_ids:
            event.finish_reason = FinishReason.END_OF_TURN
        elif token in self._stop_ids:
            event.finish_reason = FinishReason.STOP_TOKEN
        else:
            event.text = self._matcher.feed(self._detok.push(token))
            if self._matcher.stopped:
                event.finish_reason = FinishReason.STOP_SEQUENCE
            elif self._constrained is not None and self._constrained.is_complete:
                event.finish_reason = FinishReason.END_OF_TURN     # the grammar allows nothing more
            elif self.num_output_tokens >= opts.stopping.max_new_tokens or self.num_tokens >= self.max_context:
                event.finish_reason = FinishReason.LENGTH
        if event.finish_reason is not None and event.finish_reason is not FinishReason.STOP_SEQUENCE:
            event.text += self._matcher.feed(self._detok.flush()) + self._matcher.flush()
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
        return event
