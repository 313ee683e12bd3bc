"""Ask's prompt in one process: the service's chunks, search, prompt and sampling, without the stack.

    python bench/ask_prompt_lab.py [--limit 40] [--split dev] [--sources 4] [--system TEXT]
                                   [--question-first] [--examples 0..2] [--model NAME] [--show]

For trying a prompt or a number of sources quickly on the dev split (a run of 40 questions takes
about 4 minutes on 2 cores, against 10+ for bench_ask.py, which ingests through the services), then
confirming what pays with `make bench-ask` on the held-out split. The default corpus is chunked
and embedded as Retrieval's ingest does (sections.headed_chunks, the encoder on indexed_text) once,
and cached (--cache: delete it after changing the encoder or the chunker's code); questions are
searched with the service's hybrid settings, declined by its AnswerabilityCheck, prompted by
prompt.build_prompt, answered greedily with Ask's n-gram ban and stop, and cited as the service
cites (the answer's markers, else prompt.attributed_numbers).
Without --system, --question-first or --examples the prompt is exactly Ask's.

Dev questions are shuffled with a fixed seed (--seed) before --limit, so a limited run is a spread
of topics. Prints JSON: correct, correct_and_cited, evidence_in_sources, correct given the
evidence, declined (answerable questions declined), mean prompt tokens, time to first token p50,
looping answers.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from ask_eval import answer_has_keywords, contains_evidence, load, repeats_ngram  # noqa: E402

# two worked examples on made-up documents (not the corpus): a direct answer in the source's
# words with its number
EXAMPLES = [
    ("Source 1 (oven: Oven manual > Self-cleaning):\nThe self-cleaning cycle heats the oven to about 480 "
     "degrees and takes three hours. The door locks automatically when the cycle starts and stays locked "
     "until the oven has cooled down.\n\nSource 2 (oven: Oven manual > Timer):\nThe timer counts down from "
     "up to 12 hours. It does not turn the oven off unless the auto-off option is set.\n\n"
     "Question: Can I open the door while the oven cleans itself?",
     "No. The door locks automatically when the cycle starts and stays locked until the oven has cooled "
     "down [1]."),
    ("Source 1 (http: Status codes > Redirection):\nThe 301 (Moved Permanently) status code indicates that "
     "the target resource has been assigned a new permanent URI.\n\nSource 2 (http: Status codes > Client "
     "errors):\nThe 404 (Not Found) status code indicates that the server did not find a current "
     "representation for the target resource. The 410 (Gone) status code indicates that access to the "
     "target resource is no longer available at the origin server and that this condition is likely to be "
     "permanent.\n\nQuestion: Which status code says a page was removed for good?",
     "The 410 (Gone) status code: access to the target resource is no longer available and this condition "
     "is likely to be permanent [2]."),
]


def corpus_records(encoder, config, cache: Path):
    """ChunkRecords of the default corpus, as Retrieval's ingest stores them; the embeddings (the slow
    part) are kept in `cache` (.npy) and reused while the chunk count matches."""
    from services.retrieval.chunking import ChunkingConfig
    from services.retrieval.corpus import pydoc_topics
    from services.retrieval.sections import headed_chunks
    from services.retrieval.store import ChunkRecord, chunk_id, indexed_text

    chunking = ChunkingConfig(config.chunk_tokens, config.overlap_tokens)
    pending = [(doc_id, source, chunk, context) for doc_id, text, source, _ in pydoc_topics()
               for chunk, context in headed_chunks(text, source, encoder.token_offsets, chunking,
                                                   config.contextual_headers)]
    vectors = np.load(cache) if cache.exists() else None
    if vectors is None or vectors.shape[0] != len(pending):
        vectors = encoder.embed([indexed_text(context, c.text) for _, _, c, context in pending])
        np.save(cache, vectors)
    return [ChunkRecord(chunk_id(doc_id, c.index, c.text), doc_id, c.index, source, c.start, c.end, c.text,
                        vectors[i], context=context) for i, (doc_id, source, c, context) in enumerate(pending)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--split", default="dev", choices=("dev", "heldout", "all"))
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sources", type=int, default=0, help="sources in the prompt (default: Ask's)")
    ap.add_argument("--system", default=None, help="a system prompt in place of Ask's")
    ap.add_argument("--question-first", action="store_true", help="the question before the sources too")
    ap.add_argument("--examples", type=int, default=0, choices=(0, 1, 2), help="worked examples before the question")
    ap.add_argument("--cache", type=Path, default=None,
                    help="where the chunks' embeddings are kept, .npy (default: a file in /tmp named by the chunking)")
    ap.add_argument("--show", action="store_true", help="each answer to stderr")
    args = ap.parse_args()

    from engine.encoder import SentenceEncoder
    from engine.generation import Generator
    from engine.llm import LLM
    from engine.model_registry import DEFAULT_MODEL, installed_path
    from engine.sampling import SamplingParams
    from engine.sequence import RequestOptions
    from engine.stopping import StoppingCriteria
    from services.common.config import RetrievalConfig
    from services.retrieval import prompt as ask_prompt
    from services.retrieval.index import SearchIndex, SearchMode, SearchSettings
    from services.retrieval.relevance import AnswerabilityCheck

    config = RetrievalConfig()
    cache = args.cache or Path(f"/tmp/meshllm_ask_lab_{config.chunk_tokens}_{config.overlap_tokens}_"
                               f"{int(config.contextual_headers)}.npy")
    encoder = SentenceEncoder.load()
    index = SearchIndex(1, corpus_records(encoder, config, cache), encoder.dimensions, SearchSettings.of(config))
    answerability = AnswerabilityCheck(config.answerable_relevance, config.answerable_relevance_unknown_term)
    model = args.model or DEFAULT_MODEL
    llm = LLM.load(installed_path(model))
    generator = Generator(llm.model, llm.tokenizer, max_context=4096)
    options = RequestOptions(SamplingParams(temperature=0.0, no_repeat_ngram_size=config.ask_no_repeat_ngram),
                             StoppingCriteria(max_new_tokens=256, stop_sequences=(ask_prompt.SOURCE_LABEL_STOP,)))

    questions = load().split(args.split)[0]
    random.Random(args.seed).shuffle(questions)
    questions = questions[:args.limit] if args.limit else questions
    rows = []
    for item in questions:
        (vector,) = encoder.embed([item.question])
        hits = index.search(item.question, vector, SearchMode.HYBRID, args.sources or config.ask_sources)
        if not answerability.admits(item.question, hits, index):
            rows.append({"id": item.id, "declined": True, "correct": False, "cited": False, "evidence": False})
            continue
        built = ask_prompt.build_prompt(llm, item.question, hits, config.ask_prompt_tokens)
        messages = [dict(m) for m in built.messages]
        if args.system is not None:
            messages[0]["content"] = args.system
        if args.question_first:
            messages[-1]["content"] = f"Question: {item.question}\n\n" + messages[-1]["content"]
        for user, answer in reversed(EXAMPLES[:args.examples]):
            messages[1:1] = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        ids = llm.encode_chat(messages)
        started, first, out = time.perf_counter(), None, []
        for event in generator.generate(ids, options):
            first = first or time.perf_counter() - started
            out.append(event.token_id)
        text = llm.tokenizer.decode(out, skip_special=True)
        texts = [h.record.text for h in built.sources]
        cited = ask_prompt.answer_sources(text, built.sources, encoder.embed)
        rows.append({"id": item.id, "declined": False, "correct": answer_has_keywords(text, item.keywords),
                     "cited": any(contains_evidence(texts[n - 1], item.evidence) for n in cited),
                     "evidence": any(contains_evidence(t, item.evidence) for t in texts),
                     "prompt_tokens": len(ids), "ttft": first or 0.0, "looping": repeats_ngram(out, 8, 3)})
        if args.show:
            print(f"[{item.id}] {item.question}\n  -> {text!r}\n  {rows[-1]}", file=sys.stderr)
    n = len(rows)
    answered = [r for r in rows if not r["declined"]]
    with_evidence = [r for r in rows if r["evidence"]]
    print(json.dumps({
        "model": model, "split": args.split, "questions": n, "sources": args.sources or config.ask_sources,
        "system": args.system, "question_first": args.question_first, "examples": args.examples,
        "correct": round(sum(r["correct"] for r in rows) / n, 3),
        "correct_and_cited": round(sum(r["correct"] and r["cited"] for r in rows) / n, 3),
        "evidence_in_sources": round(len(with_evidence) / n, 3),
        "correct_given_evidence": round(sum(r["correct"] for r in with_evidence) / max(1, len(with_evidence)), 3),
        "declined": sum(r["declined"] for r in rows),
        "prompt_tokens_mean": round(float(np.mean([r["prompt_tokens"] for r in answered])), 1) if answered else None,
        "ttft_s_p50": round(float(np.median([r["ttft"] for r in answered])), 2) if answered else None,
        "looping": sum(r.get("looping", False) for r in rows),
    }, indent=2))


if __name__ == "__main__":
    main()
