"""The API's own metrics, beside the bus's on prometheus-client's default registry.

`api_request_seconds{method,route,status}`: response time of every HTTP request, by route
template (`/orders/{order_id}`, never the raw path), measured by a pure ASGI middleware.
`api_orders_total{outcome}`: `POST /orders` answers, `created` or `replayed` (Idempotency-Key).
"""

from __future__ import annotations

import time
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# fine below 25 ms: the orders API's p99 target on a small machine
BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNMATCHED = "unmatched"  # a path no route serves: one label, whatever the path


class ApiMetrics:
    """The orders API's metrics in one registry; `ApiMetrics.default()` uses the global one."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "api_request_seconds",
            "HTTP response time of the orders API, by route template",
            ["method", "route", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.orders = Counter(
            "api_orders_total",
            "POST /orders answers that returned an order: created, or replayed for a retry",
            ["outcome"],
            registry=self.registry,
        )

    @staticmethod
    @cache
    def default() -> ApiMetrics:
        """Metrics on prometheus-client's global registry, created on first use."""
        return ApiMetrics(REGISTRY)


class LatencyMiddleware:
    """Times each HTTP request from its arrival to its last body byte."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED  # set by the router
            self.metrics.request_seconds.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - started
            )
