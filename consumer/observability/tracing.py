"""Tracing helpers: W3C trace-context propagation through Kafka headers, span scopes, and
the telemetry of provider HTTP calls.

Every provider call goes through ``providers.http.send``, which knows the URL but not the
account it calls for. The canceller sets a ``ProviderScope`` (account name, tracer,
metrics) in a context variable for each shipment cancel; ``ClientCall`` reads it, so the
adapters stay free of telemetry plumbing. Reading provider bodies and redacting what is
copied from them stays in ``providers.http``: ``ClientCall`` is given clean values only.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_RESEND_COUNT,
    HTTP_RESPONSE_STATUS_CODE,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL
from opentelemetry.trace import NoOpTracer, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from consumer.core import headers as h
from consumer.core.events import ErrorDetail
from consumer.observability.metrics import PROVIDER, Metrics

# Our own span attributes, next to the semantic conventions' ones.
ORDER_ID = "order.id"
CANCEL_PROVIDER = "cancel.provider"
CANCEL_SHIPMENT_ID = "cancel.shipment_id"
CANCEL_OUTCOME = "cancel.outcome"
CANCEL_ATTEMPTS = "cancel.attempts"
CANCEL_ERROR_CATEGORY = "cancel.error.category"
CANCEL_ERROR_RETRYABLE = "cancel.error.retryable"
CANCEL_ERROR_MESSAGE = "cancel.error.message"
PROVIDER_HTTP_STATUS = "provider.http_status"
PROVIDER_REQUEST_ID = "provider.request_id"
PROVIDER_ERROR_CODE = "provider.error_code"
PROVIDER_ERRORS = "provider.errors"
FAILED = "failed"
# A shipment parked in the retry topic for a later attempt.
PARKED = "parked"
# A span attribute holding the provider's error list, as JSON, stays this short.
_MAX_PROVIDER_ERRORS_CHARS = 4096

# W3C trace context only: our topics' contract (no baggage, whatever OTEL_PROPAGATORS says).
_W3C = TraceContextTextMapPropagator()
# Only these inbound headers are read for trace context; everything else is ignored.
_TRACE_HEADERS = (h.TRACEPARENT, h.TRACESTATE)
# A tracestate longer than the W3C limit (512 chars) is dropped, never parsed.
_MAX_TRACE_HEADER_BYTES = 512


class _HeaderGetter(Getter[dict[str, str]]):
    def get(self, carrier: dict[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: dict[str, str]) -> list[str]:
        return list(carrier)


def extract_context(headers: Iterable[tuple[str, bytes | None]]) -> Context:
    """The producer's trace context, or an empty one when absent or malformed."""
    carrier: dict[str, str] = {}
    for key, value in headers:
        name = key.lower()
        if name in _TRACE_HEADERS and value and len(value) <= _MAX_TRACE_HEADER_BYTES:
            try:
                carrier[name] = value.decode("ascii")
            except UnicodeDecodeError:
                continue
    if not carrier:
        return Context()
    return _W3C.extract(carrier, getter=_HeaderGetter())


def inject_headers(span: trace.Span) -> list[tuple[str, bytes]]:
    """``traceparent`` (+ ``tracestate``) for a record produced under the given span.

    Written directly (W3C trace context is the contract of our topics): the generic
    propagators cost several times more, once per produced record.
    """
    context = span.get_span_context()
    if not context.is_valid:
        return []
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    headers = [(h.TRACEPARENT, traceparent.encode("ascii"))]
    if context.trace_state:
        headers.append((h.TRACESTATE, context.trace_state.to_header().encode("ascii")))
    return headers


class ActiveSpan:
    """``with ActiveSpan(tracer.start_span(...)) as span:`` is ``start_as_current_span``:
    the span is current inside the block, an ``Exception`` leaving it is recorded and sets
    the status to ERROR, and the span ends on the way out.

    The SDK's version nests two generator context managers, about 12 µs per span: a
    quarter of a span's cost, paid for every event.
    """

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def __enter__(self) -> trace.Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        span = self._span
        otel_context.detach(self._token)
        # As the SDK: only an Exception is an error; CancelledError and the like are not.
        if isinstance(exc, Exception) and span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()


def trace_ids(span: trace.Span) -> tuple[str, str]:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def annotate_failure(span: trace.Span, error: ErrorDetail) -> None:
    """Status ERROR, ``error.type`` = the category, and all the provider said, as attributes.

    The message and details were scrubbed of credentials by the adapter that built them.
    """
    category = str(error.category)
    span.set_status(Status(StatusCode.ERROR, f"{category}: {error.message}"))
    attributes: dict[str, str | bool | int] = {
        ERROR_TYPE: category,
        CANCEL_ERROR_CATEGORY: category,
        CANCEL_ERROR_RETRYABLE: error.retryable,
        CANCEL_ERROR_MESSAGE: error.message,
    }
    if error.http_status is not None:
        attributes[PROVIDER_HTTP_STATUS] = error.http_status
    if error.provider_code:
        attributes[PROVIDER_ERROR_CODE] = error.provider_code
    if error.provider_request_id:
        attributes[PROVIDER_REQUEST_ID] = error.provider_request_id
    if error.provider_errors:
        details = orjson.dumps(error.provider_errors, default=str).decode()
        attributes[PROVIDER_ERRORS] = details[:_MAX_PROVIDER_ERRORS_CHARS]
    span.set_attributes(attributes)


# --- provider HTTP calls -----------------------------------------------------------------

# error.type of a call abandoned by its shipment's budget or a shutdown: not a failure of
# the provider, and not timed (an abandoned call has no duration worth a histogram sample).
CANCELLED = "cancelled"
SLOT = "slot"
TOKEN = "token"


@dataclass(frozen=True, slots=True)
class ProviderScope:
    """The provider account the calls in this context are made for, and where to record."""

    provider: str
    tracer: Tracer
    metrics: Metrics


class _Shipment:
    """The scope of the shipment cancel running in this task, and how often it has sent
    each request so far (for ``http.request.resend_count``)."""

    __slots__ = ("scope", "sent")

    def __init__(self, scope: ProviderScope, sent: dict[Hashable, int] | None) -> None:
        self.scope = scope
        self.sent = sent


# Outside any shipment (a provider used directly): record into no-ops, count no resends.
_NO_SCOPE = _Shipment(ProviderScope("unknown", NoOpTracer(), Metrics()), None)
_SCOPE: ContextVar[_Shipment] = ContextVar("provider_scope", default=_NO_SCOPE)
_CALL: ContextVar[ClientCall | None] = ContextVar("client_call", default=None)
_RATE_LIMIT_WAIT = "rate limit wait"
_WAIT_SECONDS = "wait_seconds"
# Shorter token waits are not worth a span event.
_NOTABLE_WAIT_SECONDS = 0.001


def enter_provider_scope(scope: ProviderScope) -> object:
    """Set the scope for one shipment cancel in this task; pass the result to
    ``leave_provider_scope``."""
    return _SCOPE.set(_Shipment(scope, {}))


def leave_provider_scope(token: object) -> None:
    _SCOPE.reset(token)  # type: ignore[arg-type]


def record_rate_limit_wait(seconds: float, limiter: str) -> None:
    """Time a call waited under the current account: for a free concurrency ``slot`` or a
    rate-limit ``token``.

    A wait inside an HTTP call (the rate-limiting transport) is an event of its CLIENT span
    and is not counted as request time.
    """
    scope = _SCOPE.get().scope
    metrics = scope.metrics
    metrics.rate_limiter_wait.record(seconds, metrics.limiter_attributes(scope.provider, limiter))
    call = _CALL.get()
    if call is not None:
        call.waited(seconds)


def record_slot_wait(seconds: float) -> None:
    """``record_rate_limit_wait`` for the account's concurrency cap (``AccountGate``)."""
    record_rate_limit_wait(seconds, SLOT)


def record_token_wait(seconds: float) -> None:
    """``record_rate_limit_wait`` for the account's token bucket (``RateLimitedTransport``)."""
    record_rate_limit_wait(seconds, TOKEN)


class ClientCall:
    """The CLIENT span and duration metric of one provider HTTP request.

    ``providers.http.send`` drives it and always calls ``end`` (in a ``finally``). What it
    is given for the span (``url.full``, the provider's request id and error code) has
    already been cleaned of credentials by ``providers.http``.
    """

    __slots__ = (
        "_attributes",
        "_cancelled",
        "_metrics",
        "_reset",
        "_span",
        "_started",
        "_waited",
        "recording",
    )

    def __init__(self, method: str, host: str, port: int, request_key: Hashable) -> None:
        """``request_key`` names the request (method, URL, query): sending the same one
        again within the shipment's cancel is a resend."""
        shipment = _SCOPE.get()
        scope = shipment.scope
        self._metrics = scope.metrics
        self._attributes: dict[str, str | int] = {
            PROVIDER: scope.provider,
            HTTP_REQUEST_METHOD: method,
            SERVER_ADDRESS: host,
            SERVER_PORT: port,
        }
        resends = 0
        sent = shipment.sent
        if sent is not None:
            resends = sent.get(request_key, 0)
            sent[request_key] = resends + 1
        span = self._span = scope.tracer.start_span(method, kind=SpanKind.CLIENT)
        self.recording = span.is_recording()
        if self.recording:
            attributes: dict[str, str | int] = {
                HTTP_REQUEST_METHOD: method,
                SERVER_ADDRESS: host,
                SERVER_PORT: port,
                CANCEL_PROVIDER: scope.provider,
            }
            if resends:
                attributes[HTTP_REQUEST_RESEND_COUNT] = resends
            span.set_attributes(attributes)
        self._waited = 0.0
        self._cancelled = False
        self._reset = _CALL.set(self)
        self._started = time.perf_counter()

    def describe(self, url_full: str) -> None:
        """``url.full``, credentials already removed (set only while ``recording``)."""
        self._span.set_attribute(URL_FULL, url_full)

    def waited(self, seconds: float) -> None:
        self._waited += seconds
        if seconds >= _NOTABLE_WAIT_SECONDS:
            self._span.add_event(_RATE_LIMIT_WAIT, {_WAIT_SECONDS: round(seconds, 3)})

    def answered(
        self, status: int, request_id: str | None = None, error_code: str | None = None
    ) -> None:
        """An answer arrived; an error status (>= 400) makes the span's status ERROR."""
        self._attributes[HTTP_RESPONSE_STATUS_CODE] = status
        failed = status >= 400
        if failed:
            self._attributes[ERROR_TYPE] = str(status)
        if not self.recording:
            return
        attributes: dict[str, str | int] = {HTTP_RESPONSE_STATUS_CODE: status}
        if request_id:
            attributes[PROVIDER_REQUEST_ID] = request_id
        if failed:
            attributes[ERROR_TYPE] = str(status)
            if error_code:
                attributes[PROVIDER_ERROR_CODE] = error_code
        span = self._span
        span.set_attributes(attributes)
        if failed:
            span.set_status(Status(StatusCode.ERROR))

    def failed(self, error_type: str) -> None:
        """No answer: ``error_type`` names the transport failure (an exception class)."""
        self._attributes[ERROR_TYPE] = error_type
        self._span.set_attribute(ERROR_TYPE, error_type)
        self._span.set_status(Status(StatusCode.ERROR))

    def cancelled(self) -> None:
        """Abandoned (the shipment's budget ran out, or a shutdown): no duration sample."""
        self._cancelled = True
        self._span.set_attribute(ERROR_TYPE, CANCELLED)
        self._span.set_status(Status(StatusCode.ERROR, CANCELLED))

    def end(self) -> None:
        _CALL.reset(self._reset)
        if not self._cancelled:
            elapsed = time.perf_counter() - self._started - self._waited
            self._metrics.http_duration.record(max(0.0, elapsed), self._attributes)
        self._span.end()
