"""Prometheus metrics of the gateway, on its own metrics port (as services/common/metrics.py does
for the gRPC services): HTTP requests by route and status, their duration (a stream's until its
last byte), and the tokens streamed to clients."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ..common.metrics import _LATENCY_BUCKETS

UNMATCHED = "unmatched"          # the route label of paths no route has (bounded cardinality)


class GatewayMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("meshllm_http_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("meshllm_http_request_seconds", "HTTP request duration, to the last byte",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("meshllm_http_requests_in_flight", "HTTP requests being answered", registry=r)
        self.streamed_tokens = Counter("meshllm_http_streamed_tokens_total", "tokens sent in server-sent events",
                                       ["route"], registry=r)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        if port:
            start_http_server(port, addr=host, registry=self.registry)


class MetricsMiddleware:
    """A plain ASGI middleware (not BaseHTTPMiddleware, which would buffer streams): the status is
    read from http.response.start, the duration ends with the last body message. The route is the
    one that answered, or, for a request refused before routing (a bad key), its path when some
    route has exactly that path."""

    def __init__(self, app, metrics: GatewayMetrics, paths: frozenset[str] = frozenset()):
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or (scope["path"] if scope["path"] in self.paths
                                                                   else UNMATCHED)
            self.metrics.observe(route, status["code"], time.perf_counter() - started)
