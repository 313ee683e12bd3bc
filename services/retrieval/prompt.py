"""The Ask prompt: numbered sources and the question, within the model's context budget."""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.llm import LLM

from .index import Hit

SYSTEM = ("You are a helpful assistant. Answer the question using only the numbered sources. "
          "Cite the sources you use with their numbers in brackets, like [1]. If the sources do not "
          "contain the answer, say that you cannot find it in the documents.")
NO_SOURCE_ANSWER = "I could not find anything about this in the documents, so I cannot answer it from them."
_CITATION = re.compile(r"\[(\d{1,2})\]")
# a small model that starts copying the prompt's source blocks into its answer writes the label
# next: stop there (the answer so far stands) rather than loop through the sources
SOURCE_LABEL_STOP = "] (source: "


@dataclass
class Prompt:
    messages: list[dict]
    sources: list[Hit]               # numbered 1.. in this order
    prompt_tokens: int


def build_prompt(llm: LLM, question: str, hits: list[Hit], budget_tokens: int) -> Prompt:
    """The chat messages for `question` with as many of `hits` (best first) as fit in budget_tokens;
    a source that does not fit whole is cut, if a useful part fits."""
    def render(sources: list[tuple[Hit, str]]) -> list[dict]:
        # the label names the chunk's section too ("specialnames: ... > Basic customization"), when known
        blocks = [f"[{n}{SOURCE_LABEL_STOP}{hit.record.context or hit.record.source})\n{text}"
                  for n, (hit, text) in enumerate(sources, start=1)]
        user = "Sources:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}" if blocks else question
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
    return {int(m) for m in _CITATION.findall(answer) if 1 <= int(m) <= n_sources}
