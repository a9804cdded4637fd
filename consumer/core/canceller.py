"""One order-cancelled event in; per shipment, a result event or a park (no Kafka here).

A shipment ends as a result (cancelled, or failed for a reason waiting will not fix) or is
parked for a later attempt: when its account cannot take it now (``consumer.core.accounts``),
when an earlier park of the same shipment still waits, or when a round of in-memory
attempts failed transiently. A parked shipment ends as cancel-failed only once it is past
the retry horizon, counted from its first park.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import NoOpTracer, Span, Tracer, get_current_span

from consumer.core.accounts import Admitted, ProviderAccount
from consumer.core.errors import (
    CancelError,
    InternalError,
    RateLimitedError,
    UnavailableError,
    UnknownProviderError,
)
from consumer.core.events import CancelFailed, OrderCancelled, ResultEvent, ShipmentRef, utc_now
from consumer.core.pacing import Ticket
from consumer.core.parking import Origin, ParkedShipment, ParkedShipments, ParkReason, RetryState
from consumer.core.pipeline import (
    TraceRef,
    cancel_request,
    cancelled_result,
    error_detail,
    failed_result,
    shipment_result_id,
)
from consumer.core.retry import Attempted, RetryPolicy, cancel_with_retries
from consumer.observability.metrics import Metrics
from consumer.observability.tracing import (
    CANCEL_ATTEMPTS,
    CANCEL_OUTCOME,
    CANCEL_PROVIDER,
    CANCEL_SHIPMENT_ID,
    FAILED,
    ORDER_ID,
    PARKED,
    ProviderScope,
    annotate_failure,
    enter_provider_scope,
    leave_provider_scope,
    record_slot_wait,
)

__all__ = ["Canceller", "ParkingPolicy", "ProviderAccount", "Settled"]

log = logging.getLogger(__name__)

# What a shipment comes to in one go.
Settled = ResultEvent | ParkedShipment

# Parks are spread by up to this share of their delay, so a backlog does not come back at
# one instant.
_JITTER = 0.1
# A shipment parked behind an earlier park of itself comes back just after it.
_BEHIND_SECONDS = 0.001
# ... and when that earlier park is overdue already, this much later.
_OVERDUE_BEHIND_SECONDS = 1.0
_FRESH = RetryState()


@dataclass(frozen=True, slots=True)
class ParkingPolicy:
    schedule_seconds: tuple[float, ...] = (30.0, 120.0, 600.0, 1800.0, 3600.0)
    horizon: timedelta = timedelta(hours=24)
    park_after_wait_seconds: float = 5.0

    def delay(self, rounds: int, rand: Callable[[], float] = random.random) -> float:
        """After the given (1-based) failed round, jittered."""
        step = self.schedule_seconds[min(rounds, len(self.schedule_seconds)) - 1]
        return step * (1 + _JITTER * (2 * rand() - 1))


class Canceller:
    def __init__(
        self,
        accounts: Mapping[str, ProviderAccount],
        policy: RetryPolicy,
        *,
        parking: ParkingPolicy | None = None,
        parked: ParkedShipments | None = None,
        now: Callable[[], datetime] = utc_now,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``parked``: the shipments parked now, shared with whoever parks and settles
        them (the runner); consulted so that a shipment's results keep its events' order."""
        self._accounts = dict(accounts)
        self._policy = policy
        self._parking = parking or ParkingPolicy()
        self._parked = parked or ParkedShipments()
        self._now = now
        self._tracer = tracer or NoOpTracer()
        self._metrics = metrics or Metrics()
        # Built once: the span name and telemetry scope of each account.
        self._scopes = {
            name: ProviderScope(name, self._tracer, self._metrics) for name in self._accounts
        }
        self._span_names = {name: f"cancel {name}" for name in self._accounts}

    @property
    def accounts(self) -> Mapping[str, ProviderAccount]:
        return self._accounts

    @property
    def parked(self) -> ParkedShipments:
        return self._parked

    async def cancel_order(
        self, event: OrderCancelled, trace: TraceRef, origin: Origin | None = None
    ) -> list[Settled]:
        """Settle every shipment of the event concurrently; never raises a CancelError.

        ``origin``: where the event sits in its input partition; a shipment with a park
        from an earlier event there waits behind it (without one, nothing is ordered).

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
            return [await self._settle_under(event, shipment, trace, span, origin=origin)]
        return list(
            await asyncio.gather(*(self._settle_shipment(event, s, trace, origin) for s in unique))
        )

    async def retry_parked(
        self, parked: ParkedShipment, trace: TraceRef, partition: int | None = None
    ) -> Settled:
        """The next attempt at a parked shipment, under the current span; ``partition``:
        its retry partition's number, the same as its input partition's."""
        shipment = parked.shipment
        span = get_current_span()
        span.set_attributes(
            {
                ORDER_ID: parked.event.order_id,
                CANCEL_PROVIDER: shipment.provider,
                CANCEL_SHIPMENT_ID: shipment.shipment_id,
            }
        )
        origin = None
        if partition is not None and parked.input_offset is not None:
            origin = Origin(partition, parked.input_offset)
        return await self._settle_under(
            parked.event, shipment, trace, span, state=RetryState.of(parked), origin=origin
        )

    async def _settle_shipment(
        self, event: OrderCancelled, shipment: ShipmentRef, trace: TraceRef, origin: Origin | None
    ) -> Settled:
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
            return await self._settle_under(event, shipment, trace, span, origin=origin)

    async def _settle_under(
        self,
        event: OrderCancelled,
        shipment: ShipmentRef,
        trace: TraceRef,
        span: Span,
        *,
        state: RetryState = _FRESH,
        origin: Origin | None,
    ) -> Settled:
        """Settle one shipment; ``span`` (the current span) gets its outcome and backoffs."""
        account = self._accounts.get(shipment.provider)
        if account is None:
            settled: Settled = self._unknown_provider(
                event, shipment, _span_ref(trace, span), state.attempts
            )
        else:
            result_id = shipment_result_id(event, shipment)
            work = _Shipment(event, shipment, result_id, trace, span, origin)
            admission = self._admission(work, account, state)
            if isinstance(admission, Admitted):
                scope = enter_provider_scope(self._scopes[shipment.provider])
                try:
                    settled = await self._attempt(work, account, state, admission.ticket)
                finally:
                    leave_provider_scope(scope)
            else:
                settled = admission
        _annotate(span, settled)
        return settled

    def _unknown_provider(
        self, event: OrderCancelled, shipment: ShipmentRef, trace: TraceRef, attempts: int
    ) -> ResultEvent:
        """A shipment of an account the config lacks (a park outliving its account keeps
        the attempts it had)."""
        error = UnknownProviderError(
            f"no provider account named {shipment.provider!r} is configured"
        )
        return failed_result(
            event,
            shipment,
            result_id=shipment_result_id(event, shipment),
            provider_kind=None,
            error=error,
            attempts=attempts,
            trace=trace,
            now=self._now(),
        )

    def _admission(
        self, work: _Shipment, account: ProviderAccount, state: RetryState
    ) -> Settled | Admitted:
        """Admitted, or the park (past the horizon, the failure) of a shipment that may not
        be attempted now."""
        now = self._now()
        origin = work.origin
        earlier = None if origin is None else self._parked.due_of_earlier(work.shipment, origin)
        if earlier is not None:
            reason, until = ParkReason.BEHIND_PARKED, None
        else:
            admission = account.admit(self._parking.park_after_wait_seconds)
            if isinstance(admission, Admitted):
                return admission
            reason, until = admission.reason, admission.until
        if state.past_horizon(now, self._parking.horizon):
            error: CancelError = (
                RateLimitedError("the account's rate limit left no call within the horizon")
                if reason is ParkReason.ACCOUNT_BUSY
                else UnavailableError("the provider stayed unavailable past the horizon")
            )
            return self._failed(work, account.kind, state.attempts, error)
        if earlier is not None:
            # Its results must follow the earlier event's: just after that park, and never
            # in the past (an overdue park is being retried, or was settled elsewhere).
            due = max(
                datetime.fromtimestamp(earlier + _BEHIND_SECONDS, now.tzinfo),
                now + timedelta(seconds=_OVERDUE_BEHIND_SECONDS),
            )
        else:
            assert until is not None
            due = now + timedelta(seconds=max(0.0, until - time.monotonic()))
        if state.first_parked_at is not None:
            # One last round at the horizon, as after a failed round.
            due = min(due, state.first_parked_at + self._parking.horizon)
        return self._park(work, state, reason, due)

    async def _attempt(
        self, work: _Shipment, account: ProviderAccount, state: RetryState, ticket: Ticket | None
    ) -> Settled:
        """A round of attempts; ``ticket``: the claim on the pace its admission took."""
        event, shipment, span = work.event, work.shipment, work.span
        request = cancel_request(event, shipment, work.result_id)
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
                extra={**work.fields(), "category": category, "wait_seconds": round(wait, 3)},
            )

        try:
            attempted = await cancel_with_retries(
                lambda: account.provider.cancel(request),
                account.gate,
                self._policy,
                breaker=account.breaker,
                ticket=ticket,
                on_retry=log_retry,
                on_gate_wait=record_slot_wait,
            )
        except Exception as exc:  # a bug in an adapter must not kill the event's partition
            log.exception("provider adapter failed", extra={"order_id": event.order_id})
            attempted = Attempted(1, error=InternalError(f"adapter error: {type(exc).__name__}"))
        return self._after(work, account.kind, state, attempted)

    def _after(
        self, work: _Shipment, kind: str, state: RetryState, attempted: Attempted
    ) -> Settled:
        """A round's outcome: the result, or the park of a transient failure."""
        attempts = state.attempts + attempted.attempts
        if attempted.outcome is not None:
            return cancelled_result(
                work.event,
                work.shipment,
                result_id=work.result_id,
                provider_kind=kind,
                outcome=attempted.outcome,
                attempts=attempts,
                trace=work.trace,
                now=self._now(),
            )
        error = attempted.error
        assert error is not None
        now = self._now()
        if not error.retryable or state.past_horizon(now, self._parking.horizon):
            return self._failed(work, kind, attempts, error)
        rounds = state.rounds + 1
        first = state.first_parked_at or now
        delay = max(self._parking.delay(rounds), error.retry_after or 0.0)
        # One last attempt at the horizon, then a failure.
        due = min(now + timedelta(seconds=delay), first + self._parking.horizon)
        after = RetryState(attempts, rounds, first)
        return self._park(work, after, ParkReason.TRANSIENT_FAILURE, due, error=error)

    def _park(
        self,
        work: _Shipment,
        state: RetryState,
        reason: ParkReason,
        due: datetime,
        *,
        error: CancelError | None = None,
    ) -> ParkedShipment:
        parked = ParkedShipment(
            event=work.event.model_copy(update={"shipments": [work.shipment]}),
            due_at=due,
            first_parked_at=state.first_parked_at or self._now(),
            attempts=state.attempts,
            rounds=state.rounds,
            reason=reason,
            last_error=error_detail(error) if error is not None else None,
            input_offset=work.origin.offset if work.origin is not None else None,
        )
        metrics = self._metrics
        metrics.parks.add(1, metrics.park_attributes(work.shipment.provider, reason))
        work.span.add_event(
            "parked", {"cancel.park.reason": str(reason), "cancel.park.due_at": due.isoformat()}
        )
        log.info(
            "shipment parked",
            extra={
                **work.fields(),
                "reason": str(reason),
                "due_at": due.isoformat(),
                "attempts": state.attempts,
            },
        )
        return parked

    def _failed(self, work: _Shipment, kind: str, attempts: int, error: CancelError) -> ResultEvent:
        return failed_result(
            work.event,
            work.shipment,
            result_id=work.result_id,
            provider_kind=kind,
            error=error,
            attempts=attempts,
            trace=_span_ref(work.trace, work.span),
            now=self._now(),
        )


@dataclass(frozen=True, slots=True)
class _Shipment:
    """One shipment of an event being settled, and where its telemetry goes."""

    event: OrderCancelled
    shipment: ShipmentRef
    result_id: uuid.UUID
    trace: TraceRef
    span: Span
    origin: Origin | None

    def fields(self) -> dict[str, str]:
        return {
            "order_id": self.event.order_id,
            "provider": self.shipment.provider,
            "shipment_id": self.shipment.shipment_id,
        }


def _span_ref(trace: TraceRef, span: Span) -> TraceRef:
    """A cancel-failed names the shipment's span: the one holding the failure's details."""
    context = span.get_span_context()
    return TraceRef(trace.trace_id, format(context.span_id, "016x")) if context.is_valid else trace


def _annotate(span: Span, result: Settled) -> None:
    if not span.is_recording():
        return
    if isinstance(result, ParkedShipment):
        span.set_attributes({CANCEL_ATTEMPTS: result.attempts, CANCEL_OUTCOME: PARKED})
    elif isinstance(result, CancelFailed):
        span.set_attributes({CANCEL_ATTEMPTS: result.attempts, CANCEL_OUTCOME: FAILED})
        annotate_failure(span, result.error)
    else:
        span.set_attributes({CANCEL_ATTEMPTS: result.attempts, CANCEL_OUTCOME: result.outcome})
