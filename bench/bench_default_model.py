"""Which model should answer Ask by default: each installed model answers questions about
CPython's reference topics from the passage that holds the answer (Ask's prompt, retrieval left
out), greedy; an answer is right when it contains every phrase of one of its accepted sets; an
answer that says one sentence twice counts as repeating. Prints JSON: per model, right answers,
repeating answers, tokens/s (prefill included).

    python bench/bench_default_model.py [--models NAME ...] [--max-tokens 120]

The set is small and written before choosing; the last four questions are held out (reported
apart) so the choice is not fitted to the first ones.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pydoc_data.topics import topics

from engine.generation import Generator, RequestOptions
from engine.llm import LLM
from engine.model_registry import installed_path
from engine.sampling import GREEDY
from engine.stopping import StoppingCriteria
from services.retrieval.prompt import SYSTEM


@dataclass
class Question:
    topic: str
    question: str
    accepted: tuple[tuple[str, ...], ...]   # any one set, all of its words (case-insensitive)


QUESTIONS = [
    Question("assert", "What happens to assert statements when Python runs with optimization turned on?",
             (("no code",), ("not executed",), ("not be executed",), ("are removed",), ("ignored",), ("skipped",),
              ("not evaluated",), ("__debug__", "false"))),
    Question("pass", "What does the pass statement do?", (("does nothing",), ("null operation",),
                                                          ("nothing happens",))),
    Question("break", "Which loops can a break statement terminate?", (("for", "while"), ("nearest enclosing",))),
    Question("global", "What does the global statement declare?", (("identifiers", "global"),
                                                                   ("names", "interpreted as global"))),
    Question("del", "What does deleting a name with del do?", (("unbind",), ("removes the binding",),
                                                               ("remove the binding",), ("removes", "namespace"))),
    Question("return", "What does a return statement inside a generator function do?", (("stopiteration",),)),
    # held out
    Question("continue", "What does the continue statement do?", (("next cycle",), ("next iteration",), ("skip",))),
    Question("nonlocal", "What does the nonlocal statement do?", (("enclosing",), ("outer",))),
    Question("yield", "Where can a yield expression be used?", (("generator",),)),
    Question("raise", "What does a bare raise statement with no expression do?",
             (("re-raise",), ("reraise",), ("currently handled",), ("currently being handled",),
              ("active exception",), ("last exception",))),
]
HELD_OUT = 4


def repeats_itself(text: str) -> bool:
    sentences = [s.strip().lower() for s in re.split(r"[.!?\n]+", text) if len(s.strip()) > 20]
    return len(sentences) != len(set(sentences))


def right(answer: str, q: Question) -> bool:
    low = answer.lower()
    return any(all(word in low for word in words) for words in q.accepted)


def evaluate(name: str, max_tokens: int) -> dict:
    llm = LLM.load(installed_path(name))
    generator = Generator(llm.model, llm.tokenizer, max_context=4096)
    rows, tokens, seconds = [], 0, 0.0
    for q in QUESTIONS:
        passage = topics[q.topic][:2500]
        user = f"Source 1 ({q.topic}):\n{passage}\n\nQuestion: {q.question}"     # Ask's layout (prompt.py)
        ids = llm.encode_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}])
        t0 = time.perf_counter()
        options = RequestOptions(GREEDY, StoppingCriteria(max_new_tokens=max_tokens))
        out = [e.token_id for e in generator.generate(ids, options)]
        seconds += time.perf_counter() - t0
        tokens += len(out)
        answer = llm.tokenizer.decode(out, skip_special=True)
        rows.append({"topic": q.topic, "right": right(answer, q), "repeats": repeats_itself(answer),
                     "answer": answer.strip()[:300]})
    tuned, held = rows[:-HELD_OUT], rows[-HELD_OUT:]
    return {"model": name,
            "right": f"{sum(r['right'] for r in tuned)}/{len(tuned)}",
            "right_held_out": f"{sum(r['right'] for r in held)}/{len(held)}",
            "repeating_answers": sum(r["repeats"] for r in rows),
            "tokens_per_s_incl_prefill": round(tokens / seconds, 1), "answers": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct",
                                                    "qwen2.5-coder-1.5b-instruct"])
    ap.add_argument("--max-tokens", type=int, default=120)
    args = ap.parse_args()
    print(json.dumps([evaluate(m, args.max_tokens) for m in args.models if installed_path(m)], indent=1))


if __name__ == "__main__":
    main()
