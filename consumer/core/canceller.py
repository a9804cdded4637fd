"""One order-cancelled event in, one result event per shipment out (no Kafka here)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import NoOpTracer, Span, Tracer, get_current_span

from consumer.core.errors import CancelError, InternalError, UnknownProviderError
from consumer.core.events import CancelFailed, OrderCancelled, ResultEvent, ShipmentRef, utc_now
from consumer.core.pipeline import (
    TraceRef,
    cancel_request,
    cancelled_result,
    failed_result,
    shipment_result_id,
)
from consumer.core.retry import AccountGate, Attempted, RetryPolicy, cancel_with_retries
from consumer.observability.metrics import Metrics
from consumer.observability.tracing import (
    CANCEL_ATTEMPTS,
    CANCEL_OUTCOME,
    CANCEL_PROVIDER,
    CANCEL_SHIPMENT_ID,
    FAILED,
    ORDER_ID,
    ProviderScope,
    annotate_failure,
    enter_provider_scope,
    leave_provider_scope,
    record_slot_wait,
)
from consumer.providers.base import Provider

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProviderAccount:
    name: str
    provider: Provider
    gate: AccountGate

    @property
    def kind(self) -> str:
        return self.provider.kind


class Canceller:
    def __init__(
        self,
        accounts: Mapping[str, ProviderAccount],
        policy: RetryPolicy,
        *,
        now: Callable[[], datetime] = utc_now,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._accounts = dict(accounts)
        self._policy = policy
        self._now = now
        self._tracer = tracer or NoOpTracer()
        self._metrics = metrics or Metrics()
        # Built once: the span name and telemetry scope of each account.
        self._scopes = {
            name: ProviderScope(name, self._tracer, self._metrics) for name in self._accounts
        }
        self._span_names = {name: f"cancel {name}" for name in self._accounts}

    async def cancel_order(self, event: OrderCancelled, trace: TraceRef) -> list[ResultEvent]:
        """Cancel every shipment of the event concurrently; never raises a CancelError.

        Each shipment's provider calls go under a span of that shipment, except when the
        event has just one: then the current span (the event's) is the shipment's span, as
        a second one would repeat it at a tenth of the event's CPU.
        """
        # A shipment listed twice is cancelled once: both would get the same result id.
        unique = list({(s.provider, s.shipment_id): s for s in event.shipments}.values())
        if len(unique) == 1:
            shipment = unique[0]
            span = get_current_span()
            span.set_attributes(
                {CANCEL_PROVIDER: shipment.provider, CANCEL_SHIPMENT_ID: shipment.shipment_id}
            )
            # Awaited in place: a gather of one costs a task and a future.
            return [await self._cancel_under(event, shipment, trace, span)]
        return list(await asyncio.gather(*(self._cancel_shipment(event, s, trace) for s in unique)))

    async def _cancel_shipment(
        self, event: OrderCancelled, shipment: ShipmentRef, trace: TraceRef
    ) -> ResultEvent:
        """One INTERNAL span for this shipment: its provider calls are the span's children."""
        with self._tracer.start_as_current_span(
            self._span_names.get(shipment.provider, "cancel"),
            attributes={
                ORDER_ID: event.order_id,
                CANCEL_PROVIDER: shipment.provider,
                CANCEL_SHIPMENT_ID: shipment.shipment_id,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            return await self._cancel_under(event, shipment, trace, span)

    async def _cancel_under(
        self, event: OrderCancelled, shipment: ShipmentRef, trace: TraceRef, span: Span
    ) -> ResultEvent:
        """Cancel one shipment; ``span`` (the current span) gets its outcome and backoffs."""
        account = self._accounts.get(shipment.provider)
        if account is None:
            result = self._unknown_provider(event, shipment, _span_ref(trace, span))
        else:
            scope = enter_provider_scope(self._scopes[shipment.provider])
            try:
                result = await self._attempt(event, shipment, account, trace, span)
            finally:
                leave_provider_scope(scope)
        _annotate(span, result)
        return result

    def _unknown_provider(
        self, event: OrderCancelled, shipment: ShipmentRef, trace: TraceRef
    ) -> ResultEvent:
        error = UnknownProviderError(
            f"no provider account named {shipment.provider!r} is configured"
        )
        return failed_result(
            event,
            shipment,
            result_id=shipment_result_id(event, shipment),
            provider_kind=None,
            error=error,
            attempts=0,
            trace=trace,
            now=self._now(),
        )

    async def _attempt(
        self,
        event: OrderCancelled,
        shipment: ShipmentRef,
        account: ProviderAccount,
        trace: TraceRef,
        span: Span,
    ) -> ResultEvent:
        result_id = shipment_result_id(event, shipment)
        request = cancel_request(event, shipment, result_id)
        retry_attributes = self._metrics.retry_attributes

        def log_retry(exc: CancelError, wait: float) -> None:
            category = str(exc.category)
            self._metrics.retries.add(1, retry_attributes(shipment.provider, category))
            backoff: dict[str, str | float | int] = {
                ERROR_TYPE: category,
                "cancel.retry.wait_seconds": round(wait, 3),
            }
            if exc.http_status is not None:  # none for a timeout or a network error
                backoff[HTTP_RESPONSE_STATUS_CODE] = exc.http_status
            span.add_event("backoff", backoff)
            log.info(
                "retrying cancel",
                extra={
                    "order_id": event.order_id,
                    "provider": shipment.provider,
                    "shipment_id": shipment.shipment_id,
                    "category": str(exc.category),
                    "wait_seconds": round(wait, 3),
                },
            )

        try:
            attempted = await cancel_with_retries(
                lambda: account.provider.cancel(request),
                account.gate,
                self._policy,
                on_retry=log_retry,
                on_gate_wait=record_slot_wait,
            )
        except Exception as exc:  # a bug in an adapter must not kill the event's partition
            log.exception("provider adapter failed", extra={"order_id": event.order_id})
            attempted = Attempted(1, error=InternalError(f"adapter error: {type(exc).__name__}"))
        return self._result(event, shipment, account.kind, attempted, _Refs(result_id, trace, span))

    def _result(
        self,
        event: OrderCancelled,
        shipment: ShipmentRef,
        kind: str,
        attempted: Attempted,
        refs: _Refs,
    ) -> ResultEvent:
        now = self._now()
        if attempted.outcome is not None:
            return cancelled_result(
                event,
                shipment,
                result_id=refs.result_id,
                provider_kind=kind,
                outcome=attempted.outcome,
                attempts=attempted.attempts,
                trace=refs.trace,
                now=now,
            )
        assert attempted.error is not None
        return failed_result(
            event,
            shipment,
            result_id=refs.result_id,
            provider_kind=kind,
            error=attempted.error,
            attempts=attempted.attempts,
            trace=_span_ref(refs.trace, refs.span),
            now=now,
        )


@dataclass(frozen=True, slots=True)
class _Refs:
    result_id: uuid.UUID
    trace: TraceRef
    span: Span


def _span_ref(trace: TraceRef, span: Span) -> TraceRef:
    """A cancel-failed names the shipment's span: the one holding the failure's details."""
    context = span.get_span_context()
    return TraceRef(trace.trace_id, format(context.span_id, "016x")) if context.is_valid else trace


def _annotate(span: Span, result: ResultEvent) -> None:
    if not span.is_recording():
        return
    if isinstance(result, CancelFailed):
        span.set_attributes({CANCEL_ATTEMPTS: result.attempts, CANCEL_OUTCOME: FAILED})
        annotate_failure(span, result.error)
    else:
        span.set_attributes({CANCEL_ATTEMPTS: result.attempts, CANCEL_OUTCOME: result.outcome})
