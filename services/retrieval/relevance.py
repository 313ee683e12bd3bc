"""Whether Ask should answer at all: the best source must be close enough to the question.

A small model handed sources that do not hold the answer rarely says so: asked about pandas or
pytest with chunks of the language reference in its prompt, it answers from what it knows. So
Ask declines before generating when its best source's cosine to the question is below `floor`,
or below the higher `floor_with_unknown_term` when the question has a word that no document
contains (SearchIndex.unknown_terms: "pandas", "lru_cache" asked of the language reference).
On the Ask evaluation set's dev split (floors 0.40 / 0.50) this declines 18 of 20 unanswerable
questions and 3 of 188 answerable ones (bench/bench_ask.py measures it through the service).
"""
from __future__ import annotations

from dataclasses import dataclass

from .index import Hit, SearchIndex


@dataclass(frozen=True)
class AnswerabilityCheck:
    floor: float = 0.40
    floor_with_unknown_term: float = 0.50

    def admits(self, question: str, hits: list[Hit], index: SearchIndex) -> bool:
        if not hits:
            return False
        best = max(h.dense_score for h in hits)
        if best < self.floor:
            return False
        return best >= self.floor_with_unknown_term or not index.unknown_terms(question)
