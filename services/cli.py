"""The `meshllm` command line.

Local engine:   generate, chat
Models:         models list, models install NAME
The mesh:       up (the whole stack), serve SERVICE (tokenizer, retrieval, generation, openai), worker,
                health ADDRESS|URL
gRPC clients:   tokenize, info, generate --remote ADDRESS

Wherever a model is taken, --model (or MESHLLM_MODEL) is a name from `meshllm models list` or a
GGUF path; engine.model_registry.resolve_model turns it into a file or a one-line error.
"""
from __future__ import annotations

import argparse
import os
import sys

from engine.chat_template import ChatTemplateError
from engine.generation import GenerationError, RequestOptions
from engine.model_registry import DEFAULT_MODEL
from engine.sampling import SamplingError, SamplingParams
from engine.stopping import StoppingCriteria, StoppingError

from .common.config import (
    GenerationLimits,
    OpenAIConfig,
    QueueConfig,
    RedisConfig,
    RetrievalConfig,
    ServerConfig,
    WorkerConfig,
    add_arguments,
    from_sources,
)

USER_ERRORS = (GenerationError, SamplingError, StoppingError, ChatTemplateError, FileNotFoundError, ValueError)

DEFAULT_PORTS = {"tokenizer": 50051, "retrieval": 50052, "generation": 50053}
DEFAULT_METRICS_PORTS = {"tokenizer": 9101, "retrieval": 9102, "generation": 9103}
SERVICES = (*sorted(DEFAULT_PORTS), "openai")    # openai: the HTTP gateway (ports from OpenAIConfig)


# ---------------------------------------------------------------------------- local engine

MODEL_HELP = (f"a model name from `meshllm models list` or the path of a GGUF file "
              f"[env MESHLLM_MODEL; default {DEFAULT_MODEL}]")


def _model_choice(args) -> str:
    return args.model or os.environ.get("MESHLLM_MODEL") or DEFAULT_MODEL


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the kernels (default: all cores)")
    p.add_argument("--fast", action="store_true",
                   help="int8 activations in decode (as llama.cpp): faster, may flip near-tied tokens")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs: auto picks cuda when numba finds an NVIDIA GPU (default auto)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=40, help="0 = off (default 40)")
    g.add_argument("--top-p", type=float, default=0.95, help="1 = off (default 0.95)")
    g.add_argument("--min-p", type=float, default=0.05, help="0 = off (default 0.05)")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None, help="same seed, same output")
    g.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-turn tokens")


def _request_options(args) -> RequestOptions:
    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                              repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
                              frequency_penalty=args.frequency_penalty, seed=args.seed)
    stopping = StoppingCriteria(max_new_tokens=args.max_tokens, stop_sequences=tuple(args.stop),
                                ignore_eos=args.ignore_eos)
    return RequestOptions(sampling=sampling, stopping=stopping)


def _load_local(args):
    from engine.generation import Generator
    from engine.llm import LLM
    from engine.runtime import configure
    configure(args.threads)
    llm = LLM.load(_model_choice(args), int8_activations=args.fast, device=args.device)
    return llm, Generator(llm.model, llm.tokenizer)


def cmd_generate(args) -> int:
    options = _request_options(args)
    if args.remote:
        from .remote import stream_generate
        return stream_generate(args, options)
    llm, generator = _load_local(args)
    if args.chat:
        prompt_ids = llm.encode_chat([{"role": "user", "content": args.text}])
    else:
        prompt_ids = llm.encode(args.text)
    for event in generator.generate(prompt_ids, options):
        if event.text:
            sys.stdout.write(event.text)
            sys.stdout.flush()
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    options = _request_options(args)
    llm, generator = _load_local(args)
    llm.warm_up()
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print(f"meshllm chat with {llm.config.name or 'the model'} ({llm.config.num_layers} layers). "
          "/reset clears the conversation, /exit or Ctrl-D leaves.", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            messages = messages[:1] if args.system else []
            continue
        messages.append({"role": "user", "content": line})
        prompt_ids = llm.encode_chat(messages)
        if len(prompt_ids) + options.stopping.max_new_tokens >= generator.max_context:
            print("(the conversation no longer fits the context: /reset)", file=sys.stderr)
            messages.pop()
            continue
        reply = []
        sys.stdout.write("assistant> ")
        try:
            for event in generator.generate(prompt_ids, options):
                if event.text:
                    reply.append(event.text)
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})


# ---------------------------------------------------------------------------- the mesh

def cmd_worker(args) -> int:
    from .common.logs import configure_logging
    from .common.tracing import configure as configure_tracing
    from .worker.worker import run_worker
    configure_logging("worker")
    configure_tracing("worker")
    run_worker(from_sources(RedisConfig, args), from_sources(QueueConfig, args), from_sources(WorkerConfig, args))
    return 0


def cmd_serve(args) -> int:
    import asyncio

    from .common.logs import configure_logging
    from .common.tracing import configure as configure_tracing
    configure_logging(args.service)
    configure_tracing(args.service)
    model = _model_choice(args)
    if args.service == "openai":
        return _serve_openai(args, model)
    server = from_sources(ServerConfig, args, defaults={"port": DEFAULT_PORTS[args.service],
                                                        "metrics_port": DEFAULT_METRICS_PORTS[args.service]})
    limits = from_sources(GenerationLimits, args)
    if args.service == "tokenizer":
        from .tokenizer.service import run
        asyncio.run(run(server, limits, model))
    elif args.service == "generation":
        from .generation.service import run
        asyncio.run(run(server, limits, from_sources(RedisConfig, args), from_sources(QueueConfig, args), model))
    else:
        from .retrieval.service import run
        asyncio.run(run(server, from_sources(RedisConfig, args), from_sources(RetrievalConfig, args), model))
    return 0


def _serve_openai(args, model: str) -> int:
    import asyncio

    from engine.model_registry import CATALOGUE

    from .openai_api.app import run
    openai = from_sources(OpenAIConfig, args)
    if not openai.served_model_name and model in CATALOGUE:     # the model's catalogue name is its API id
        openai = from_sources(OpenAIConfig, args, served_model_name=model)
    # MESHLLM_PORT / MESHLLM_METRICS_PORT name a gRPC service's ports in an environment the services
    # share (`meshllm up`, compose): the gateway's are --port or MESHLLM_OPENAI_PORT and their twins
    env = {k: v for k, v in os.environ.items() if k not in ("MESHLLM_PORT", "MESHLLM_METRICS_PORT")}
    server = from_sources(ServerConfig, args, env=env, defaults={"port": openai.openai_port,
                                                                 "metrics_port": openai.openai_metrics_port})
    asyncio.run(run(server, openai))
    return 0


def cmd_up(args) -> int:
    from .launcher import up
    return up(args)


def cmd_health(args) -> int:
    if args.heartbeat_file:                          # a worker: is its heartbeat recent?
        import time
        try:
            age = time.time() - os.path.getmtime(args.heartbeat_file)
        except OSError:
            print("NO_HEARTBEAT")
            return 1
        print("SERVING" if age <= args.max_age else f"STALE ({age:.0f}s)")
        return 0 if age <= args.max_age else 1
    from .client import health_status, http_health_status
    if args.address.startswith(("http://", "https://")):   # the OpenAI gateway's /health
        status = http_health_status(args.address, args.timeout)
    else:
        status = health_status(args.address, args.service, args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


# ---------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshllm",
                                     description="meshllm: a Llama-family LLM serving mesh on numba kernels")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="stream a continuation of TEXT (or, with --chat, an answer to it)")
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--chat", action="store_true", help="treat TEXT as one user message in the model's chat template")
    p.add_argument("--remote", metavar="ADDRESS", help="generate through a Generation service (host:port)")
    _add_client_args(p)
    p.add_argument("text", metavar="TEXT")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="an interactive chat with the model in this terminal")
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--system", default=None, help="a system message")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("worker", help="a generation worker: takes jobs from Redis and runs them")
    add_arguments(p, WorkerConfig, "worker")
    add_arguments(p, RedisConfig, "redis")
    add_arguments(p, QueueConfig, "job queue")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("serve", help="run one gRPC service, or the OpenAI-compatible HTTP gateway (openai)")
    p.add_argument("service", choices=SERVICES)
    p.add_argument("--model", default=None, help=MODEL_HELP)
    add_arguments(p, ServerConfig, "server")
    add_arguments(p, GenerationLimits, "limits")
    add_arguments(p, RetrievalConfig, "retrieval")
    add_arguments(p, RedisConfig, "redis")
    add_arguments(p, QueueConfig, "job queue")
    add_arguments(p, OpenAIConfig, "openai gateway")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("up", help="run the whole stack locally: Redis, the services and workers")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--workers", type=int, default=1, help="generation workers (default 1)")
    p.add_argument("--fast", action="store_true", help="workers use int8 activations in decode")
    p.add_argument("--host", default="127.0.0.1", help="address the services listen on")
    p.add_argument("--api-keys", default=None, help="comma-separated API keys the services require")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for every health check")
    p.add_argument("--ephemeral", action="store_true", help="a throwaway local Redis (no data kept)")
    p.add_argument("--no-corpus", action="store_true", help="do not ingest the default corpus")
    p.add_argument("--no-openai", action="store_true",
                   help="do not start the OpenAI-compatible HTTP gateway (port MESHLLM_OPENAI_PORT, default 8000)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("health", help="check a service's grpc.health.v1 status (or the OpenAI gateway's "
                                      "/health URL); exit 0 if SERVING")
    p.add_argument("address", nargs="?", default="127.0.0.1:50053",
                   help="host:port, or an http(s):// URL such as http://127.0.0.1:8000/health")
    p.add_argument("--service", default="", help="service name (default: the whole server)")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--heartbeat-file", default=None, help="check a worker instead: its heartbeat file")
    p.add_argument("--max-age", type=float, default=15.0, help="seconds a worker heartbeat stays fresh")
    p.set_defaults(func=cmd_health)

    from .models_command import add_models_command
    from .remote import add_client_commands
    add_models_command(sub)
    add_client_commands(sub, _add_client_args)
    return parser


def _add_client_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--api-key", default=None, help="API key (default: $MESHLLM_API_KEY)")
    g.add_argument("--tls-ca", default=None, help="PEM of the CA that signed the server's certificate")
    g.add_argument("--timeout", type=float, default=None, help="deadline of the call, in seconds")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"meshllm: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
