"""KV-aware routing: the router's scoring (pure logic), its hashes against the engine's, and real
meshes on the test's Redis (single and cluster): a repeated prompt goes to the worker that holds
it, and the jobs routed to a worker that dies are served once by another."""
import signal
import time
import urllib.request
import uuid

import pytest

from engine.block_pool import BlockPool
from engine.llm_engine import EngineConfig, LLMEngine
from engine.sampling import SamplingParams
from engine.sequence import RequestOptions
from engine.stopping import StoppingCriteria
from harness.faults import greedy_request
from harness.mesh import Mesh, channel
from services.api import generation_pb2_grpc
from services.common.config import QueueConfig
from services.common.jobs import JobQueue, JobSpec, Route
from services.common.keys import Keys
from services.generation.router import Candidate, choose, leading_hits, prompt_block_hashes

GREEDY = SamplingParams(temperature=0.0)
LONG = ("The history of the city goes back many centuries, to a small settlement on the river, where "
        "traders met to exchange grain, salt and cloth. ") * 8


# ---------------------------------------------------------------------------- scoring

def test_leading_hits_stop_at_the_first_missing_block():
    assert leading_hits([1, 1, 0, 1]) == 2
    assert leading_hits([0, 1, 1]) == 0
    assert leading_hits([]) == 0


def test_the_cheapest_worker_wins_only_when_it_holds_part_of_the_prompt():
    holder = Candidate("a", cached_blocks=10, load=1, cost=2 + 4 * 1)
    idle = Candidate("b", cached_blocks=0, load=0, cost=12)
    assert choose([holder, idle]).worker_id == "a"
    busy_holder = Candidate("a", cached_blocks=10, load=5, cost=2 + 4 * 5)
    assert choose([busy_holder, idle]) is None          # the idle one is cheaper: the shared stream
    assert choose([Candidate("a", 0, 0, 12), Candidate("b", 0, 0, 12)]) is None
    assert choose([]) is None


def test_the_routers_hashes_are_the_engines(llm):
    ids = llm.encode(LONG)
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=32))
    engine.add_request("r", ids, RequestOptions(GREEDY, StoppingCriteria(1)))
    while engine.has_work():
        engine.step()
    published, _ = engine.pool.changes.take()
    hashes = prompt_block_hashes(ids, llm.model.fingerprint, engine.pool.block_size)
    assert len(hashes) == (len(ids) - 1) // 16 and set(hashes) <= set(published)
    engine.close()


def test_the_pool_reports_cached_and_evicted_blocks():
    pool = BlockPool(2, 16)
    a, b = pool.allocate(2)
    pool.cache(a, b"A" * 16, [1] * 16)
    pool.cache(b, b"B" * 16, [2] * 16)
    assert sorted(pool.changes.take()[0]) == [b"A" * 16, b"B" * 16]
    pool.free([a, b])
    pool.allocate(1)                                       # reuses (evicts) one of them
    added, removed = pool.changes.take()
    assert added == [] and len(removed) == 1 and removed[0] in (b"A" * 16, b"B" * 16)


# ---------------------------------------------------------------------------- real meshes

@pytest.fixture(scope="module")
def two_workers(redis_server):
    """Generation and two workers that do not share KV through Redis: a prefix hit can only come
    from the worker's own cache, so hits show where jobs went."""
    mesh = Mesh(redis_server.url, f"route{uuid.uuid4().hex[:6]}:", env_extra={"MESHLLM_SHARE_KV": "false"})
    mesh.generation = mesh.service("generation")
    mesh.workers = [mesh.worker(), mesh.worker()]
    yield mesh
    mesh.stop()


def test_a_repeated_prompt_goes_to_the_worker_that_holds_it(two_workers, llm):
    ids = llm.encode(LONG)
    cacheable = (len(ids) - 1) // 16 * 16
    with channel(two_workers.generation) as ch:
        gen = generation_pb2_grpc.GenerationStub(ch)
        first = gen.Generate(greedy_request(LONG, 4), timeout=120)
        assert first.usage.cached_prompt_tokens == 0
        time.sleep(1.0)                                  # a heartbeat publishes the worker's blocks
        for _ in range(4):
            again = gen.Generate(greedy_request(LONG, 4), timeout=120)
            assert again.usage.cached_prompt_tokens == cacheable, "routed to a worker without the prefix"
            assert list(again.token_ids) == list(first.token_ids)
    text = urllib.request.urlopen(f"http://127.0.0.1:{two_workers.generation.metrics_port}/metrics").read().decode()
    routed = [line for line in text.splitlines() if line.startswith('meshllm_routed_jobs_total{target="worker"}')]
    assert routed and float(routed[0].split()[-1]) >= 4, text


@pytest.fixture
def queue(redis_client, key_prefix):
    q = JobQueue(redis_client, Keys(key_prefix), QueueConfig(heartbeat_ms=300, claim_idle_ms=1500,
                                                             reader_lease_ms=120_000))
    q.ensure_group()
    return q


def raw_events(queue, job_id):
    from services.common.jobs import OutputEvent
    return [OutputEvent.parse(raw) for _, raw in queue.redis.xrange(queue.keys.job_output(job_id))]


def test_jobs_routed_to_a_worker_that_died_before_reading_them_are_served(queue, spawn_worker, llm):
    keys = queue.keys
    queue.ensure_group("ghost")                           # a worker that registered, then died
    queue.redis.hset(keys.worker("ghost"), mapping={"running": 0})
    queue.redis.pexpire(keys.worker("ghost"), 400)
    spec = JobSpec.from_options(uuid.uuid4().hex, llm.encode("Once upon a time"),
                                RequestOptions(GREEDY, StoppingCriteria(8, ignore_eos=True)))
    entry = queue.submit(spec, Route("ghost"))
    assert entry.stream == keys.route("ghost")
    time.sleep(0.5)                                      # its heartbeat lapses
    late = JobSpec.from_options(uuid.uuid4().hex, [1, 2, 3], RequestOptions())
    assert queue.submit(late, Route("ghost")).stream == keys.jobs    # nothing new for the dead
    spawn_worker()
    events = list(queue.events(spec.job_id, timeout_s=60))
    assert len([e for e in events if e.token_id is not None]) == 8
    list(queue.events(late.job_id, timeout_s=60))
    deadline = time.monotonic() + 10
    while queue.redis.sismember(keys.routes, "ghost"):   # its empty stream is forgotten
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert queue.outstanding() == 0


def test_sigkill_a_worker_holding_routed_jobs_every_job_completes_once(queue, spawn_worker, llm):
    options = RequestOptions(GREEDY, StoppingCriteria(40, ignore_eos=True))
    a = spawn_worker()
    victim = a.worker_key.rsplit(":", 1)[1]
    specs = [JobSpec.from_options(uuid.uuid4().hex, llm.encode(p), options)
             for p in ("Once upon a time", "The capital of France is")]
    for spec in specs:
        assert queue.submit(spec, Route(victim)).stream == queue.keys.route(victim)
    deadline = time.monotonic() + 60
    while not all(len(raw_events(queue, s.job_id)) >= 3 for s in specs):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    spawn_worker()
    a.send_signal(signal.SIGKILL)
    a.wait()
    for spec in specs:
        events = list(queue.events(spec.job_id, timeout_s=90))
        assert len(events) == 40
        written = raw_events(queue, spec.job_id)
        assert [e.index for e in written] == list(range(40)) and sum(e.is_final for e in written) == 1
    assert queue.outstanding() == 0
