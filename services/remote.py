"""Client commands that talk to running services: tokenize, info, generate --remote."""
from __future__ import annotations

import json
import sys

import grpc

from engine.sequence import RequestOptions

from .api import common_pb2, generation_pb2, generation_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc
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


def add_client_commands(sub, add_client_args) -> None:
    p = sub.add_parser("tokenize", help="tokenize TEXT with the Tokenizer service")
    p.add_argument("--remote", metavar="ADDRESS", default="127.0.0.1:50051", help="Tokenizer service (host:port)")
    p.add_argument("--add-special-tokens", action="store_true", help="prepend BOS if the model asks for it")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_client_args(p)
    p.add_argument("text", metavar="TEXT")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("info", help="the model and workers behind a Generation service")
    p.add_argument("--remote", metavar="ADDRESS", default="127.0.0.1:50053", help="Generation service (host:port)")
    add_client_args(p)
    p.set_defaults(func=cmd_info)
