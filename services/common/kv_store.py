"""The engine's BlockStore on Redis: full KV blocks shared between workers.

Keys are `kv:{model fingerprint}:{chain hash}` (see keys.py; on a Redis Cluster they spread over every
slot and a batch is read one MGET per slot), values engine.block_store's format.
Each block expires kv_block_ttl_s after it was written, and Redis's maxmemory policy
(volatile-lru) evicts blocks first when memory runs short: the store is a cache.
"""
from __future__ import annotations

import redis

from .keys import Keys
from .redis_client import mget


class RedisBlockStore:
    def __init__(self, client: redis.Redis, keys: Keys, model_fingerprint: str, ttl_s: int = 3600):
        self.redis = client
        self.keys = keys
        self.fingerprint = model_fingerprint
        self.ttl_s = ttl_s

    def get_many(self, block_hashes: list[bytes]) -> list[bytes | None]:
        return mget(self.redis, [self.keys.kv_block(self.fingerprint, h) for h in block_hashes])

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for block_hash, data in items:
            pipe.set(self.keys.kv_block(self.fingerprint, block_hash), data, ex=self.ttl_s)
        pipe.execute()
