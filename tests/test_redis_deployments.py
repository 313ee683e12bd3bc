"""Redis as users deploy it beyond one server: REDIS_URL's forms, a Redis Cluster losing a primary
under load (no accepted job lost), a Sentinel-managed primary failing over, and an index written
with the old (untagged) keys surviving the upgrade. Every other Redis-dependent test also runs on
a cluster (conftest.redis_server)."""
import asyncio
import subprocess
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from harness.faults import greedy_request
from harness.mesh import Mesh, channel
from services.api import generation_pb2_grpc
from services.common.config import ConfigError, QueueConfig, RedisConfig
from services.common.jobs import JobQueue, JobSpec
from services.common.keys import Keys
from services.common.redis_client import connect, parse_url, redacted
from services.common.redis_server import LocalRedisCluster, RedisServer, free_port, redis_server_binary

# ---------------------------------------------------------------------------- REDIS_URL


def test_redis_urls_name_a_server_a_cluster_or_a_sentinel_service():
    assert parse_url("redis://:pw@h:6379/2").kind == "single"
    cluster = parse_url("redis+cluster://:s%40cret@a:7000,b:7001")
    assert cluster.kind == "cluster" and cluster.hosts == (("a", 7000), ("b", 7001)) and cluster.password == "s@cret"
    sentinel = parse_url("rediss+sentinel://user:pw@s1:26379,s2/mymaster/3")
    assert (sentinel.kind, sentinel.service_name, sentinel.db, sentinel.tls) == ("sentinel", "mymaster", 3, True)
    assert sentinel.hosts == (("s1", 26379), ("s2", 26379)) and sentinel.username == "user"
    assert redacted("redis+cluster://:pw@a:1,b:2") == "redis+cluster://:***@a:1,b:2"


@pytest.mark.parametrize("url, reason", [("http://h:1", "use one of"), ("redis+sentinel://h:1", "Sentinel service"),
                                         ("redis+cluster://a:x", "not host:port"),
                                         ("redis+cluster://a:1/2", "only database 0")])
def test_bad_redis_urls_say_why(url, reason):
    with pytest.raises(ConfigError, match=reason):
        RedisConfig(redis_url=url)


def test_a_key_prefix_with_braces_is_refused():
    with pytest.raises(ConfigError, match="braces"):
        RedisConfig(key_prefix="a{b}:")


def test_keys_that_one_script_touches_share_a_slot():
    from redis.crc import key_slot
    keys = Keys("meshllm:")
    queue = [keys.jobs, keys.outstanding, keys.routes, keys.route("w"), keys.worker("w"), keys.worker_blocks("w"),
             keys.job_output("j"), keys.job_owner("j"), keys.job_cancel("j"), keys.job_reader("j"),
             keys.job_request("j")]
    docs = [keys.documents, keys.document("d"), keys.chunk("c"), keys.chunks, keys.content("h"),
            keys.documents_version]
    assert len({key_slot(k.encode()) for k in queue}) == 1
    assert len({key_slot(k.encode()) for k in docs}) == 1
    blocks = {key_slot(keys.kv_block("fp", bytes([i]) * 16).encode()) for i in range(64)}
    assert len(blocks) > 32                              # KV blocks spread over the cluster


# ---------------------------------------------------------------------------- a cluster loses a primary

def test_killing_the_queues_primary_under_load_loses_no_accepted_job():
    cluster = LocalRedisCluster(password="cl-pw").start()
    mesh = Mesh(cluster.url, f"fo{uuid.uuid4().hex[:6]}:")
    try:
        generation = mesh.service("generation")
        mesh.worker()
        results: dict[int, tuple[str, int]] = {}
        progress = [0] * 4

        def stream(i):
            tokens = 0
            try:
                with channel(generation) as ch:
                    for reply in generation_pb2_grpc.GenerationStub(ch).GenerateStream(
                            greedy_request(["Once upon a time", "def f(x):", "The river", "In 1969,"][i], 60),
                            timeout=180):
                        tokens += len(reply.token_ids)
                        progress[i] = tokens
                results[i] = ("OK", tokens)
            except grpc.RpcError as e:
                results[i] = (e.code().name, tokens)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while min(progress) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        victim = cluster.kill_primary_of(Keys(mesh.key_prefix).jobs)
        assert victim.process.poll() is not None
        for t in threads:
            t.join(200)
        assert results == {i: ("OK", 60) for i in range(4)}, (results, generation.log_tail(2000))
        queue = JobQueue(connect(cluster.url), Keys(mesh.key_prefix), QueueConfig())
        deadline = time.monotonic() + 10
        while queue.outstanding():
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        mesh.stop()
        cluster.stop()


# ---------------------------------------------------------------------------- Sentinel

class LocalSentinel:
    """A primary, its replica and one Sentinel watching them (quorum 1), on loopback ports."""

    def __init__(self, tmp: Path, password: str):
        self.password = password
        self.primary = RedisServer(password=password).start()
        self.replica = RedisServer(password=password, extra_args=(
            "--replicaof", "127.0.0.1", str(self.primary.port))).start()
        self.port = free_port()
        conf = tmp / "sentinel.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\nrequirepass {password}\n"
                        f"sentinel monitor mymaster 127.0.0.1 {self.primary.port} 1\n"
                        f"sentinel auth-pass mymaster {password}\n"
                        "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n")
        self.process = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        return f"redis+sentinel://:{self.password}@127.0.0.1:{self.port}/mymaster"

    def primary_port(self) -> int:
        import redis
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=2)
        return int(client.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")[1])

    def stop(self):
        self.process.terminate()
        self.process.wait(10)
        self.replica.stop()
        self.primary.stop()


def test_a_sentinel_managed_primary_fails_over_and_keeps_accepted_jobs(tmp_path):
    sentinel = LocalSentinel(tmp_path, "sn-pw")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if sentinel.primary_port() == sentinel.primary.port:
                    break
            except Exception:                             # noqa: BLE001 - the Sentinel is starting
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        client = connect(sentinel.url, socket_timeout=2)
        queue = JobQueue(client, Keys("sn:"), QueueConfig(), replicated=True)
        queue.ensure_group()
        before = queue.submit(JobSpec(uuid.uuid4().hex, [1, 2, 3]))
        assert queue.outstanding() == 1
        sentinel.primary.kill()
        deadline = time.monotonic() + 30
        while sentinel.primary_port() != sentinel.replica.port:
            assert time.monotonic() < deadline, "the Sentinel did not promote the replica"
            time.sleep(0.2)
        deadline = time.monotonic() + 20
        while True:
            try:
                after = queue.submit(JobSpec(uuid.uuid4().hex, [4, 5]))
                break
            except Exception:                             # noqa: BLE001 - the client finds the new primary
                assert time.monotonic() < deadline
                time.sleep(0.2)
        queue.ensure_group("w")
        taken = queue.read_new("w", 10, 100)
        assert [e.entry_id for e, _ in taken] == [before.entry_id, after.entry_id]
        assert queue.outstanding() == 2

        async def through_asyncio():
            async_client = connect(sentinel.url, asyncio=True, socket_timeout=2)
            try:
                return int(await async_client.get(Keys("sn:").outstanding))
            finally:
                await async_client.aclose()
        assert asyncio.run(through_asyncio()) == 2
    finally:
        sentinel.stop()


# ---------------------------------------------------------------------------- upgrading the key layout

def test_an_index_written_with_the_untagged_keys_is_renamed_at_start(redis_server):
    if redis_server.kind != "single":
        pytest.skip("the old layout never ran on a cluster")
    import numpy as np

    from services.retrieval.store import DocumentStore, LegacyDocumentKeys
    prefix = f"up{uuid.uuid4().hex[:6]}:"
    old = LegacyDocumentKeys(prefix)
    raw = connect(redis_server.url)
    embedding = np.ones(4, np.float32) / 2
    raw.hset(old.chunk("c1"), mapping={"doc_id": "d1", "index": 0, "source": "s", "start": 0, "end": 5,
                                       "text": "hello", "context": "", "embedding": embedding.tobytes()})
    raw.sadd(old.chunks, "c1")
    raw.hset(old.document("d1"), mapping={"source": "s", "metadata": "{}", "content_hash": "h1",
                                          "chunk_ids": '["c1"]', "ingested_at": "1"})
    raw.sadd(old.documents, "d1")
    raw.set(old.content("h1"), "d1")
    raw.set(old.documents_version, 7)

    async def migrate():
        client = connect(redis_server.url, asyncio=True)
        store = DocumentStore(client, Keys(prefix))
        try:
            moved = await store.migrate_legacy_keys()
            again = await store.migrate_legacy_keys()
            version, records = await store.load_all(4)
            return moved, again, version, records, await store.holder_of("h1")
        finally:
            await client.aclose()
    moved, again, version, records, holder = asyncio.run(migrate())
    assert (moved, again, version, holder) == (6, 0, 7, "d1")
    assert [(r.chunk_id, r.doc_id, r.text) for r in records] == [("c1", "d1", "hello")]
    assert not raw.exists(old.documents, old.chunks, old.document("d1"), old.chunk("c1"))
