"""Documents, chunks and embeddings in Redis: enough to rebuild every in-memory index after a
restart (see docs/redis.md). Writes of one document are one MULTI/EXEC transaction."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np

from ..common.keys import Keys
from ..common.redis_client import is_cluster


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def chunk_id(doc_id: str, index: int, text: str) -> str:
    h = hashlib.blake2b(f"{doc_id}\x00{index}\x00".encode() + text.encode(), digest_size=12)
    return h.hexdigest()


@dataclass
class ChunkRecord:
    chunk_id: str
    doc_id: str
    index: int
    source: str
    start: int
    end: int
    text: str
    embedding: np.ndarray                   # (dims,) float32, unit length
    metadata: dict = field(default_factory=dict)
    context: str = ""                       # "source: Title > Section" (sections.py), indexed with the text

    @property
    def indexed_text(self) -> str:
        return indexed_text(self.context, self.text)


def indexed_text(context: str, text: str) -> str:
    """What search (BM25 and the encoder) sees of a chunk: its contextual header, then its text."""
    return f"{context}\n{text}" if context else text


class LegacyDocumentKeys:
    """The document keys before the `{docs}` hash tag (migrate_legacy_keys renames them)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.documents, self.chunks = f"{prefix}docs", f"{prefix}chunks"
        self.documents_version = f"{prefix}docs:version"

    def document(self, doc_id: str) -> str:
        return f"{self.prefix}doc:{doc_id}"

    def chunk(self, chunk_id: str) -> str:
        return f"{self.prefix}chunk:{chunk_id}"

    def content(self, digest: str) -> str:
        return f"{self.prefix}content:{digest}"


class DocumentStore:
    def __init__(self, client, keys: Keys):
        self.redis = client                  # redis.asyncio.Redis
        self.keys = keys

    async def migrate_legacy_keys(self) -> int:
        """Rename a document index written before the keys had their `{docs}` hash tag (on one
        server, where RENAME works across slots): documents survive the upgrade. Returns how many
        keys moved; 0 when there is nothing old, or when the new index already exists."""
        if is_cluster(self.redis):
            return 0
        legacy = LegacyDocumentKeys(self.keys.prefix)
        if not await self.redis.exists(legacy.documents) or await self.redis.exists(self.keys.documents):
            return 0
        doc_ids = [m.decode() for m in await self.redis.smembers(legacy.documents)]
        chunk_ids = [m.decode() for m in await self.redis.smembers(legacy.chunks)]
        pipe = self.redis.pipeline(transaction=False)
        for doc_id in doc_ids:
            pipe.hget(legacy.document(doc_id), "content_hash")
        digests = [d.decode() for d in await pipe.execute() if d] if doc_ids else []
        moves = [(legacy.documents, self.keys.documents), (legacy.chunks, self.keys.chunks),
                 (legacy.documents_version, self.keys.documents_version)]
        moves += [(legacy.document(d), self.keys.document(d)) for d in doc_ids]
        moves += [(legacy.chunk(c), self.keys.chunk(c)) for c in chunk_ids]
        moves += [(legacy.content(h), self.keys.content(h)) for h in digests]
        pipe = self.redis.pipeline(transaction=True)
        for old, _new in moves:
            pipe.exists(old)
        present = await pipe.execute()
        moves = [m for m, here in zip(moves, present, strict=True) if here]
        pipe = self.redis.pipeline(transaction=True)
        for old, new in moves:
            pipe.rename(old, new)
        await pipe.execute()
        return len(moves)

    async def document(self, doc_id: str) -> dict | None:
        raw = await self.redis.hgetall(self.keys.document(doc_id))
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    async def holder_of(self, digest: str) -> str | None:
        value = await self.redis.get(self.keys.content(digest))
        return value.decode() if value else None

    async def put(self, doc_id: str, source: str, metadata: dict, digest: str, chunks: list[ChunkRecord]) -> None:
        """Store a document and its chunks, replacing any previous version, atomically."""
        old = await self.document(doc_id)
        pipe = self.redis.pipeline(transaction=True)
        if old:
            old_ids = json.loads(old.get("chunk_ids", "[]"))
            if old_ids:
                pipe.delete(*[self.keys.chunk(c) for c in old_ids])
                pipe.srem(self.keys.chunks, *old_ids)
            pipe.delete(self.keys.content(old["content_hash"]))
        for c in chunks:
            pipe.hset(self.keys.chunk(c.chunk_id), mapping={
                "doc_id": doc_id, "index": c.index, "source": source, "start": c.start, "end": c.end,
                "text": c.text, "context": c.context, "embedding": c.embedding.astype(np.float32).tobytes()})
        if chunks:
            pipe.sadd(self.keys.chunks, *[c.chunk_id for c in chunks])
        pipe.hset(self.keys.document(doc_id), mapping={
            "source": source, "metadata": json.dumps(metadata, sort_keys=True), "content_hash": digest,
            "chunk_ids": json.dumps([c.chunk_id for c in chunks]), "ingested_at": f"{time.time():.3f}"})
        pipe.sadd(self.keys.documents, doc_id)
        pipe.set(self.keys.content(digest), doc_id)
        pipe.incr(self.keys.documents_version)
        await pipe.execute()

    async def delete(self, doc_id: str) -> bool:
        old = await self.document(doc_id)
        if not old:
            return False
        ids = json.loads(old.get("chunk_ids", "[]"))
        pipe = self.redis.pipeline(transaction=True)
        if ids:
            pipe.delete(*[self.keys.chunk(c) for c in ids])
            pipe.srem(self.keys.chunks, *ids)
        pipe.delete(self.keys.document(doc_id), self.keys.content(old["content_hash"]))
        pipe.srem(self.keys.documents, doc_id)
        pipe.incr(self.keys.documents_version)
        await pipe.execute()
        return True

    async def list(self, limit: int, after: str = "") -> tuple[list[tuple[str, dict]], int]:
        """(the first `limit` documents with ids after `after`, sorted by id, with their fields; how
        many there are in all)."""
        ids = sorted(m.decode() for m in await self.redis.smembers(self.keys.documents))
        page = [i for i in ids if i > after][:limit]
        pipe = self.redis.pipeline(transaction=False)
        for doc_id in page:
            pipe.hgetall(self.keys.document(doc_id))
        rows = await pipe.execute() if page else []
        docs = [(doc_id, {k.decode(): v.decode() for k, v in raw.items()}) for doc_id, raw in zip(page, rows) if raw]
        return docs, len(ids)

    async def version(self) -> int:
        return int(await self.redis.get(self.keys.documents_version) or 0)

    async def count(self) -> tuple[int, int]:
        return int(await self.redis.scard(self.keys.documents)), int(await self.redis.scard(self.keys.chunks))

    async def load_all(self, dims: int) -> tuple[int, list[ChunkRecord]]:
        """(version, every chunk): what an index is rebuilt from."""
        version = await self.version()
        ids = sorted(m.decode() for m in await self.redis.smembers(self.keys.chunks))
        metadata_cache: dict[str, dict] = {}
        records = []
        for start in range(0, len(ids), 512):
            pipe = self.redis.pipeline(transaction=False)
            for cid in ids[start:start + 512]:
                pipe.hgetall(self.keys.chunk(cid))
            for cid, raw in zip(ids[start:start + 512], await pipe.execute(), strict=True):
                if not raw:
                    continue
                doc_id = raw[b"doc_id"].decode()
                if doc_id not in metadata_cache:
                    doc = await self.document(doc_id) or {}
                    metadata_cache[doc_id] = json.loads(doc.get("metadata", "{}"))
                embedding = np.frombuffer(raw[b"embedding"], dtype=np.float32)
                if embedding.shape[0] != dims:
                    continue                  # written by another embedding model: not searchable here
                records.append(ChunkRecord(cid, doc_id, int(raw[b"index"]), raw[b"source"].decode(),
                                           int(raw[b"start"]), int(raw[b"end"]), raw[b"text"].decode(),
                                           embedding, metadata_cache[doc_id], raw.get(b"context", b"").decode()))
        records.sort(key=lambda r: (r.doc_id, r.index))
        return version, records
