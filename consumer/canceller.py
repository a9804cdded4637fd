"""One order-cancelled event in, one result event per shipment out (no Kafka here)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from consumer.errors import CancelError, InternalError, UnknownProviderError
from consumer.events import OrderCancelled, ResultEvent, ShipmentRef, utc_now
from consumer.pipeline import TraceRef, cancel_request, cancelled_result, failed_result
from consumer.providers.base import Provider
from consumer.retry import AccountGate, Attempted, RetryPolicy, cancel_with_retries

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
    ) -> None:
        self._accounts = dict(accounts)
        self._policy = policy
        self._now = now

    async def cancel_order(self, event: OrderCancelled, trace: TraceRef) -> list[ResultEvent]:
        """Cancel every shipment of the event concurrently; never raises a CancelError."""
        # A shipment listed twice is cancelled once: both would get the same result id.
        unique = list({(s.provider, s.shipment_id): s for s in event.shipments}.values())
        return list(await asyncio.gather(*(self._cancel_shipment(event, s, trace) for s in unique)))

    async def _cancel_shipment(
        self, event: OrderCancelled, shipment: ShipmentRef, trace: TraceRef
    ) -> ResultEvent:
        account = self._accounts.get(shipment.provider)
        if account is None:
            error = UnknownProviderError(
                f"no provider account named {shipment.provider!r} is configured"
            )
            return failed_result(
                event,
                shipment,
                provider_kind=None,
                error=error,
                attempts=0,
                trace=trace,
                now=self._now(),
            )

        request = cancel_request(event, shipment)

        def log_retry(exc: CancelError, wait: float) -> None:
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
            )
        except Exception as exc:  # a bug in an adapter must not kill the event's partition
            log.exception("provider adapter failed", extra={"order_id": event.order_id})
            attempted = Attempted(1, error=InternalError(f"adapter error: {type(exc).__name__}"))
        return self._result(event, shipment, account.kind, attempted, trace)

    def _result(
        self,
        event: OrderCancelled,
        shipment: ShipmentRef,
        kind: str,
        attempted: Attempted,
        trace: TraceRef,
    ) -> ResultEvent:
        now = self._now()
        if attempted.outcome is not None:
            return cancelled_result(
                event,
                shipment,
                provider_kind=kind,
                outcome=attempted.outcome,
                attempts=attempted.attempts,
                trace=trace,
                now=now,
            )
        assert attempted.error is not None
        return failed_result(
            event,
            shipment,
            provider_kind=kind,
            error=attempted.error,
            attempts=attempted.attempts,
            trace=trace,
            now=now,
        )
