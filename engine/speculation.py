"""Prompt-lookup speculative decoding: draft tokens copied from the sequence's own history.

Answers grounded in a prompt quote it (retrieval-augmented answers, code edits, summaries): when
the last few tokens of a sequence occurred earlier in it, the tokens that followed them then are
a good guess for what comes next. The engine appends such drafts to the sequence's decode step,
computes all of them in one forward (a few rows of one sequence cost far less than as many
steps), and keeps the drafts the model agrees with (Sequence.verify_drafts).

Verification samples every position exactly as plain decoding would (same logits processors, same
random stream, one draw per emitted token) and keeps drafts while the draw equals the draft. A
draft is a point mass, so this is the standard speculative-sampling acceptance rule
(accept d with probability p(d), else draw from p without d) in coupled form: each emitted token
is the draw plain decoding would make, greedy and seeded outputs are identical token for token,
and the sampling distribution is unchanged.

    drafts = propose_drafts(token_ids, max_tokens=8, min_ngram=2, max_ngram=4)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class SpeculationError(ValueError):
    """A speculation parameter is out of range."""


MAX_DRAFT_TOKENS = 16


@dataclass(frozen=True)
class SpeculationParams:
    """num_draft_tokens: most drafts per step (0: off). An n-gram of between min_ngram and
    max_ngram tokens ending the sequence is looked up in its earlier tokens, longest first."""
    num_draft_tokens: int = 0
    min_ngram: int = 2
    max_ngram: int = 4

    def __post_init__(self):
        if not 0 <= self.num_draft_tokens <= MAX_DRAFT_TOKENS:
            raise SpeculationError(f"num_draft_tokens must be in [0, {MAX_DRAFT_TOKENS}], "
                                   f"got {self.num_draft_tokens}")
        if not 1 <= self.min_ngram <= self.max_ngram <= 8:
            raise SpeculationError(f"need 1 <= min_ngram <= max_ngram <= 8, got {self.min_ngram}, {self.max_ngram}")

    @property
    def enabled(self) -> bool:
        return self.num_draft_tokens > 0


NO_SPECULATION = SpeculationParams()


def propose_drafts(token_ids: np.ndarray, max_tokens: int, min_ngram: int, max_ngram: int) -> list[int]:
    """Up to max_tokens tokens that followed the most recent earlier occurrence of the sequence's
    last n tokens (n from max_ngram down to min_ngram); [] when none occurred.

    token_ids (N,) int: the sequence so far (prompt and output)."""
    n_tokens = token_ids.shape[0]
    if max_tokens <= 0:
        return []
    for n in range(min(max_ngram, n_tokens - 1), min_ngram - 1, -1):
        # windows[i] = token_ids[i:i+n] for every start whose window ends before the last token
        windows = sliding_window_view(token_ids[:-1], n)
        hits = np.flatnonzero((windows == token_ids[-n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return token_ids[start:start + max_tokens].tolist()
    return []


class DraftLength:
    """How many drafts to ask for next, from how many the model accepted recently.

    Verifying drafts is not free (a step of k+1 rows costs more than a step of one), so a sequence
    whose drafts keep being rejected asks for fewer, and one whose drafts are all accepted grows
    back to the maximum: multiplicative increase on full acceptance, back to one past the accepted
    count on a rejection."""

    def __init__(self, maximum: int):
        self.maximum = maximum
        self.current = maximum

    def update(self, proposed: int, accepted: int) -> None:
        if proposed == 0:
            return
        if accepted == proposed:
            self.current = min(self.maximum, max(2 * self.current, accepted + 1))
        else:
            self.current = max(1, accepted + 1)


class StepCosts:
    """Seconds a step of n rows takes on this machine, learnt from the steps the engine runs: an
    exponential moving average per row count.

    What a verify row costs depends on the CPU and the batch: on an AVX-512 host a few more rows
    cost little, on an AVX2-only EPYC a 4-row step of the 0.5B model costs 2x a 1-row step and a
    9-row step 4x (float32 products there are compute-bound), where drafts that are accepted half
    the time make decoding slower. plan_drafts weighs drafts against these costs."""

    SMOOTHING = 0.25
    UNTRIED_ROW_SHARE = 0.05      # a row count never run is assumed this cheap (so it is tried once)

    def __init__(self):
        self._seconds: dict[int, float] = {}

    def record(self, rows: int, seconds: float) -> None:
        old = self._seconds.get(rows)
        self._seconds[rows] = seconds if old is None else old + self.SMOOTHING * (seconds - old)

    def estimate(self, rows: int) -> float | None:
        """The learnt cost of `rows`; between two row counts run, a straight line; above the
        largest run, a little more per row (optimistic, so that it gets measured); None before any
        step of fewer rows was run."""
        if rows in self._seconds:
            return self._seconds[rows]
        below = max((r for r in self._seconds if r < rows), default=None)
        if below is None:
            return None
        above = min((r for r in self._seconds if r > rows), default=None)
        low = self._seconds[below]
        if above is None:
            return low * (1.0 + self.UNTRIED_ROW_SHARE * (rows - below))
        return low + (self._seconds[above] - low) * (rows - below) / (above - below)


def expected_tokens(drafts: int, acceptance: float) -> float:
    """Tokens a verify step emits on average with `drafts` drafts, each accepted with probability
    `acceptance` given the ones before it: 1 + p + p^2 + ... + p^drafts."""
    return sum(acceptance ** i for i in range(drafts + 1))


def plan_drafts(base_rows: int, offers: list[list[float]], cost) -> list[int]:
    """How many of its drafts each sequence keeps this step, for the most expected tokens per second.

    base_rows: rows the step has without drafts (one per decoding sequence); offers: per speculating
    sequence, the acceptance probability of each of its drafts given the ones before it;
    cost(rows) -> seconds or None (unknown: every draft is kept, which measures it). The j-th
    draft of a sequence adds p_1 ... p_j expected tokens, less for each further one, so the best e
    drafts in all are the e largest such gains; every e is weighed against cost(base_rows + e)."""
    gains = []
    for i, probabilities in enumerate(offers):
        reach = 1.0
        for p in probabilities:
            reach *= p
            gains.append((reach, i))
    gains.sort(key=lambda g: -g[0])                   # stable: a sequence's drafts stay in order
    base = cost(base_rows)
    if base is None:
        return [len(p) for p in offers]
    best, best_rate, tokens = 0, base_rows / base, float(base_rows)
    for e, (gain, _) in enumerate(gains, start=1):
        tokens += gain
        seconds = cost(base_rows + e)
        if seconds is None:
            return [len(p) for p in offers]
        if tokens / seconds > best_rate:
            best, best_rate = e, tokens / seconds
    keep = [0] * len(offers)
    for _, i in gains[:best]:
        keep[i] += 1
    return keep
