"""Load, faults and recovery over real gRPC against real processes (harness/load.py, harness/faults.py):
the short versions of the runs in docs/reliability.md."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from harness import faults
from harness.load import LoadClients, ingest_ask_corpus
from harness.mesh import Mesh
from services.api import generation_pb2_grpc
from services.client import open_channel
from services.common.redis_server import RedisServer

ADDRESSED = ("tokenizer", "generation", "retrieval")


@pytest.fixture(scope="module")
def stack(redis_server):
    """Redis, the three services and two workers; the Ask topics ingested."""
    mesh = Mesh(redis_server.url, f"rel{uuid.uuid4().hex[:6]}:")
    try:
        procs = mesh.stack(workers=2)
        ingest_ask_corpus(procs["retrieval"].address)
        yield mesh, procs
    finally:
        mesh.stop()


def test_load_is_served_without_errors_or_lost_jobs(stack):
    mesh, procs = stack
    load = LoadClients({n: procs[n].address for n in ADDRESSED}, clients=6, duration_s=20, max_new_tokens=(8, 32))
    stats = asyncio.run(load.run())
    summary = stats.summary(load.elapsed_s)
    assert summary["calls"] >= 12 and not stats.errors(), summary
    assert summary["hung_calls"] == 0 and summary["generated_tokens"] > 0
    assert faults.wait_until(lambda: faults.outstanding_jobs(procs["generation"].address) == 0, 30, 0.2)
    for proc in procs.values():
        mesh.check(proc)


def test_a_streams_that_are_never_read_do_not_grow_memory(stack):
    mesh, procs = stack
    report = faults.unread_streams(mesh, procs, streams=32, hold_s=8)
    assert report["rss_growth_mb"] < 64, report
    assert report["other_client_served"] and report["jobs_drained_after_cancel"], report
    assert all(report["processes_alive"].values()), report


@pytest.mark.parametrize("service", ["generation", "retrieval"])
@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_a_front_end_restarted_mid_stream_fails_cleanly_and_serves_again(stack, service, kill):
    mesh, procs = stack
    report = faults.frontend_restart(mesh, procs, service, kill)
    assert report["all_streaming_before"], report
    # SIGTERM drains for up to 5 s (streams that finish by then end OK and whole); SIGKILL cuts at once
    assert set(report["codes"]) <= ({"UNAVAILABLE"} if kill else {"OK", "UNAVAILABLE"}), report
    assert report["ok_streams_complete"], report
    assert report["error_after_s"] < (2 if kill else 8) and report["next_call_ok"] is True, report


def test_sigkill_a_worker_holding_jobs_every_stream_completes_exactly_once(stack):
    """Last in this module: it leaves one worker."""
    mesh, procs = stack
    report = faults.worker_sigkill(mesh, procs, streams=6, max_new_tokens=40)
    assert report["all_streaming_before_kill"] and report["jobs_on_killed_worker"] >= 1, report
    assert report["completed_once"] == report["streams"], report
    assert report["text_equals_detokenized_ids"] == report["streams"], report
    assert report["ids_equal_rerun"] == report["streams"], report
    assert all(report["processes_alive"].values()) and report["jobs_drained_after"], report


def test_redis_stopped_and_restarted_under_load(tmp_path):
    server = RedisServer(data_dir=str(tmp_path), persist=True).start()
    mesh = Mesh(server.url, "outage:")
    try:
        procs = mesh.stack(workers=1)
        ingest_ask_corpus(procs["retrieval"].address)
        report, server = faults.redis_outage(mesh, procs, server, clients=4, before_s=6, outage_s=3, after_s=8)
        assert all(report["processes_alive"].values()), report
        assert report["hung_calls"] == 0 and report["integrity_failures"] == 0, report
        assert report["calls_overlapping_outage"] >= 1, report
        assert set(report["overlapping_codes"]) <= {"OK", "UNAVAILABLE"}, report
        assert all(report["not_serving_during_outage"].values()) and report["serving_again"], report
        assert report["first_generate_ok_after_return_s"] is not None, report
        assert report["first_generate_ok_after_return_s"] < 10, report
        assert report["documents_after"] == report["documents_before"] > 0, report
    finally:
        mesh.stop()
        server.stop()


def test_a_worker_recreates_the_job_group_when_redis_returns_empty(tmp_path):
    """Without persistence Redis comes back with no stream and no consumer group: the worker that
    was running makes them again and serves (NOGROUP used to end its loop)."""
    server = RedisServer(data_dir=str(tmp_path)).start()
    mesh = Mesh(server.url, "empty:")
    try:
        generation = mesh.service("generation")
        worker = mesh.worker()
        server.stop()
        mesh.wait_serving(generation, timeout=10, status="NOT_SERVING")
        server = RedisServer(port=server.port, data_dir=str(tmp_path)).start()
        mesh.wait_serving(generation, timeout=30)
        with open_channel(generation.address) as ch:
            reply = generation_pb2_grpc.GenerationStub(ch).Generate(faults.greedy_request("Hello", 3), timeout=60)
        assert len(reply.token_ids) == 3
        mesh.check(worker)
        assert "consumer group is gone" in worker.log_tail(50_000)
    finally:
        mesh.stop()
        server.stop()
