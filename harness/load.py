"""Load: N concurrent asyncio clients streaming a mix of Generate, Ask and Tokenize calls.

Every call is recorded (method, status code, start, end, its deadline, tokens), so a fault scenario
can ask what happened to the calls in flight at a given moment. A stream that ends without its
final message (finish reason and usage) counts as INCOMPLETE, and one whose usage disagrees with
the tokens it delivered as MISCOUNTED: both are lost work, never OK.
"""
from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import grpc
import numpy as np

from services.api import (
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
)
from services.client import open_channel_async

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "Large language models are",
           "Write a haiku about autumn.", "List three prime numbers.", "Explain what a context manager is.",
           "The history of the city goes back"]
QUESTIONS = ["What does the with statement do?", "How do I define a generator function?",
             "What does the global statement declare?", "How do I raise an exception?",
             "What does the assert statement do?", "How does a for loop work?"]
# the pydoc topics the Ask questions are about (services.retrieval.corpus)
ASK_TOPICS = ("with", "yield", "global", "raise", "assert", "for", "try", "lambda", "import", "class")
DEFAULT_WEIGHTS = {"generate": 0.6, "ask": 0.2, "tokenize": 0.2}


@dataclass
class Call:
    method: str
    code: str
    start: float                 # time.monotonic()
    end: float
    timeout: float
    tokens: int = 0


@dataclass
class LoadStats:
    calls: list[Call] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)

    def codes(self) -> dict[str, dict[str, int]]:
        by_method: dict[str, Counter] = defaultdict(Counter)
        for call in self.calls:
            by_method[call.method][call.code] += 1
        return {method: dict(counter) for method, counter in sorted(by_method.items())}

    def errors(self) -> list[Call]:
        return [c for c in self.calls if c.code != "OK"]

    def hung(self, slack_s: float = 2.0) -> list[Call]:
        """Calls that outlived their deadline by more than slack_s."""
        return [c for c in self.calls if c.end - c.start > c.timeout + slack_s]

    def summary(self, seconds: float) -> dict:
        def pct(values, q):
            return round(float(np.percentile(values, q)), 4) if values else None
        tokens = sum(c.tokens for c in self.calls)
        return {
            "calls": len(self.calls), "status_codes": self.codes(), "errors": len(self.errors()),
            "hung_calls": len(self.hung()),
            "ttft_s_p50": pct(self.ttft, 50), "ttft_s_p99": pct(self.ttft, 99),
            "itl_s_p50": pct(self.itl, 50), "itl_s_p99": pct(self.itl, 99),
            "generated_tokens": tokens, "generated_tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
        }


class LoadClients:
    """The clients of one load run, against {"tokenizer", "generation", "retrieval"} addresses."""

    def __init__(self, addresses: dict[str, str], clients: int, duration_s: float,
                 weights: dict[str, float] | None = None, call_timeout_s: float = 120.0,
                 max_new_tokens: tuple[int, int] = (16, 64), api_key: str | None = None):
        self.addresses = addresses
        self.clients = clients
        self.duration_s = duration_s
        self.weights = {k: v for k, v in (weights or DEFAULT_WEIGHTS).items() if v > 0}
        self.call_timeout_s = call_timeout_s
        self.max_new_tokens = max_new_tokens
        self.api_key = api_key
        self.stats = LoadStats()
        self.elapsed_s = 0.0

    async def run(self) -> LoadStats:
        channels = {name: open_channel_async(address, api_key=self.api_key)
                    for name, address in self.addresses.items()}
        stubs = {"tokenize": tokenizer_pb2_grpc.TokenizerStub(channels["tokenizer"]),
                 "generate": generation_pb2_grpc.GenerationStub(channels["generation"]),
                 "ask": retrieval_pb2_grpc.RetrievalStub(channels["retrieval"])}
        started = time.monotonic()
        deadline = started + self.duration_s
        try:
            await asyncio.gather(*(self._client(i, stubs, deadline) for i in range(self.clients)))
        finally:
            self.elapsed_s = time.monotonic() - started
            for ch in channels.values():
                await ch.close()
        return self.stats

    def run_in_thread(self) -> threading.Thread:
        """Start the run on its own thread and event loop (join it, then read .stats)."""
        thread = threading.Thread(target=lambda: asyncio.run(self.run()), name="load", daemon=True)
        thread.start()
        return thread

    async def _client(self, client_id: int, stubs: dict, deadline: float) -> None:
        rng = random.Random(client_id)
        methods, weights = zip(*self.weights.items())
        while time.monotonic() < deadline:
            method = rng.choices(methods, weights)[0]
            start = time.monotonic()
            call = Call(method, "OK", start, start, self.call_timeout_s)
            try:
                if method == "tokenize":
                    await stubs[method].Tokenize(tokenizer_pb2.TokenizeRequest(text=rng.choice(PROMPTS) * 3),
                                                 timeout=self.call_timeout_s)
                elif method == "generate":
                    call.code = await self._generate(stubs[method], rng, call)
                else:
                    call.code = await self._ask(stubs[method], rng, call)
            except grpc.aio.AioRpcError as e:
                call.code = e.code().name
                if call.code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED"):   # back off like a real client
                    await asyncio.sleep(rng.uniform(0.1, 0.5))
            call.end = time.monotonic()
            self.stats.calls.append(call)

    async def _timed(self, stream, call: Call, count) -> object:
        """Iterate a stream recording time to first token and inter-token gaps; the last message."""
        start = last = time.perf_counter()
        message = None
        async for message in stream:
            n = count(message)
            if not n:
                continue
            now = time.perf_counter()
            (self.stats.ttft.append(now - start) if call.tokens == 0 else self.stats.itl.append(now - last))
            last = now
            call.tokens += n
        return message

    async def _generate(self, stub, rng: random.Random, call: Call) -> str:
        request = generation_pb2.GenerateRequest(
            chat=generation_pb2.Chat(messages=[common_pb2.ChatMessage(role="user", content=rng.choice(PROMPTS))]),
            sampling=generation_pb2.SamplingParams(temperature=0.8, top_p=0.95, seed=rng.randrange(2**31)),
            stopping=generation_pb2.StoppingCriteria(max_new_tokens=rng.randint(*self.max_new_tokens)))
        last = await self._timed(stub.GenerateStream(request, timeout=self.call_timeout_s), call,
                                 lambda m: len(m.token_ids))
        if last is None or not last.finish_reason:
            return "INCOMPLETE"
        return "OK" if last.usage.completion_tokens == call.tokens else "MISCOUNTED"

    async def _ask(self, stub, rng: random.Random, call: Call) -> str:
        request = retrieval_pb2.AskRequest(question=rng.choice(QUESTIONS), max_new_tokens=self.max_new_tokens[0])
        last = await self._timed(stub.Ask(request, timeout=self.call_timeout_s), call, lambda m: int(bool(m.text)))
        return "OK" if last is not None and last.finish_reason else "INCOMPLETE"


def ingest_ask_corpus(retrieval_address: str, api_key: str | None = None) -> int:
    """The pydoc topics the Ask questions are about; returns the documents ingested."""
    from services.client import open_channel
    from services.retrieval.corpus import pydoc_topics
    documents = [retrieval_pb2.Document(id=i, text=t, source=s) for i, t, s, _ in pydoc_topics() if s in ASK_TOPICS]
    with open_channel(retrieval_address, api_key=api_key) as ch:
        retrieval_pb2_grpc.RetrievalStub(ch).Ingest(retrieval_pb2.IngestRequest(documents=documents), timeout=600)
    return len(documents)
