"""Continuous batching under a per-step token budget. Plain Python on ints.

Each step:
1. Running sequences get their uncomputed tokens while the budget lasts: the decoding ones first
   (one token, plus speculative drafts, if any: speculation.py), then those still prefilling their
   prompt (a chunk), each group oldest first; drafts are trimmed first when the budget or the pool
   runs short. If the pool has no room for one, the newest running sequence not yet given tokens
   this step is preempted: its blocks are freed and it goes back to the head of the waiting queue,
   to be recomputed later (its freed blocks stay in the prefix cache meanwhile).
2. If nothing was preempted, waiting sequences join in arrival order, each with its cached prefix
   counted as computed, while the budget, the pool and max_num_seqs allow. One the pool cannot
   take yet is passed over by later ones that fit (a prompt whose prefix is cached needs few
   blocks), for at most max_head_passes steps at the head of the queue.
A prompt longer than the budget is prefilled in chunks over several steps. In a step that also
decodes, the prompt tokens of all chunks together are held to `prefill_room(decode rows)` (with
the engine's prefill_limit: what keeps the step within its time target on this machine), so a
long prompt delays the streams beside it by a bounded step time instead of a whole budget's
prefill (Sarathi-Serve's stall-free batching).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .kv_cache_manager import KVCacheManager
from .sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    """What the model computes this step, as plain data."""
    chunks: list[tuple[str, int]] = field(default_factory=list)   # (request_id, tokens to compute)
    preempted: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.chunks)


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_num_batched_tokens: int = 512, max_num_seqs: int = 64):
        if max_num_batched_tokens < 1 or max_num_seqs < 1:
            raise ValueError("the token budget and max_num_seqs must be >= 1")
        self.kv = kv
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.sequences: dict[str, Sequence] = {}
        self.num_preemptions = 0
        self.max_head_passes = 8                # steps a waiting head may be passed over (_may_pass_over)
        self._head_passes: tuple[str, int] = ("", 0)   # (the head passed over, how many steps)
        # decode rows -> prompt tokens a step with them may add (None: the whole budget); the engine's
        self.prefill_limit: Callable[[int], int] | None = None

    def add(self, seq: Sequence) -> None:
        self.sequences[seq.request_id] = seq
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        prefill = None                                      # prompt tokens this step may still add
        given: set[str] = set()
        for seq in sorted(self.running, key=lambda s: s.is_prefilling):   # decoding first
            if budget <= 0:
                break
            if seq.status is not SequenceStatus.RUNNING:   # preempted for an earlier one this step
                continue
            limit = budget
            if seq.is_prefilling:
                prefill = self.prefill_room(out.num_tokens) if prefill is None else prefill
                limit = min(budget, prefill)
                if limit <= 0:
                    break
            n = min(seq.num_uncomputed_tokens + len(seq.draft_ids), limit)
            del seq.draft_ids[max(0, n - seq.num_uncomputed_tokens):]
            if seq.draft_ids and not self.kv.allocate_slots(seq, n):
                n -= len(seq.draft_ids)                     # drafts are the first thing to give up
                seq.draft_ids.clear()
            while not self.kv.allocate_slots(seq, n):
                victim = next(s for s in reversed(self.running) if s.request_id not in given)   # the newest
                self.running.remove(victim)
                self._preempt(victim)
                out.preempted.append(victim.request_id)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                break
            out.chunks.append((seq.request_id, n))
            given.add(seq.request_id)
            budget -= n
            if seq.is_prefilling:
                prefill -= n
        if out.preempted:
            return out
        if prefill is None:
            prefill = self.prefill_room(out.num_tokens)
        for seq in list(self.waiting):
            if budget <= 0 or prefill <= 0 or len(self.running) >= self.max_num_seqs:
                break
            hits = self.kv.cached_prefix(seq)
            n = min(seq.num_tokens - len(hits) * self.kv.block_size, budget, prefill)
            if not self.kv.can_admit(seq, hits, n):
                if seq is self.waiting[0] and not self._may_pass_over(seq):
                    break                                   # the head has waited enough: nobody passes it
                continue                                    # later ones whose blocks fit go first
            self.waiting.remove(seq)
            self.kv.admit(seq, hits)
            self.kv.allocate_slots(seq, n)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.chunks.append((seq.request_id, n))
            budget -= n
            prefill -= n
        return out

    def prefill_room(self, decode_rows: int) -> int:
        """Prompt tokens a step that decodes `decode_rows` rows may add: the rest of the budget
        when it decodes nothing or no prefill_limit is set; else prefill_limit's, at least one
        block's worth (so that a prompt always advances)."""
        rest = self.max_num_batched_tokens - decode_rows
        if not decode_rows or self.prefill_limit is None:
            return rest
        return min(rest, max(self.kv.block_size, self.prefill_limit(decode_rows)))

    def _may_pass_over(self, head: Sequence) -> bool:
        """Whether waiting sequences behind `head`, which the pool cannot take yet, may be admitted
        before it this step: yes for its first max_head_passes steps at the head. A prompt whose
        prefix is cached needs a few blocks where one that is not needs all of its own, so strict
        arrival order would hold every short admission behind one long one (head-of-line
        blocking); after that many steps the head is served first, as running sequences finish."""
        passes = self._head_passes[1] + 1 if self._head_passes[0] == head.request_id else 1
        self._head_passes = (head.request_id, passes)
        return passes <= self.max_head_passes

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq)
        seq.draft_ids.clear()
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.kv.free(seq)
        seq.status = SequenceStatus.FINISHED
        self.sequences.pop(seq.request_id, None)
