"""The gateway's view of the mesh: grpc.aio channels to the services, their health, and the few
facts it caches (the model's names, the embedding model, the text of token ids).

Calls carry the caller's own `Authorization: Bearer KEY` as gRPC metadata, so the services check
the key themselves (the gateway has already checked it against the same MESHLLM_API_KEYS). The
gateway's own calls (health aside, which is open) use the first configured key.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..api import (
    generation_pb2,
    generation_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
)
from ..client import open_channel_async
from ..common.auth import bearer_token
from ..common.config import OpenAIConfig
from .errors import OpenAIError, from_rpc_error

log = logging.getLogger("meshllm.openai")

Metadata = tuple[tuple[str, str], ...]
MODEL_INFO_TTL_S = 5.0          # a restarted Generation service may serve another model
TOKEN_NAME_CACHE = 65536        # token id -> text, most recently used kept
HEALTH_INTERVAL_S = 1.0


def metadata_for(token: str | None) -> Metadata:
    return (("authorization", f"Bearer {token}"),) if token else ()


def caller_metadata(headers) -> Metadata:
    """The caller's key, from its HTTP request's headers, as the metadata forwarded to the services
    (the guard has checked it already)."""
    return metadata_for(bearer_token(headers.get("authorization")))


@dataclass(frozen=True)
class ServedModel:
    id: str                     # what /v1/models lists and responses name
    aliases: tuple[str, ...]    # other names a request may use (the GGUF's general.name)
    info: generation_pb2.ModelInfoResponse


class Mesh:
    def __init__(self, config: OpenAIConfig, max_message_mb: int = 8, own_key: str | None = None):
        self.config = config
        self.max_message_mb = max_message_mb
        self.own_metadata = metadata_for(own_key)
        configured = {"generation": config.generation_address, "retrieval": config.retrieval_address,
                      "tokenizer": config.tokenizer_address}
        self.addresses = {name: address for name, address in configured.items() if address}   # "": not used
        self.health: dict[str, str] = dict.fromkeys(self.addresses, "UNKNOWN")
        self.channels: dict[str, grpc.aio.Channel] = {}
        self._model: tuple[float, ServedModel] | None = None
        self._embedding: tuple[str, int] | None = None
        self._token_names: OrderedDict[int, str] = OrderedDict()
        self._watcher: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle (in the server's loop)

    async def open(self) -> None:
        for name, address in self.addresses.items():
            self.channels[name] = open_channel_async(address, self.config.tls_ca or None,
                                                     max_message_mb=self.max_message_mb)
        self._watcher = asyncio.ensure_future(self._watch_health())

    async def close(self) -> None:
        if self._watcher:
            self._watcher.cancel()
        for channel in self.channels.values():
            await channel.close(grace=None)

    # ------------------------------------------------------------------ stubs

    @property
    def generation(self) -> generation_pb2_grpc.GenerationStub:
        return generation_pb2_grpc.GenerationStub(self.channels["generation"])

    @property
    def has_retrieval(self) -> bool:
        return "retrieval" in self.channels

    @property
    def has_tokenizer(self) -> bool:
        return "tokenizer" in self.channels

    @property
    def retrieval(self) -> retrieval_pb2_grpc.RetrievalStub:
        if not self.has_retrieval:
            raise OpenAIError(404, "this gateway has no Retrieval service (set MESHLLM_RETRIEVAL_ADDRESS)",
                              code="not_found")
        return retrieval_pb2_grpc.RetrievalStub(self.channels["retrieval"])

    @property
    def timeout(self) -> float:
        return self.config.request_timeout_s

    # ------------------------------------------------------------------ health

    @property
    def ready(self) -> bool:
        return all(status == "SERVING" for status in self.health.values())

    async def check_health(self) -> None:
        async def one(name: str) -> None:
            try:
                reply = await health_pb2_grpc.HealthStub(self.channels[name]).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError:
                status = "UNREACHABLE"
            if status != self.health.get(name):
                log.info("%s (%s): %s", name, self.addresses[name], status)
            self.health[name] = status
        await asyncio.gather(*(one(name) for name in self.channels))

    async def _watch_health(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(HEALTH_INTERVAL_S)

    # ------------------------------------------------------------------ cached facts

    async def model(self, metadata: Metadata) -> ServedModel:
        now = time.monotonic()
        if self._model and now - self._model[0] < MODEL_INFO_TTL_S:
            return self._model[1]
        try:
            info = await self.generation.ModelInfo(generation_pb2.ModelInfoRequest(), timeout=10,
                                                   metadata=metadata or self.own_metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e, "Generation") from None
        model_id = self.config.served_model_name or info.model_name
        served = ServedModel(model_id, tuple(n for n in (info.model_name,) if n and n != model_id), info)
        self._model = (now, served)
        return served

    async def embedding_model(self, metadata: Metadata) -> tuple[str, int]:
        """(name, dimensions) of the Retrieval service's encoder."""
        if self._embedding is None:
            try:
                stats = await self.retrieval.Stats(retrieval_pb2.StatsRequest(), timeout=10,
                                                   metadata=metadata or self.own_metadata)
            except grpc.RpcError as e:
                raise from_rpc_error(e, "Retrieval") from None
            self._embedding = (stats.embedding_model, stats.dimensions)
        return self._embedding

    async def token_names(self, ids: set[int], metadata: Metadata) -> dict[int, str]:
        """The text of each token id, one Detokenize per id not seen before (TokenInfo carries ids
        only). Calls run concurrently; results are cached for the process's life."""
        stub = tokenizer_pb2_grpc.TokenizerStub(self.channels["tokenizer"])
        missing = [i for i in ids if i not in self._token_names]

        async def name(token_id: int) -> str:
            reply = await stub.Detokenize(tokenizer_pb2.DetokenizeRequest(token_ids=[token_id]),
                                          timeout=10, metadata=metadata or self.own_metadata)
            return reply.text
        try:
            texts = await asyncio.gather(*(name(i) for i in missing))
        except grpc.RpcError as e:
            raise from_rpc_error(e, "Tokenizer") from None
        for token_id, text in zip(missing, texts):
            self._token_names[token_id] = text
        out = {}
        for token_id in ids:
            out[token_id] = self._token_names[token_id]
            self._token_names.move_to_end(token_id)
        while len(self._token_names) > TOKEN_NAME_CACHE:
            self._token_names.popitem(last=False)
        return out
