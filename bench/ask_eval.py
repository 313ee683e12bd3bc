"""The Ask evaluation set (bench/ask_eval.json) and the measures computed on it.

The set is about the default corpus, CPython 3.11's language-reference topics
(`pydoc_data.topics`):
- answerable questions, each with the topic it was written from, the exact evidence phrase of
  that topic which answers it (whitespace-normalised), every topic holding that phrase (some
  topics repeat others: `compound` holds `if`, `while`, `with`...), and the keyword groups a
  correct answer contains (each group a list of alternatives, case-insensitive);
- unanswerable questions: off-domain ones and near-domain ones (the standard library, tools,
  the ecosystem), with the distinctive terms checked to appear in no topic.

Every item carries its split: "heldout" (40 answerable, one per topic at most, and 10
unanswerable, drawn once with a fixed seed before any tuning and never tuned on) or "dev".
Questions were written by people (our engineers) from the corpus, not generated from it.
tests/test_ask_eval_set.py checks the set against the installed corpus.

    from ask_eval import load
    answerable, unanswerable = load().split("heldout")
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

EVAL_PATH = Path(__file__).resolve().parent / "ask_eval.json"
SPLITS = ("dev", "heldout", "all")

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Answerable:
    id: str
    question: str
    topic: str
    topics: tuple[str, ...]       # every topic whose text holds the evidence
    evidence: str
    keywords: tuple[tuple[str, ...], ...]
    split: str


@dataclass(frozen=True)
class Unanswerable:
    id: str
    question: str
    kind: str                     # "off_domain" | "near_domain"
    absent: tuple[str, ...]       # terms no topic contains
    split: str


@dataclass(frozen=True)
class AskEvalSet:
    answerable: list[Answerable]
    unanswerable: list[Unanswerable]

    def split(self, name: str) -> tuple[list[Answerable], list[Unanswerable]]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {name!r}")
        keep = (lambda item: True) if name == "all" else (lambda item: item.split == name)
        return [a for a in self.answerable if keep(a)], [u for u in self.unanswerable if keep(u)]


def load(path: Path = EVAL_PATH) -> AskEvalSet:
    raw = json.loads(Path(path).read_text())
    answerable = [Answerable(a["id"], a["question"], a["topic"], tuple(a["topics"]), a["evidence"],
                             tuple(tuple(group) for group in a["keywords"]), a["split"]) for a in raw["answerable"]]
    unanswerable = [Unanswerable(u["id"], u["question"], u["kind"], tuple(u["absent"]), u["split"])
                    for u in raw["unanswerable"]]
    return AskEvalSet(answerable, unanswerable)


def normalize(text: str) -> str:
    """Every run of whitespace as one space, trimmed."""
    return _SPACE.sub(" ", text).strip()


def contains_evidence(text: str, evidence: str) -> bool:
    """Whether a chunk (or any text) holds the evidence phrase, whitespace aside."""
    return normalize(evidence) in normalize(text)


def answer_has_keywords(answer: str, keywords) -> bool:
    """Every keyword group has one of its alternatives in the answer (case-insensitive)."""
    folded = answer.casefold()
    return all(any(alt.casefold() in folded for alt in group) for group in keywords)


def repeats_ngram(ids, n: int = 8, times: int = 3) -> bool:
    """Whether some n-token sequence occurs `times` times or more in ids (occurrences may overlap)."""
    counts: dict[tuple, int] = {}
    ids = list(ids)
    for i in range(len(ids) - n + 1):
        key = tuple(ids[i:i + n])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] >= times:
            return True
    return False


def recall_at_k(flags_lists, k: int) -> float:
    """Fraction of queries with a relevant result among their first k (flags: relevance per rank)."""
    flags_lists = list(flags_lists)
    return sum(any(flags[:k]) for flags in flags_lists) / len(flags_lists) if flags_lists else 0.0


def mrr_at_k(flags_lists, k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant result within the first k (0 when none)."""
    flags_lists = list(flags_lists)
    total = 0.0
    for flags in flags_lists:
        first = next((rank for rank, hit in enumerate(flags[:k], start=1) if hit), None)
        total += 1.0 / first if first else 0.0
    return total / len(flags_lists) if flags_lists else 0.0
