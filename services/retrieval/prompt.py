"""The Ask prompt: numbered sources and the question, within the model's context budget."""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.llm import LLM

from .index import Hit

# What the default 0.5B model answers best from (the Ask evaluation set's first 40 dev questions,
# the same 4 sources each, greedy): asked for one to three sentences in the sources' own words, it
# answers 28 of 40 correctly. The earlier prompt ("Cite the sources ... If the sources do not
# contain the answer, say so", sources labelled "[1] (source: ...)") got 18: the model answered a
# bare "[1]" to 10 of them. Telling it how to decline got 20, declining answerable questions;
# the best source last instead of first, 23. Whether to answer at all is decided before the model
# is asked (relevance.AnswerabilityCheck): small models rarely decline well.
SYSTEM = ("You answer questions about documents. Answer from the numbered sources only, in one to three "
          "sentences, using the sources' own words, and cite the source you use by its number in "
          "brackets, like [2].")
NO_SOURCE_ANSWER = "I could not find anything about this in the documents, so I cannot answer it from them."
# "[2]", and what small models write instead: "Source 2", "source 2 says"
_CITATION = re.compile(r"\[(\d{1,2})\]|\bsource (\d{1,2})\b", re.I)
_WORD = re.compile(r"\w+|[^\w\s]")
ATTRIBUTION_FLOOR = 0.4          # score below which an unmarked answer cites nothing
ATTRIBUTION_SLACK = 0.05         # sources this close to the best one are cited too
# a small model that starts copying the prompt's source blocks into its answer writes the next
# block's label: stop there (the answer so far stands) rather than loop through the sources
SOURCE_LABEL_STOP = "\nSource "


def source_label(number: int, hit: Hit) -> str:
    """The heading of a source block; it names the chunk's section when known
    ("Source 2 (specialnames: Special method names > Basic customization):")."""
    return f"Source {number} ({hit.record.context or hit.record.source}):"


@dataclass
class Prompt:
    messages: list[dict]
    sources: list[Hit]               # numbered 1.. in this order
    prompt_tokens: int


def build_prompt(llm: LLM, question: str, hits: list[Hit], budget_tokens: int) -> Prompt:
    """The chat messages for `question` with as many of `hits` (best first) as fit in budget_tokens;
    a source that does not fit whole is cut, if a useful part fits."""
    def render(sources: list[tuple[Hit, str]]) -> list[dict]:
        blocks = [f"{source_label(n, hit)}\n{text}" for n, (hit, text) in enumerate(sources, start=1)]
        user = "\n\n".join(blocks) + f"\n\nQuestion: {question}" if blocks else question
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def count(messages) -> int:
        return len(llm.encode_chat(messages))

    chosen: list[tuple[Hit, str]] = []
    for hit in hits:
        candidate = chosen + [(hit, hit.record.text)]
        if count(render(candidate)) <= budget_tokens:
            chosen = candidate
            continue
        room = budget_tokens - count(render(chosen + [(hit, "")]))
        if room >= 32:                                   # a useful part of it fits
            ids = llm.tokenizer.encode(hit.record.text, add_bos=False)[:room - 4]
            chosen.append((hit, llm.tokenizer.decode(ids) + " ..."))
        break
    messages = render(chosen)
    return Prompt(messages, [h for h, _ in chosen], count(messages))


def cited_numbers(answer: str, n_sources: int) -> set[int]:
    """The source numbers an answer cites: "[2]" or "Source 2", within 1..n_sources."""
    numbers = {int(a or b) for a, b in _CITATION.findall(answer)}
    return {n for n in numbers if 1 <= n <= n_sources}


def attributed_numbers(answer: str, texts: list[str], cosines: list[float]) -> set[int]:
    """The sources (numbered from 1) an answer without citation markers draws on. Each source
    scores its embedding cosine to the answer plus the share of the answer's word bigrams found in
    it (answers reuse their source's words); the best is cited, and any within ATTRIBUTION_SLACK of
    it, if it scores at least ATTRIBUTION_FLOOR. On the dev split's answers this cites a source
    holding the evidence for 19 of 22 correct answers (17 by cosine alone)."""
    grams = _bigrams(answer)
    scores = [cos + (len(grams & _bigrams(text)) / len(grams) if grams else 0.0)
              for text, cos in zip(texts, cosines, strict=True)]
    if not scores or max(scores) < ATTRIBUTION_FLOOR:
        return set()
    best = max(scores)
    return {n for n, score in enumerate(scores, start=1) if score >= best - ATTRIBUTION_SLACK}


def answer_sources(answer: str, sources: list[Hit], embed) -> set[int]:
    """The sources (numbered from 1) an answer draws on: those it cites ("[2]", "Source 2"); for an
    answer without markers (small models rarely write them), attributed_numbers, with the answer
    embedded by embed(texts) -> (n, dims) vectors."""
    explicit = cited_numbers(answer, len(sources))
    if explicit or not answer.strip():
        return explicit
    (vector,) = embed([answer])
    return attributed_numbers(answer, [h.record.text for h in sources],
                              [float(h.record.embedding @ vector) for h in sources])


def _bigrams(text: str) -> set[tuple[str, str]]:
    words = [w.casefold() for w in _WORD.findall(text)]
    return set(zip(words, words[1:]))
