"""The aiohttp app: ``POST /v1/order-cancelled`` plus ``/healthz``, ``/readyz``, ``/metrics``.

Checks run cheapest first, and nothing is read or published for a request that fails one:
content type (415) -> declared length (413) -> source and signature header, timestamp (401)
-> bounded body read (413) -> HMAC (401) -> the event model (422) -> idempotency (202 again,
or 409 for another body) -> publish and wait for ``acks=all`` (202, or 503 with
``Retry-After``; 413/500 when the broker refuses the record for good).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import Meter
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_PARTITION_ID,
    MESSAGING_KAFKA_MESSAGE_KEY,
    MESSAGING_KAFKA_OFFSET,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from consumer.config import IngressSettings
from consumer.core import headers as h
from consumer.core.events import OrderCancelled
from consumer.ingress.idempotency import Conflict, IdempotencyWindow
from consumer.ingress.publisher import (
    Delivery,
    Publisher,
    PublishError,
    Record,
    RecordRejected,
)
from consumer.ingress.responses import ErrorCode
from consumer.ingress.signature import (
    SIGNATURE_HEADER,
    SOURCE_HEADER,
    SignatureError,
    SignatureFailure,
    SignatureHeader,
    check_signature,
    check_timestamp,
    parse_signature_header,
    resolve_secret,
)
from consumer.ingress.validation import validate_event
from consumer.observability.metrics import Tally, duration_histogram
from consumer.observability.ops_http import Readiness, add_ops_routes
from consumer.observability.tracing import extract_context, inject_headers

log = logging.getLogger(__name__)

ROUTE: Final = "/v1/order-cancelled"
SPAN_NAME: Final = f"POST {ROUTE}"
# What a 503 asks the sender to wait before retrying (seconds).
RETRY_AFTER_SECONDS: Final = 5
# The metric label for a source we do not know: keeps the label set bounded.
UNKNOWN_SOURCE_LABEL: Final = "unknown"

# What the metrics and the span record for a request whose client left before its body
# arrived (nginx's "client closed request"); no response reaches anyone.
CLIENT_CLOSED_REQUEST: Final = 499

_JSON: Final = "application/json"
_EVENT_TYPE: Final = b"order.cancelled"


class _Instruments:
    """``cancel_ingress_requests_total`` and ``http_server_request_duration_seconds``."""

    def __init__(self, meter: Meter) -> None:
        self._requests = Tally(
            meter,
            "cancel_ingress.requests",
            unit="{request}",
            description="Webhook requests by source and HTTP status.",
        )
        self._duration = duration_histogram(
            meter,
            "http.server.request.duration",
            "Time to answer a webhook request, the broker's ack included.",
        )
        # Built once per distinct value and reused: no per-request dicts.
        self._count_attributes: dict[tuple[str, int], dict[str, str]] = {}
        self._duration_attributes: dict[int, dict[str, str | int]] = {}

    def record(self, source: str, status: int, seconds: float) -> None:
        counted = self._count_attributes.get((source, status))
        if counted is None:
            counted = self._count_attributes[source, status] = {
                "source": source,
                "status": str(status),
            }
        self._requests.add(1, counted)
        timed = self._duration_attributes.get(status)
        if timed is None:
            timed = self._duration_attributes[status] = {
                "http.request.method": "POST",
                "http.route": ROUTE,
                "http.response.status_code": status,
            }
        self._duration.record(seconds, timed)


class _Refused(Exception):
    """A request answered with an error before anything was published."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


class _ClientGone(Exception):
    """The client disconnected (or cut its body short) before the body was read."""


def build_app(
    settings: IngressSettings,
    *,
    topic: str,
    publisher: Publisher,
    tracer: Tracer,
    meter: Meter,
    readiness: Readiness | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The ingress app; ``readiness`` defaults to the publisher's."""
    # aiohttp refuses (413) to buffer more than this, whatever Content-Length said.
    app = web.Application(client_max_size=settings.max_body_bytes)
    handler = _WebhookHandler(
        settings, topic=topic, publisher=publisher, tracer=tracer, meter=meter, clock=clock
    )
    app.router.add_post(ROUTE, handler.handle)
    add_ops_routes(app, readiness or publisher.readiness)
    return app


class _WebhookHandler:
    def __init__(
        self,
        settings: IngressSettings,
        *,
        topic: str,
        publisher: Publisher,
        tracer: Tracer,
        meter: Meter,
        clock: Callable[[], float],
    ) -> None:
        self._secrets = {
            name: source.secret.get_secret_value().encode()
            for name, source in settings.sources.items()
        }
        self._max_body = settings.max_body_bytes
        self._timeout = settings.publish_timeout_seconds
        self._topic = topic
        self._send_span_name = f"send {topic}"
        self._publisher = publisher
        self._tracer = tracer
        self._instruments = _Instruments(meter)
        self._window = IdempotencyWindow(
            settings.idempotency_window, settings.publish_timeout_seconds
        )
        self._clock = clock

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        source = request.headers.get(SOURCE_HEADER, "")
        label = source if source in self._secrets else UNKNOWN_SOURCE_LABEL
        caller = _trace_context(request)
        with self._tracer.start_as_current_span(
            SPAN_NAME,
            context=caller or Context(),
            kind=SpanKind.SERVER,
            attributes=_span_attributes(request, label),
        ) as span:
            try:
                response = await self._accept(request, source, span, caller is not None)
            except _Refused as refused:
                response = refused.response
            except _ClientGone:
                # Not our failure and nobody to answer: no ERROR, no traceback.
                log.debug("webhook abandoned: the client left before its body arrived")
                response = web.Response(status=CLIENT_CLOSED_REQUEST)
            except Exception as exc:  # a bug: answer 500 with a body, never a bare traceback
                log.exception("webhook handling failed unexpectedly", extra={"source": label})
                span.set_attribute(ERROR_TYPE, type(exc).__name__)
                response = _error(500, ErrorCode.INTERNAL_ERROR, "internal error; retry later")
            if response.status == CLIENT_CLOSED_REQUEST:
                span.set_attribute(ERROR_TYPE, "client_disconnected")
            else:
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 500:
                    # Server spans mark only 5xx as errors (a 4xx is the caller's mistake).
                    span.set_status(Status(StatusCode.ERROR, str(response.status)))
        self._instruments.record(label, response.status, time.perf_counter() - started)
        return response

    async def _accept(
        self, request: web.Request, source: str, span: Span, from_caller: bool
    ) -> web.Response:
        self._check_content(request)
        secret, signature = self._authenticate_headers(request, source)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Refused(self._too_large()) from None
        except (ConnectionError, PayloadEncodingError):
            raise _ClientGone from None
        try:
            check_signature(signature, secret, body)
        except SignatureError as exc:
            raise _Refused(self._unauthorized(exc, source)) from None
        event = validate_event(body)
        if isinstance(event, list):
            span.set_attribute(ERROR_TYPE, ErrorCode.INVALID_EVENT.value)
            raise _Refused(_invalid(event))
        event_id = str(event.event_id)
        span.set_attributes({"order.id": event.order_id, "order.event_id": event_id})

        # The same event from this source is a duplicate; its id with another content is not.
        digest = hashlib.blake2b(event.model_dump_json().encode(), digest_size=16).digest()
        send = partial(self._send, event, body, source, from_caller)
        try:
            published = await self._window.publish_once((source, event.event_id), digest, send)
        except Conflict:
            span.set_attribute(ERROR_TYPE, ErrorCode.EVENT_ID_CONFLICT.value)
            log.warning(
                "webhook refused: event_id reused for another event",
                extra={"source": source, "event_id": event_id},
            )
            return _error(
                409,
                ErrorCode.EVENT_ID_CONFLICT,
                "this event_id was already accepted from this source with a different "
                "event; give a different event its own event_id",
            )
        except (PublishError, TimeoutError) as exc:
            reason = str(exc) or f"the broker did not acknowledge within {self._timeout:g} s"
            log.warning(
                "webhook not accepted: broker unavailable",
                extra={"source": source, "event_id": event_id, "error": reason},
            )
            span.set_attribute(ERROR_TYPE, ErrorCode.BROKER_UNAVAILABLE.value)
            return _error(
                503,
                ErrorCode.BROKER_UNAVAILABLE,
                f"the event could not be stored: {reason}; retry later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        except RecordRejected as exc:
            log.warning(
                "webhook not accepted: the broker refused the record",
                extra={"source": source, "event_id": event_id, "error": str(exc)},
            )
            code = ErrorCode.RECORD_TOO_LARGE if exc.too_large else ErrorCode.RECORD_REJECTED
            span.set_attribute(ERROR_TYPE, code.value)
            if exc.too_large:
                return _error(413, code, f"the event could not be stored: {exc}")
            return _error(
                500, code, f"the event could not be stored: {exc}; retrying will not help"
            )
        span.set_attribute("order.duplicate", not published)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "webhook accepted",
                extra={
                    "source": source,
                    "event_id": event_id,
                    "order_id": event.order_id,
                    "duplicate": not published,
                },
            )
        return _accepted(event_id)

    async def _send(
        self, event: OrderCancelled, body: bytes, source: str, from_caller: bool
    ) -> asyncio.Future[Delivery]:
        """Queue the record under its own PRODUCER span, ended when the broker answers."""
        key = event.order_id
        send = self._tracer.start_span(
            self._send_span_name,
            kind=SpanKind.PRODUCER,
            attributes={
                MESSAGING_SYSTEM: "kafka",
                MESSAGING_OPERATION_TYPE: "send",
                MESSAGING_OPERATION_NAME: "send",
                MESSAGING_DESTINATION_NAME: self._topic,
                MESSAGING_KAFKA_MESSAGE_KEY: key,
            },
        )
        # An unsampled root of our own must not decide for the processor (its parent-based
        # sampler would drop the whole trace): then send no traceparent and let it start one.
        propagate = from_caller or send.get_span_context().trace_flags.sampled
        record = Record(
            key=key.encode(),
            # The signed bytes, untouched: no re-serialisation, and fields this version
            # does not know survive for the processor that does.
            value=body,
            headers=[
                *(inject_headers(send) if propagate else ()),
                (h.INGRESS_SOURCE, source.encode()),
                (h.CONTENT_TYPE, _JSON.encode()),
                (h.EVENT_TYPE, _EVENT_TYPE),
            ],
        )
        try:
            ack = await self._publisher.send(record)
        except BaseException as exc:
            _end_send(send, exc)
            raise
        ack.add_done_callback(partial(_end_send_when_answered, send))
        return ack

    def _check_content(self, request: web.Request) -> None:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            # The signature covers the bytes as sent; we do not inflate untrusted input.
            raise _Refused(
                _error(
                    415,
                    ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                    f"Content-Encoding {encoding} is not supported; send the body uncompressed",
                )
            )
        charset = (request.charset or "utf-8").lower()
        if request.content_type != _JSON or charset != "utf-8":
            raise _Refused(
                _error(
                    415,
                    ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                    "Content-Type must be application/json (UTF-8)",
                )
            )
        length = request.content_length
        if length is not None and length > self._max_body:
            raise _Refused(self._too_large())

    def _authenticate_headers(
        self, request: web.Request, source: str
    ) -> tuple[bytes, SignatureHeader]:
        """Everything about authentication that needs no body: source, header, timestamp."""
        try:
            secret = resolve_secret(source, self._secrets)
            header = parse_signature_header(request.headers.get(SIGNATURE_HEADER))
            check_timestamp(header, self._clock())
        except SignatureError as exc:
            raise _Refused(self._unauthorized(exc, source)) from None
        return secret, header

    def _unauthorized(self, exc: SignatureError, source: str) -> web.Response:
        log.warning(
            "webhook refused: not authenticated",
            extra={
                "source": source if source in self._secrets else UNKNOWN_SOURCE_LABEL,
                "reason": exc.failure.value,
            },
        )
        return _error(
            401,
            exc.failure,
            exc.message,
            headers={"WWW-Authenticate": f'{SIGNATURE_HEADER} realm="order-cancelled"'},
        )

    def _too_large(self) -> web.Response:
        response = _error(
            413, ErrorCode.PAYLOAD_TOO_LARGE, f"the body is over {self._max_body} bytes"
        )
        # Do not drain an oversized body to keep the connection: close it.
        response.force_close()
        return response


def _accepted(event_id: str) -> web.Response:
    return web.Response(status=202, body=orjson.dumps({"event_id": event_id}), content_type=_JSON)


def _invalid(errors: list[dict[str, Any]]) -> web.Response:
    body = {
        "error": ErrorCode.INVALID_EVENT.value,
        "message": "the body is not a valid order.cancelled v1 event",
        "errors": errors,
    }
    return web.Response(status=422, body=orjson.dumps(body), content_type=_JSON)


def _end_send_when_answered(span: Span, ack: asyncio.Future[Delivery]) -> None:
    if ack.cancelled():
        _end_send(span, asyncio.CancelledError())
    elif (exc := ack.exception()) is not None:
        _end_send(span, exc)
    else:
        delivery = ack.result()
        span.set_attributes(
            {
                MESSAGING_DESTINATION_PARTITION_ID: str(delivery.partition),
                MESSAGING_KAFKA_OFFSET: delivery.offset,
            }
        )
        span.end()


def _end_send(span: Span, exc: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
    span.set_attribute(ERROR_TYPE, type(exc).__name__)
    span.end()


def _error(
    status: int,
    code: ErrorCode | SignatureFailure,
    message: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = orjson.dumps({"error": code.value, "message": message})
    return web.Response(status=status, body=body, content_type=_JSON, headers=headers)


def _trace_context(request: web.Request) -> Context | None:
    """The caller's trace context; None (a new trace) when it sent none or a malformed one."""
    found = [
        (name, value.encode("utf-8", "surrogateescape"))
        for name in (h.TRACEPARENT, h.TRACESTATE)
        if (value := request.headers.get(name)) is not None
    ]
    if not found:
        return None
    context = extract_context(found)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def _span_attributes(request: web.Request, source: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": "POST",
        "http.route": ROUTE,
        "url.path": request.path,
        "url.scheme": request.scheme,
        "cancel_ingress.source": source,
    }
    if request.remote:
        attributes["client.address"] = request.remote
    agent = request.headers.get("User-Agent")
    if agent:
        attributes["user_agent.original"] = agent[:256]
    return attributes
