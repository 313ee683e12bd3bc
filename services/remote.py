"""Client commands that talk to running services: tokenize, info, generate --remote."""
from __future__ import annotations

import json
import sys

import grpc

from engine.sequence import RequestOptions

from .api import (
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
)
from .client import open_channel


def _fail(e: grpc.RpcError) -> int:
    print(f"meshllm: {e.code().name}: {e.details()}", file=sys.stderr)
    return 1


def request_from_options(text: str, chat: bool, options: RequestOptions) -> generation_pb2.GenerateRequest:
    s, st = options.sampling, options.stopping
    sampling = generation_pb2.SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                                             repetition_penalty=s.repetition_penalty,
                                             presence_penalty=s.presence_penalty,
                                             frequency_penalty=s.frequency_penalty)
    if s.seed is not None:
        sampling.seed = s.seed
    stopping = generation_pb2.StoppingCriteria(max_new_tokens=st.max_new_tokens, stop_sequences=st.stop_sequences,
                                               ignore_eos=st.ignore_eos)
    request = generation_pb2.GenerateRequest(sampling=sampling, stopping=stopping)
    if chat:
        request.chat.messages.append(common_pb2.ChatMessage(role="user", content=text))
    else:
        request.text = text
    return request


def stream_generate(args, options: RequestOptions) -> int:
    request = request_from_options(args.text, args.chat, options)
    with open_channel(args.remote, args.tls_ca, args.api_key) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        try:
            for response in stub.GenerateStream(request, timeout=args.timeout):
                if response.text:
                    sys.stdout.write(response.text)
                    sys.stdout.flush()
        except grpc.RpcError as e:
            return _fail(e)
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    return 0


def cmd_tokenize(args) -> int:
    with open_channel(args.remote, args.tls_ca, args.api_key) as channel:
        try:
            reply = tokenizer_pb2_grpc.TokenizerStub(channel).Tokenize(
                tokenizer_pb2.TokenizeRequest(text=args.text, add_special_tokens=args.add_special_tokens),
                timeout=args.timeout)
        except grpc.RpcError as e:
            return _fail(e)
    if args.json:
        print(json.dumps({"token_ids": list(reply.token_ids), "tokens": list(reply.tokens),
                          "offsets": [[o.start, o.end] for o in reply.offsets]}, ensure_ascii=False))
    else:
        for token_id, piece, offset in zip(reply.token_ids, reply.tokens, reply.offsets, strict=True):
            span = args.text[offset.start:offset.end]
            print(f"{token_id:>7}  {piece!r:<24} [{offset.start}, {offset.end})  {span!r}")
        print(f"{len(reply.token_ids)} tokens")
    return 0


def cmd_info(args) -> int:
    with open_channel(args.remote, args.tls_ca, args.api_key) as channel:
        try:
            reply = generation_pb2_grpc.GenerationStub(channel).ModelInfo(generation_pb2.ModelInfoRequest(),
                                                                           timeout=args.timeout)
        except grpc.RpcError as e:
            return _fail(e)
    print(json.dumps({
        "model_name": reply.model_name, "architecture": reply.architecture, "fingerprint": reply.fingerprint,
        "context_length": reply.context_length, "vocab_size": reply.vocab_size, "num_layers": reply.num_layers,
        "hidden_size": reply.hidden_size, "max_new_tokens_limit": reply.max_new_tokens_limit,
        "workers": reply.workers, "queued_jobs": reply.queued_jobs}, indent=2))
    return 0


def cmd_ingest(args) -> int:
    from .retrieval.corpus import pydoc_topics, text_files
    documents = list(pydoc_topics()) if args.pydoc else []
    documents += list(text_files(args.paths))
    if not documents:
        print("meshllm: nothing to ingest: give PATHs or --pydoc", file=sys.stderr)
        return 2
    total = len(documents)

    def messages():
        for n, (doc_id, text, source, metadata) in enumerate(documents, start=1):
            if sys.stderr.isatty() or n == total or n % 10 == 0:
                bar = "#" * (30 * n // total)
                print(f"\ringesting [{bar:<30}] {n}/{total}", end="", file=sys.stderr, flush=True)
            yield retrieval_pb2.Document(id=doc_id, text=text, source=source, metadata=metadata)
    with open_channel(args.remote, args.tls_ca, args.api_key) as channel:
        try:
            reply = retrieval_pb2_grpc.RetrievalStub(channel).IngestStream(messages(), timeout=args.timeout)
        except grpc.RpcError as e:
            print(file=sys.stderr)
            return _fail(e)
    print(file=sys.stderr)
    counts = {}
    for r in reply.results:
        name = retrieval_pb2.IngestStatus.Name(r.status).removeprefix("INGEST_STATUS_").lower()
        counts[name] = counts.get(name, 0) + 1
    print(json.dumps({"documents": counts, "chunks_added": reply.chunks_added,
                      "total_documents": reply.total_documents, "total_chunks": reply.total_chunks}))
    return 0


_MODES = {"hybrid": retrieval_pb2.SEARCH_MODE_HYBRID, "lexical": retrieval_pb2.SEARCH_MODE_LEXICAL,
          "dense": retrieval_pb2.SEARCH_MODE_DENSE}


def cmd_search(args) -> int:
    request = retrieval_pb2.SearchRequest(query=args.query, top_k=args.top_k, mode=_MODES[args.mode],
                                          sources=args.source)
    with open_channel(args.remote, args.tls_ca, args.api_key) as channel:
        try:
            reply = retrieval_pb2_grpc.RetrievalStub(channel).Search(request, timeout=args.timeout)
        except grpc.RpcError as e:
            return _fail(e)
    for n, hit in enumerate(reply.hits, start=1):
        text = " ".join(hit.text.split())
        print(f"{n}. {hit.source}  score {hit.score:.4f} (bm25 {hit.lexical_score:.2f}, cosine {hit.dense_score:.3f})")
        print(f"   {text[:200]}{'...' if len(text) > 200 else ''}")
    return 0


def cmd_ask(args) -> int:
    request = retrieval_pb2.AskRequest(question=args.question, top_k=args.top_k, max_new_tokens=args.max_tokens,
                                       mode=_MODES[args.mode])
    citations = []
    with open_channel(args.remote, args.tls_ca, args.api_key) as channel:
        try:
            for reply in retrieval_pb2_grpc.RetrievalStub(channel).Ask(request, timeout=args.timeout):
                if reply.text:
                    sys.stdout.write(reply.text)
                    sys.stdout.flush()
                if reply.citations:
                    citations = list(reply.citations)
        except grpc.RpcError as e:
            print(file=sys.stderr)
            return _fail(e)
    print()
    if citations:
        print("\nSources:")
        for c in citations:
            mark = "*" if c.cited else " "
            print(f" {mark}[{c.number}] {c.source}: {' '.join(c.snippet.split())[:120]}")
    return 0


def add_client_commands(sub, add_client_args) -> None:
    p = sub.add_parser("tokenize", help="tokenize TEXT with the Tokenizer service")
    p.add_argument("--remote", metavar="ADDRESS", default="127.0.0.1:50051", help="Tokenizer service (host:port)")
    p.add_argument("--add-special-tokens", action="store_true", help="prepend BOS if the model asks for it")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_client_args(p)
    p.add_argument("text", metavar="TEXT")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("ingest", help="add text/markdown files (or --pydoc) to the Retrieval service")
    p.add_argument("--remote", metavar="ADDRESS", default="127.0.0.1:50052", help="Retrieval service (host:port)")
    p.add_argument("--pydoc", action="store_true", help="the Python language reference (the default corpus)")
    add_client_args(p)
    p.add_argument("paths", metavar="PATH", nargs="*")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="search the ingested documents")
    p.add_argument("--remote", metavar="ADDRESS", default="127.0.0.1:50052", help="Retrieval service (host:port)")
    p.add_argument("--mode", choices=sorted(_MODES), default="hybrid")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--source", action="append", default=[], help="only this source (repeatable)")
    add_client_args(p)
    p.add_argument("query", metavar="QUERY")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("ask", help="answer a question from the documents, with citations")
    p.add_argument("--remote", metavar="ADDRESS", default="127.0.0.1:50052", help="Retrieval service (host:port)")
    p.add_argument("--mode", choices=sorted(_MODES), default="hybrid")
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=256)
    add_client_args(p)
    p.add_argument("question", metavar="QUESTION")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("info", help="the model and workers behind a Generation service")
    p.add_argument("--remote", metavar="ADDRESS", default="127.0.0.1:50053", help="Generation service (host:port)")
    add_client_args(p)
    p.set_defaults(func=cmd_info)
