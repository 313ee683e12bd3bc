"""Running a gRPC service: one asyncio server with health, reflection, auth, TLS and metrics.

Health (grpc.health.v1) reports NOT_SERVING until `ready()` first says yes, and again whenever it
says no (it is asked every second: a service that needs Redis says no while Redis is down).
SIGTERM / SIGINT turn health to NOT_SERVING and stop the server with a grace period.
With tracing on (services/common/tracing.py), every RPC but health and reflection gets a span.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import tracing
from .auth import ApiKeyInterceptor
from .config import ServerConfig
from .metrics import METRICS
from .request_guard import MalformedRequestInterceptor

log = logging.getLogger("meshllm.server")


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    size = config.max_message_mb * 2**20
    return [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size),
            ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0)]


async def serve(config: ServerConfig, service_names: list[str], register: Callable[[grpc.aio.Server], None],
                ready: Callable[[], Awaitable[bool]], grace_s: float = 5.0) -> None:
    interceptors = [ApiKeyInterceptor(config.keys)] if config.keys else []
    interceptors.append(MalformedRequestInterceptor())
    if tracing.enabled():
        interceptors.insert(0, tracing.ServerTracing())          # first: calls the others refuse get a span too
    server = grpc.aio.server(interceptors=interceptors, options=server_options(config),
                             maximum_concurrent_rpcs=config.max_concurrent_rpcs)
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(service_names + [health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    address = f"{config.host}:{config.port}"
    if config.tls_cert:
        credentials = grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(),
                                                    Path(config.tls_cert).read_bytes())])
        server.add_secure_port(address, credentials)
    else:
        server.add_insecure_port(address)
    await server.start()
    METRICS.serve(config.metrics_port, config.host)
    log.info("serving %s on %s%s", ", ".join(service_names), address, " (TLS)" if config.tls_cert else "")

    async def set_health(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *service_names]:
            await health_servicer.set(name, status)

    await set_health(False)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    async def watch() -> None:
        serving = None
        while not stopping.is_set():
            try:
                ok = await asyncio.wait_for(ready(), timeout=2.0)
            except Exception as e:                           # noqa: BLE001 - any failure means not ready
                log.debug("readiness check failed: %s", e)
                ok = False
            if ok != serving:
                serving = ok
                log.info("health: %s", "SERVING" if ok else "NOT_SERVING")
                await set_health(ok)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass

    watcher = asyncio.create_task(watch())
    await stopping.wait()
    await set_health(False)
    await server.stop(grace_s)
    watcher.cancel()
    log.info("stopped")
