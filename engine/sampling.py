"""Choosing the next token from logits: penalties, temperature, top-k, top-p, min-p, seeded draws.

Order of the logits processors (Hugging Face's): repetition / presence / frequency penalties,
temperature, top-k, top-p, min-p, then a draw. Temperature 0 (or top_k 1) is greedy.

Penalties, as in vLLM: the repetition penalty (CTRL-style: positive logits divided, negative
multiplied) applies to every token of the prompt and the output so far; presence and frequency
penalties (OpenAI-style: subtract presence once, frequency per occurrence) to the output only.
no_repeat_ngram_size n (Hugging Face's, over the output only, so that an answer may still quote
its prompt): a token that would make the output's last n tokens a repeat of n tokens it already
holds is banned, so greedy decoding cannot fall into a loop.

Log-probabilities reported to users are those of the model's own distribution (log-softmax of the
raw logits), independent of the sampling settings, as OpenAI and vLLM report them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# candidate pool sizes tried before sorting the whole vocabulary for top-p
_POOL_SIZES = (64, 512, 4096)
MAX_NO_REPEAT_NGRAM = 64


class SamplingError(ValueError):
    """A sampling parameter is out of range."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0          # 0 = greedy
    top_k: int = 0                    # 0 = off
    top_p: float = 1.0                # (0, 1]; 1 = off
    min_p: float = 0.0                # [0, 1]; 0 = off
    repetition_penalty: float = 1.0   # > 0; 1 = off
    presence_penalty: float = 0.0     # [-2, 2]
    frequency_penalty: float = 0.0    # [-2, 2]
    seed: int | None = None           # same seed, same prompt, same output
    no_repeat_ngram_size: int = 0     # 0 = off; n >= 2: no n-token sequence occurs twice in the output

    def __post_init__(self):
        def check(ok, msg):
            if not ok:
                raise SamplingError(msg)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            check(math.isfinite(getattr(self, name)), f"{name} must be a finite number")
        check(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        check(self.temperature <= 100, f"temperature must be <= 100, got {self.temperature}")
        check(self.top_k >= 0, f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        check(0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}")
        check(0 < self.repetition_penalty <= 10,
              f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}")
        check(-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        check(-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        check(self.seed is None or 0 <= self.seed < 2**64, "seed must be in [0, 2^64)")
        check(self.no_repeat_ngram_size == 0 or 2 <= self.no_repeat_ngram_size <= MAX_NO_REPEAT_NGRAM,
              f"no_repeat_ngram_size must be 0 (off) or in [2, {MAX_NO_REPEAT_NGRAM}], got {self.no_repeat_ngram_size}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return (self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0
                or self.no_repeat_ngram_size != 0)


GREEDY = SamplingParams(temperature=0.0)


class Sampler:
    """The sampling state of one sequence: its random stream, the token counts penalties need and,
    with no_repeat_ngram_size n, the tokens seen after each (n-1)-token context of the output."""

    def __init__(self, params: SamplingParams, prompt_ids):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self._prompt_ids = np.unique(np.asarray(prompt_ids, dtype=np.int64))
        self._output_counts: dict[int, int] = {}
        self._output: list[int] = []
        self._followers: dict[tuple[int, ...], set[int]] = {}

    def observe(self, token_id: int) -> None:
        """Record a generated token (for the penalties)."""
        self._output_counts[token_id] = self._output_counts.get(token_id, 0) + 1
        n = self.params.no_repeat_ngram_size
        if n:
            out = self._output
            if len(out) >= n - 1:
                self._followers.setdefault(tuple(out[len(out) - n + 1:]), set()).add(token_id)
            out.append(token_id)

    def banned(self) -> list[int]:
        """Tokens that would repeat an n-gram of the output (no_repeat_ngram_size n)."""
        n = self.params.no_repeat_ngram_size
        if not n or len(self._output) < n - 1:
            return []
        return sorted(self._followers.get(tuple(self._output[len(self._output) - n + 1:]), ()))

    def sample(self, logits: np.ndarray) -> int:
        p = self.params
        if p.has_penalties:
            logits = self._penalized(logits)
        if p.greedy:
            return int(np.argmax(logits))
        return sample_from(logits, p, self.rng)

    def device_sampling(self) -> bool:
        """Whether a device sampler (greedy, temperature, top-k: kernels/cuda/sampling.py) can draw for us."""
        p = self.params
        return not p.has_penalties and p.top_p >= 1 and p.min_p <= 0

    def device_draw(self, vocab_size: int) -> tuple[float, int, float]:
        """(temperature, top_k, uniform) for a device draw; consumes the random stream as sample() does
        (one uniform for a non-greedy draw, none for greedy), so seeded outputs stay reproducible."""
        p = self.params
        if p.greedy:
            return 0.0, 0, 0.0
        top_k = p.top_k if 0 < p.top_k < vocab_size else 0
        return p.temperature, top_k, float(self.rng.random())

    def _penalized(self, logits: np.ndarray) -> np.ndarray:
        p = self.params
        logits = logits.astype(np.float32, copy=True)
        out_ids = np.fromiter(self._output_counts.keys(), dtype=np.int64, count=len(self._output_counts))
        if p.repetition_penalty != 1:
            seen = np.union1d(self._prompt_ids, out_ids)
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if out_ids.size and (p.presence_penalty or p.frequency_penalty):
            counts = np.fromiter(self._output_counts.values(), dtype=np.float32, count=out_ids.size)
            logits[out_ids] -= p.presence_penalty + p.frequency_penalty * counts
        banned = self.banned()
        if banned and len(banned) < logits.shape[0]:      # never ban the whole vocabulary
            logits[banned] = -np.inf
        return logits


def sample_from(logits: np.ndarray, p: SamplingParams, rng: np.random.Generator) -> int:
    """A draw from softmax(logits / temperature) restricted by top-k, top-p and min-p."""
    scaled = logits.astype(np.float64) / p.temperature
    vocab = scaled.shape[0]
    k = p.top_k if 0 < p.top_k < vocab else vocab
    if k < vocab:
        pool = np.argpartition(-scaled, k - 1)[:k]
        ids, probs = _sorted_softmax(scaled, pool)
    elif p.top_p < 1 or p.min_p > 0:
        ids, probs = _smallest_sufficient_pool(scaled, p)
    else:
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        return int(min(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum()), vocab - 1))
    keep = probs.shape[0]
    if p.top_p < 1:
        keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1)
    if p.min_p > 0:
        keep = min(keep, max(1, int(np.count_nonzero(probs >= p.min_p * probs[0]))))
    probs = probs[:keep]
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(ids[min(i, keep - 1)])


def _sorted_softmax(scaled: np.ndarray, pool: np.ndarray):
    """(ids, probabilities) of the pool, most likely first, normalised over the pool."""
    order = pool[np.argsort(-scaled[pool], kind="stable")]
    probs = np.exp(scaled[order] - scaled[order[0]])
    return order, probs / probs.sum()


def _smallest_sufficient_pool(scaled: np.ndarray, p: SamplingParams):
    """Sorted (ids, probs over the whole vocabulary) of enough top tokens to decide top-p and min-p.

    Sorting 49k logits per token costs milliseconds; the top 64 almost always hold the top-p mass.
    """
    probs_all = np.exp(scaled - scaled.max())
    probs_all /= probs_all.sum()
    vocab = scaled.shape[0]
    for size in _POOL_SIZES + (vocab,):
        if size >= vocab:
            order = np.argsort(-probs_all, kind="stable")
            return order, probs_all[order]
        pool = np.argpartition(-probs_all, size - 1)[:size]
        order = pool[np.argsort(-probs_all[pool], kind="stable")]
        probs = probs_all[order]
        enough_mass = p.top_p >= 1 or probs.sum() >= p.top_p
        enough_min_p = p.min_p <= 0 or probs[-1] < p.min_p * probs[0]
        if enough_mass and enough_min_p:
            return order, probs


def logprobs_of(logits: np.ndarray, token_id: int, top_n: int = 0):
    """(log p(token_id), [(id, log p) of the top_n most likely tokens]) under log_softmax(logits)."""
    x = logits.astype(np.float64)
    m = x.max()
    log_z = m + math.log(np.exp(x - m).sum())
    chosen = float(x[token_id] - log_z)
    if top_n <= 0:
        return chosen, []
    top_n = min(top_n, x.shape[0])
    top = np.argpartition(-x, top_n - 1)[:top_n]
    top = top[np.argsort(-x[top], kind="stable")]
    return chosen, [(int(i), float(x[i] - log_z)) for i in top]
