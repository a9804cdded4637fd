"""A fake provider HTTP API for adapter tests: scripted answers per route, every request kept."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consumer.core.errors import (
    AuthError,
    CancelError,
    NotFoundError,
    ProviderTimeoutError,
    RateLimitedError,
    RejectedError,
    UnavailableError,
)
from consumer.observability.metrics import Metrics
from consumer.observability.tracing import ProviderScope, enter_provider_scope, leave_provider_scope
from consumer.providers.client import TransportClient

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class FakeApi:
    """Answers ``(method, path)`` from a queue whose last answer repeats; records requests."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._routes: dict[tuple[str, str], list[Answer]] = {}
        # Seconds every answer takes, to let concurrent callers pile up.
        self.delay = 0.0

    def on(self, method: str, path: str, *answers: Answer) -> None:
        self._routes[(method, path)] = list(answers)

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def client(self) -> TransportClient:
        """This API behind the client the service gives its adapters."""
        return TransportClient(self.transport())

    def transport(self) -> httpx.AsyncBaseTransport:
        """This API as an httpx transport, to put under other transports."""
        return httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        # A real network yields to other tasks; so must the fake, or races never show.
        await asyncio.sleep(self.delay)
        queue = self._routes.get((request.method, request.url.path))
        if not queue:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            # A fresh copy per use: the client consumes and closes what it is given.
            return httpx.Response(
                answer.status_code, headers=answer.headers, content=answer.content
            )
        return answer(request)


def reply(
    status: int,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> httpx.Response:
    """A response with ``body`` as JSON (``bytes`` are sent as they are)."""
    all_headers = dict(headers or {})
    if body is None:
        return httpx.Response(status, headers=all_headers)
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    all_headers.setdefault("content-type", content_type)
    return httpx.Response(status, headers=all_headers, content=content)


def json_of(request: httpx.Request) -> Any:
    return orjson.loads(request.content)


def form_of(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode())


class ClientSpans:
    """The CLIENT spans of the provider calls made inside ``client_spans()``."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self._exporter = exporter

    def attributes(self) -> list[dict[str, Any]]:
        """Each finished call's span attributes, in the order the calls ended."""
        return [dict(span.attributes or {}) for span in self.spans()]

    def spans(self) -> list[ReadableSpan]:
        return list(self._exporter.get_finished_spans())


@contextmanager
def client_spans(provider: str = "account") -> Iterator[ClientSpans]:
    """Record the spans of provider calls made in this block, as the canceller's scope would
    for the account ``provider``."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    scope = ProviderScope(provider, tracer_provider.get_tracer("test"), Metrics())
    token = enter_provider_scope(scope)
    try:
        yield ClientSpans(exporter)
    finally:
        leave_provider_scope(token)
        tracer_provider.shutdown()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# The category every provider gives a bare error status (no body refinement).
STATUS_CATEGORIES: list[tuple[int, type[CancelError]]] = [
    (400, RejectedError),
    (401, AuthError),
    (403, AuthError),
    (404, NotFoundError),
    (422, RejectedError),
    (429, RateLimitedError),
    (500, UnavailableError),
    (502, UnavailableError),
    (503, UnavailableError),
    (504, ProviderTimeoutError),
]
