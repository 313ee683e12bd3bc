"""Fault scenarios against a real stack: each returns a dict of what happened, so the same code is a
short test (tests/test_reliability.py asserts on it) and a longer benchmark (bench/faults.py
prints it as JSON).

- worker_sigkill: SIGKILL a worker holding jobs; every stream still completes once, no gap, no
  duplicate, and equals the same request re-run on the survivor.
- redis_outage: stop Redis under load and bring it back; no process dies, no call outlives its
  deadline, health says NOT_SERVING meanwhile, service resumes, documents survive (AOF).
- frontend_restart: SIGTERM or SIGKILL the Generation or Retrieval service mid-stream; a stream
  either finishes whole within the graceful stop's grace period or gets UNAVAILABLE, promptly, and
  the next call on the same channel works.
- unread_streams: streams opened and never read; the front-end's memory stays bounded (HTTP/2 flow
  control holds the producer back) and other clients are still served.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import grpc

from services.api import (
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
)
from services.client import health_status, open_channel
from services.common.keys import WORKER_GROUP, Keys
from services.common.redis_client import connect
from services.common.redis_server import RedisServer

from .load import LoadClients
from .mesh import Mesh, Proc

PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "Large language models are",
           "Write a haiku about autumn.", "List three prime numbers.", "The history of the city", "In 1969,"]


def greedy_request(prompt: str, max_new_tokens: int, **response) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        text=prompt, sampling=generation_pb2.SamplingParams(temperature=0.0),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=max_new_tokens, ignore_eos=True),
        response=generation_pb2.ResponseOptions(**response))


@dataclass
class StreamRecord:
    """What one streaming call delivered."""
    ids: list[int] = field(default_factory=list)
    text: str = ""
    last: object = None
    code: str = "OK"
    details: str = ""
    ended_at: float = 0.0

    @property
    def first_token(self) -> bool:
        return bool(self.ids) or bool(self.text)


def stream_in_thread(call, request, timeout_s: float, record: StreamRecord) -> threading.Thread:
    def consume():
        try:
            for message in call(request, timeout=timeout_s):
                record.ids.extend(getattr(message, "token_ids", []))
                record.text += message.text
                record.last = message
        except grpc.RpcError as e:
            record.code, record.details = e.code().name, e.details() or ""
        record.ended_at = time.monotonic()
    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return thread


def wait_until(predicate, timeout_s: float, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def pending_jobs_by_worker(redis_url: str, key_prefix: str) -> dict[str, int]:
    """{consumer: jobs it holds}, over the shared stream and every routed one."""
    keys = Keys(key_prefix)
    client = connect(redis_url)
    try:
        streams = [keys.jobs] + [keys.route(m.decode()) for m in client.smembers(keys.routes)]
        pending: dict[str, int] = {}
        for stream in streams:
            if not client.exists(stream):
                continue
            for c in client.xpending(stream, WORKER_GROUP).get("consumers") or []:
                pending[c["name"].decode()] = pending.get(c["name"].decode(), 0) + int(c["pending"])
    finally:
        client.close()
    return pending


def outstanding_jobs(generation_address: str, api_key: str | None = None) -> int:
    """Jobs queued or running (every accepted one should end up answered)."""
    with open_channel(generation_address, api_key=api_key) as ch:
        info = generation_pb2_grpc.GenerationStub(ch).ModelInfo(generation_pb2.ModelInfoRequest(), timeout=30)
    return info.queued_jobs


# ------------------------------------------------------------------------------ worker SIGKILL

def worker_sigkill(mesh: Mesh, procs: dict[str, Proc], streams: int = 6, max_new_tokens: int = 48) -> dict:
    """procs needs two workers (worker-1, worker-2). Kills the one holding more jobs mid-generation."""
    generation, tokenizer = procs["generation"], procs["tokenizer"]
    requests = [greedy_request(PROMPTS[i % len(PROMPTS)], max_new_tokens) for i in range(streams)]
    records = [StreamRecord() for _ in requests]
    with open_channel(generation.address) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        threads = [stream_in_thread(stub.GenerateStream, r, 180, rec) for r, rec in zip(requests, records)]
        all_started = wait_until(lambda: all(len(r.ids) >= 2 for r in records), 120)
        pending = pending_jobs_by_worker(mesh.redis_url, mesh.key_prefix)
        held = [(pending.get(procs[n].worker_key.removeprefix(Keys(mesh.key_prefix).worker("")), 0), n)
                for n in ("worker-1", "worker-2")]
        jobs_on_victim, victim_name = max(held)
        victim = procs[victim_name]
        killed_at = time.monotonic()
        victim.kill()
        for t in threads:
            t.join(240)
        # the reference: the same greedy requests, answered now by the surviving worker alone
        reference = [list(stub.Generate(r, timeout=180).token_ids) for r in requests]
    with open_channel(tokenizer.address) as ch:
        detok = tokenizer_pb2_grpc.TokenizerStub(ch).Detokenize
        texts = [detok(tokenizer_pb2.DetokenizeRequest(token_ids=r.ids, skip_special_tokens=True)).text
                 for r in records]
    complete = [rec.code == "OK" and rec.last is not None and rec.last.finish_reason == common_pb2.FINISH_REASON_LENGTH
                and len(rec.ids) == max_new_tokens == rec.last.usage.completion_tokens for rec in records]
    return {
        "streams": streams, "all_streaming_before_kill": all_started, "jobs_on_killed_worker": jobs_on_victim,
        "completed_once": sum(complete), "codes": [r.code for r in records],
        "text_equals_detokenized_ids": sum(t == r.text for t, r in zip(texts, records)),
        "ids_equal_rerun": sum(list(r.ids) == ref for r, ref in zip(records, reference)),
        "slowest_recovery_s": round(max(r.ended_at for r in records) - killed_at, 2),
        "processes_alive": {n: p.alive for n, p in procs.items() if p is not victim},
        # jobs of earlier scenarios may still be running; none may stay forever
        "jobs_drained_after": wait_until(lambda: outstanding_jobs(generation.address) == 0, 120, 0.2),
    }


# ------------------------------------------------------------------------------ Redis outage

def redis_outage(mesh: Mesh, procs: dict[str, Proc], server: RedisServer, clients: int = 4,
                 before_s: float = 8.0, outage_s: float = 4.0, after_s: float = 10.0,
                 call_timeout_s: float = 15.0) -> tuple[dict, RedisServer]:
    """server must persist (AOF). Returns (report, the restarted server)."""
    generation, retrieval = procs["generation"], procs["retrieval"]
    with open_channel(retrieval.address) as ch:
        documents_before = retrieval_pb2_grpc.RetrievalStub(ch).Stats(retrieval_pb2.StatsRequest()).documents
    addresses = {n: procs[n].address for n in ("tokenizer", "generation", "retrieval")}
    load = LoadClients(addresses, clients, before_s + outage_s + after_s, call_timeout_s=call_timeout_s,
                       max_new_tokens=(8, 24))
    thread = load.run_in_thread()
    time.sleep(before_s)
    stopped_at = time.monotonic()
    server.stop()
    not_serving = {name: wait_until(lambda p=procs[name]: health_status(p.address, timeout=1.0) == "NOT_SERVING", 10,
                                    0.1) for name in ("generation", "retrieval")}
    health_flip_s = round(time.monotonic() - stopped_at, 2)
    time.sleep(max(0.0, outage_s - (time.monotonic() - stopped_at)))
    server = RedisServer(port=server.port, password=server.password, maxmemory=server.maxmemory,
                         data_dir=server.data_dir, persist=True).start()
    returned_at = time.monotonic()
    serving_again = wait_until(lambda: all(health_status(procs[n].address, timeout=1.0) == "SERVING"
                                           for n in ("generation", "retrieval")), 30, 0.1)
    health_back_s = round(time.monotonic() - returned_at, 2)
    first_success_s = None
    with open_channel(generation.address) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        while time.monotonic() - returned_at < 60:
            try:
                stub.Generate(greedy_request("Hello", 2), timeout=10)
                first_success_s = round(time.monotonic() - returned_at, 2)
                break
            except grpc.RpcError:
                time.sleep(0.1)
    thread.join(before_s + outage_s + after_s + call_timeout_s + 60)
    stats = load.stats
    in_outage = [c for c in stats.calls if c.end >= stopped_at and c.start <= returned_at]
    with open_channel(retrieval.address) as ch:
        documents_after = retrieval_pb2_grpc.RetrievalStub(ch).Stats(retrieval_pb2.StatsRequest()).documents
    return {
        "clients": clients, "outage_s": outage_s, "calls": len(stats.calls), "status_codes": stats.codes(),
        "calls_overlapping_outage": len(in_outage),
        "overlapping_codes": sorted({c.code for c in in_outage}),
        "hung_calls": len(stats.hung()), "integrity_failures": sum(c.code in ("INCOMPLETE", "MISCOUNTED")
                                                                   for c in stats.calls),
        "not_serving_during_outage": not_serving, "health_flip_s": health_flip_s,
        "serving_again": serving_again, "health_back_after_return_s": health_back_s,
        "first_generate_ok_after_return_s": first_success_s,
        "documents_before": documents_before, "documents_after": documents_after,
        "processes_alive": {n: p.alive for n, p in procs.items()},
    }, server


# ------------------------------------------------------------------------------ front-end restart

def frontend_restart(mesh: Mesh, procs: dict[str, Proc], service: str, kill: bool, streams: int = 3) -> dict:
    """service: "generation" (GenerateStream) or "retrieval" (Ask). Restarts it mid-stream; procs
    is updated with the new process."""
    proc = procs[service]
    records = [StreamRecord() for _ in range(streams)]
    ch = open_channel(proc.address)
    try:
        if service == "generation":
            call = generation_pb2_grpc.GenerationStub(ch).GenerateStream
            requests = [greedy_request(PROMPTS[i], 200) for i in range(streams)]
        else:
            call = retrieval_pb2_grpc.RetrievalStub(ch).Ask
            requests = [retrieval_pb2.AskRequest(question="What does the with statement do?", max_new_tokens=200,
                                                 min_relevance=-1.0) for _ in range(streams)]
        threads = [stream_in_thread(call, r, 120, rec) for r, rec in zip(requests, records)]
        streaming = wait_until(lambda: all(r.first_token for r in records), 120)
        stopped_at = time.monotonic()
        procs[service] = fresh = mesh.restart(proc, wait=False, kill=kill)
        for t in threads:
            t.join(60)
        error_after_s = round(max(r.ended_at for r in records) - stopped_at, 2)
        mesh.wait_serving(fresh)
        back_s = round(time.monotonic() - stopped_at, 2)
        try:                                        # the same channel, as a long-lived client would
            if service == "generation":
                next_ok = len(generation_pb2_grpc.GenerationStub(ch).Generate(
                    greedy_request("Hello", 3), timeout=60).token_ids) == 3
            else:
                next_ok = bool(list(retrieval_pb2_grpc.RetrievalStub(ch).Ask(
                    retrieval_pb2.AskRequest(question="What does the with statement do?", max_new_tokens=3),
                    timeout=60)))
        except grpc.RpcError as e:
            next_ok = f"{e.code().name}: {e.details()}"
    finally:
        ch.close()
    return {"service": service, "signal": "SIGKILL" if kill else "SIGTERM", "streams": streams,
            "all_streaming_before": streaming, "codes": sorted({r.code for r in records}),
            # a graceful stop lets streams finish within its grace period: those must be whole
            "ok_streams_complete": all(r.last is not None and r.last.finish_reason for r in records
                                       if r.code == "OK"),
            "details": sorted({r.details[:80] for r in records}), "error_after_s": error_after_s,
            "serving_again_after_s": back_s, "next_call_ok": next_ok}


# ------------------------------------------------------------------------------ clients that never read

def unread_streams(mesh: Mesh, procs: dict[str, Proc], streams: int = 32, hold_s: float = 10.0,
                   max_new_tokens: int = 256, abandon_wait_s: float = 0.0) -> dict:
    """Open streams asking for 20 alternatives per token and never read them. With abandon_wait_s,
    then wait that long, still without reading or cancelling, for the workers to give the slots
    back on their own: once gRPC's flow-control window is full the front-end stops reading the
    job, its reader lease lapses and the worker cancels it (`abandoned_drained_s`, None if not)."""
    generation = procs["generation"]
    rss_before = generation.rss_mb()
    ch = open_channel(generation.address)
    stub = generation_pb2_grpc.GenerationStub(ch)
    calls = [stub.GenerateStream(greedy_request(PROMPTS[i % len(PROMPTS)], max_new_tokens, logprobs=True,
                                                top_logprobs=20), timeout=300) for i in range(streams)]
    time.sleep(hold_s)
    rss_held = generation.rss_mb()
    with open_channel(generation.address) as other:
        start = time.monotonic()
        served = len(generation_pb2_grpc.GenerationStub(other).Generate(greedy_request("Hello", 4),
                                                                         timeout=120).token_ids) == 4
        other_latency = round(time.monotonic() - start, 2)
    abandoned_drained_s = None
    if abandon_wait_s:
        start = time.monotonic()
        if wait_until(lambda: outstanding_jobs(generation.address) == 0, abandon_wait_s, 0.5):
            abandoned_drained_s = round(hold_s + time.monotonic() - start, 1)
    for call in calls:
        call.cancel()
    ch.close()
    drained = wait_until(lambda: outstanding_jobs(generation.address) == 0, 60, 0.2)
    return {"streams": streams, "hold_s": hold_s, "generation_rss_mb_before": rss_before,
            "generation_rss_mb_while_unread": rss_held,
            "rss_growth_mb": round((rss_held or 0) - (rss_before or 0), 1),
            "other_client_served": served, "other_client_latency_s": other_latency,
            "abandoned_drained_s": abandoned_drained_s,
            "jobs_drained_after_cancel": drained, "processes_alive": {n: p.alive for n, p in procs.items()}}
