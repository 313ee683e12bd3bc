"""Ask benchmark: answer quality, citations, abstention, loops and speed on the default corpus.

    python bench/bench_ask.py [--model NAME] [--split heldout|dev|all] [--limit N] [--speedup-questions 12]

Starts the whole stack on one model (`meshllm up --ephemeral`), ingests `pydoc_data.topics`, and
asks every question of the split of bench/ask_eval.json through Retrieval.Ask over gRPC, as a
client would. Prints JSON:

- answerable questions: `correct` (every keyword group present), `correct_and_cited` (correct, and
  the answer cites a source whose chunk contains the evidence phrase: its own [n] markers, or
  where it has none the sources the service attributes it to), citation precision
  (cited numbers whose chunk holds the evidence) and recall (answers citing such a chunk), and
  `evidence_in_sources` (retrieval handed the model the evidence at all);
- unanswerable questions: `declined` (Ask found nothing relevant, or the answer says the sources
  do not contain it);
- `looping`: answers in which some 8-token sequence of the model's tokens occurs 3 times;
- warm-stack time to first token p50/p99 and decode tok/s; with --speedup-questions N, the first N
  answerable questions again with speculation off: decode speedup, identical-text count, and
  tokens per verification step (prompt-lookup speculative decoding, the worker's counters).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ask_eval import answer_has_keywords, contains_evidence, load, repeats_ngram  # noqa: E402
from bench_engine import cpu_name  # noqa: E402
from bench_retrieval import ingest_corpus, start_stack, stop_stack  # noqa: E402

from services.retrieval.prompt import cited_numbers  # noqa: E402

# how the prompt (services/retrieval/prompt.py) tells the model to decline, and what models write
_DECLINE = re.compile(r"cannot find|can't find|could not find|couldn't find|not (?:contain|mention|include|"
                      r"provide|cover)|no (?:information|mention|relevant)|not (?:found|available) in|"
                      r"do(?:es)? not (?:say|specify|describe|have)|unable to (?:find|answer)|"
                      r"not possible to answer|isn't (?:mentioned|covered)", re.I)


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def ask(stub, tokenizer_stub, question: str, speculation=None) -> dict:
    from services.api import generation_pb2, retrieval_pb2, tokenizer_pb2
    request = retrieval_pb2.AskRequest(question=question, max_new_tokens=256)
    if speculation is not None:
        request.speculation.CopyFrom(generation_pb2.Speculation(num_draft_tokens=speculation))
    t0 = time.perf_counter()
    first = None
    text, citations, answered, usage = [], [], True, None
    for message in stub.Ask(request, timeout=600):
        if message.text and first is None:
            first = time.perf_counter()
        text.append(message.text)
        if message.citations:
            citations = list(message.citations)
        answered = message.answered_from_sources
        if message.HasField("usage"):
            usage = message.usage
    end = time.perf_counter()
    answer = "".join(text)
    ids = list(tokenizer_stub.Tokenize(tokenizer_pb2.TokenizeRequest(text=answer)).token_ids) if answer else []
    generated = usage.completion_tokens if usage else 0
    return {"answer": answer, "citations": citations, "answered": answered, "ttft": (first or end) - t0,
            "decode_s": end - (first or end), "tokens": generated, "ids": ids}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model name or GGUF path (default: the default model)")
    ap.add_argument("--split", default="heldout", choices=("dev", "heldout", "all"))
    ap.add_argument("--limit", type=int, default=0, help="ask only the first N questions of each kind")
    ap.add_argument("--speedup-questions", type=int, default=12,
                    help="answerable questions asked again with speculation off (0: skip)")
    ap.add_argument("--show", action="store_true", help="print each answer to stderr")
    args = ap.parse_args()
    import grpc

    from engine.model_registry import DEFAULT_MODEL
    from services.api import retrieval_pb2, retrieval_pb2_grpc, tokenizer_pb2_grpc

    eval_set = load()
    answerable = eval_set.split(args.split)[0]
    unanswerable = eval_set.split(args.split)[1]
    if args.limit:
        answerable, unanswerable = answerable[:args.limit], unanswerable[:args.limit]
    model = args.model or DEFAULT_MODEL
    up = start_stack({"MESHLLM_MODEL": model})
    try:
        stub = retrieval_pb2_grpc.RetrievalStub(grpc.insecure_channel("127.0.0.1:50052"))
        tokenizer = tokenizer_pb2_grpc.TokenizerStub(grpc.insecure_channel("127.0.0.1:50051"))
        result = {"cpu": cpu_name(), "model": model, "split": args.split, **ingest_corpus(stub)}
        ask(stub, tokenizer, "What does the pass statement do?")                # warm the stack
        rows = []
        for item in answerable:
            hits = stub.Search(retrieval_pb2.SearchRequest(query=item.question, top_k=20)).hits
            chunk_text = {h.chunk_id: h.text for h in hits}
            r = ask(stub, tokenizer, item.question)
            by_number = {c.number: chunk_text.get(c.chunk_id, c.snippet) for c in r["citations"]}
            # the answer's own markers ("[2]", "Source 2"); without any (small models rarely write them), the
            # sources the service attributes the answer to (AskResponse citations marked cited)
            marked = cited_numbers(r["answer"], len(by_number)) & set(by_number)
            cited = marked or {c.number for c in r["citations"] if c.cited}
            good = {n for n in cited if contains_evidence(by_number[n], item.evidence)}
            rows.append({"id": item.id, "correct": answer_has_keywords(r["answer"], item.keywords),
                         "cited": len(cited), "cited_good": len(good), "marked": bool(marked),
                         "evidence_in_sources": any(contains_evidence(t, item.evidence) for t in by_number.values()),
                         "looping": repeats_ngram(r["ids"], 8, 3), **{k: r[k] for k in ("ttft", "decode_s", "tokens")}})
            if args.show:
                print(f"[{item.id}] {item.question}\n  -> {r['answer']!r}\n  {rows[-1]}", file=sys.stderr)
        declined = []
        for item in unanswerable:
            r = ask(stub, tokenizer, item.question)
            declined.append({"id": item.id, "declined": (not r["answered"]) or bool(_DECLINE.search(r["answer"])),
                             "looping": repeats_ngram(r["ids"], 8, 3), "ttft": r["ttft"]})
            if args.show:
                print(f"[{item.id}] {item.question}\n  -> {r['answer']!r}", file=sys.stderr)
        n = max(len(rows), 1)
        cited_total = sum(r["cited"] for r in rows)
        ttfts = [r["ttft"] for r in rows] + [d["ttft"] for d in declined]
        decode = [r["tokens"] / r["decode_s"] for r in rows if r["decode_s"] > 0 and r["tokens"] > 1]
        result.update({
            "answerable": len(rows), "unanswerable": len(declined),
            "correct": round(sum(r["correct"] for r in rows) / n, 3),
            "correct_and_cited": round(sum(r["correct"] and r["cited_good"] > 0 for r in rows) / n, 3),
            "citation_precision": round(sum(r["cited_good"] for r in rows) / cited_total, 3) if cited_total else None,
            "citation_recall": round(sum(r["cited_good"] > 0 for r in rows) / n, 3),
            "answers_with_citations": round(sum(r["cited"] > 0 for r in rows) / n, 3),
            "answers_with_citation_markers": round(sum(r["marked"] for r in rows) / n, 3),
            "evidence_in_sources": round(sum(r["evidence_in_sources"] for r in rows) / n, 3),
            "declined": round(sum(d["declined"] for d in declined) / max(len(declined), 1), 3),
            "looping": sum(r["looping"] for r in rows) + sum(d["looping"] for d in declined),
            "ttft_s_p50": round(float(np.median(ttfts)), 2), "ttft_s_p99": round(float(np.percentile(ttfts, 99)), 2),
            "decode_tok_s_p50": round(float(np.median(decode)), 1) if decode else None,
            "wrong": [r["id"] for r in rows if not (r["correct"] and r["cited_good"])],
            "not_declined": [d["id"] for d in declined if not d["declined"]],
        })
        if args.speedup_questions:
            result["speculation"] = speedup(stub, tokenizer, answerable[:args.speedup_questions])
        print(json.dumps(result, indent=2))
    finally:
        stop_stack(up)


def speedup(stub, tokenizer, questions) -> dict:
    """The same questions with speculation on (Ask's default) and off: decode time, identical text,
    and tokens emitted per verification step from the worker's counters."""
    time.sleep(1.5)                                     # let a heartbeat carry the counters
    before = {k: metric(9103, f"meshllm_speculative_{k}") for k in ("draft_tokens", "accepted_tokens", "verify_steps")}
    on = [ask(stub, tokenizer, q.question) for q in questions]
    time.sleep(1.5)
    after = {k: metric(9103, f"meshllm_speculative_{k}") for k in before}
    off = [ask(stub, tokenizer, q.question, speculation=0) for q in questions]
    on_s = sum(r["decode_s"] for r in on)
    off_s = sum(r["decode_s"] for r in off)
    drafts = after["draft_tokens"] - before["draft_tokens"]
    accepted = after["accepted_tokens"] - before["accepted_tokens"]
    steps = after["verify_steps"] - before["verify_steps"]
    return {"questions": len(questions), "identical_answers": sum(a["answer"] == b["answer"] for a, b in zip(on, off)),
            "decode_s_on": round(on_s, 1), "decode_s_off": round(off_s, 1),
            "decode_speedup": round(off_s / on_s, 2) if on_s else None,
            "tokens_on": sum(r["tokens"] for r in on), "tokens_off": sum(r["tokens"] for r in off),
            "draft_tokens": int(drafts), "accepted_draft_tokens": int(accepted),
            "acceptance_rate": round(accepted / drafts, 3) if drafts else None,
            "tokens_per_verify_step": round((accepted + steps) / steps, 2) if steps else None}


if __name__ == "__main__":
    main()
