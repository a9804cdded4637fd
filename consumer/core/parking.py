"""Parked shipments: what the retry topic carries, and which shipments are parked now.

A shipment is parked when it cannot be settled now without failing for a reason that
waiting fixes: its provider failed transiently through a round of in-memory attempts, its
account's rate-limit queue is full, its account's circuit is open, or an earlier event's
park of the same shipment is still waiting (results of one shipment keep the order of its
events). The park is a record in the retry topic; the processor reads it back and holds it
until due.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumer.core.events import ErrorDetail, OrderCancelled, ShipmentRef, result_event_id


class ParkReason(StrEnum):
    TRANSIENT_FAILURE = "transient_failure"
    ACCOUNT_BUSY = "account_busy"
    CIRCUIT_OPEN = "circuit_open"
    BEHIND_PARKED = "behind_parked"


class ParkedShipment(BaseModel):
    """Retry topic ``orders.cancelled.retry``: one shipment waiting for its next attempt.

    ``event`` is the order-cancelled event as it came, its ``shipments`` cut to this one:
    the result it finally gets has the same id (and its calls the same ``Idempotency-Key``)
    as if it had been settled at once.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", title="shipment.cancel_retry v1")

    event_type: Literal["shipment.cancel_retry"] = Field(
        default="shipment.cancel_retry", description="Always shipment.cancel_retry."
    )
    schema_version: Literal[1] = Field(default=1, description="Always the integer 1.")
    event: OrderCancelled = Field(
        description="The order.cancelled event as it came, its shipments cut to this one."
    )
    due_at: datetime = Field(description="Not retried before this time.")
    first_parked_at: datetime = Field(
        description="When the shipment was first parked; the retry horizon counts from here."
    )
    attempts: int = Field(ge=0, description="Provider attempts made so far.")
    rounds: int = Field(
        ge=0, description="Rounds of attempts that failed transiently: the schedule's step."
    )
    reason: ParkReason = Field(description="Why it was parked.")
    last_error: ErrorDetail | None = Field(
        default=None, description="The last failure, when it was parked after one."
    )
    input_offset: int | None = Field(
        default=None,
        ge=0,
        description="Offset of the order-cancelled record in its input partition (the retry "
        "partition has the same number): parks of one shipment keep their events' order.",
    )

    @property
    def shipment(self) -> ShipmentRef:
        return self.event.shipments[0]

    @property
    def result_id(self) -> uuid.UUID:
        """The id of the result it will get, and of its calls' ``Idempotency-Key``."""
        shipment = self.shipment
        return result_event_id(self.event.event_id, shipment.provider, shipment.shipment_id)


@dataclass(frozen=True, slots=True)
class InvalidParked:
    message: str


def parse_parked(value: bytes | None) -> ParkedShipment | InvalidParked:
    if value is None:
        return InvalidParked("retry record value is null")
    try:
        parked = ParkedShipment.model_validate(orjson.loads(value))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        # Never the values: the record may carry anything.
        first = str(exc).splitlines()[0][:200]
        return InvalidParked(f"retry record is not a shipment.cancel_retry v1: {first}")
    if len(parked.event.shipments) != 1:
        return InvalidParked("retry record must name exactly one shipment")
    return parked


@dataclass(frozen=True, slots=True)
class RetryState:
    """Where a shipment stands in its retries; a fresh one for a shipment not parked yet."""

    attempts: int = 0
    rounds: int = 0
    first_parked_at: datetime | None = None

    @classmethod
    def of(cls, parked: ParkedShipment) -> RetryState:
        return cls(parked.attempts, parked.rounds, parked.first_parked_at)

    def past_horizon(self, now: datetime, horizon: timedelta) -> bool:
        return self.first_parked_at is not None and now - self.first_parked_at >= horizon


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the event a shipment came in sits: its input partition and offset."""

    partition: int
    offset: int


@dataclass(slots=True)
class _Parked:
    account: str
    origin: Origin
    due: float
    since: float


class ParkedShipments:
    """The shipments parked now, as far as this process knows: parked by it, or read back
    from the retry partitions it owns. Keyed by shipment, then by the id of the result the
    park will get (one per event and shipment).

    The processor owns input partition *n* and retry partition *n* together, and parks into
    the partition of the same number, so whoever handles an event knows the parks of its
    shipments that came from earlier events of its partition.
    """

    def __init__(self) -> None:
        self._by_shipment: dict[tuple[str, str], dict[uuid.UUID, _Parked]] = {}

    def add(
        self,
        shipment: ShipmentRef,
        result_id: uuid.UUID,
        *,
        origin: Origin,
        due: float,
        since: float,
    ) -> None:
        """``due`` and ``since``: wall-clock seconds (``time.time()``)."""
        parks = self._by_shipment.setdefault((shipment.provider, shipment.shipment_id), {})
        parks[result_id] = _Parked(shipment.provider, origin, due, since)

    def settled(self, shipment: ShipmentRef, result_id: uuid.UUID) -> None:
        key = (shipment.provider, shipment.shipment_id)
        parks = self._by_shipment.get(key)
        if parks is not None:
            parks.pop(result_id, None)
            if not parks:
                del self._by_shipment[key]

    def due_of_earlier(self, shipment: ShipmentRef, origin: Origin) -> float | None:
        """The latest due time of the parks of this shipment from earlier events of the
        same input partition, if any."""
        parks = self._by_shipment.get((shipment.provider, shipment.shipment_id))
        if not parks:
            return None
        dues = [
            parked.due
            for parked in parks.values()
            if parked.origin.partition == origin.partition and parked.origin.offset < origin.offset
        ]
        return max(dues) if dues else None

    def forget_partitions(self, partitions: set[int]) -> None:
        """Their new owner reads the parks back from the retry topic."""
        for key in list(self._by_shipment):
            parks = self._by_shipment[key]
            for rid in [rid for rid, p in parks.items() if p.origin.partition in partitions]:
                del parks[rid]
            if not parks:
                del self._by_shipment[key]

    def per_account(self, now: float) -> dict[str, tuple[int, float]]:
        """Per account: how many shipments are parked, and the oldest one's age."""
        summary: dict[str, tuple[int, float]] = {}
        for parks in list(self._by_shipment.values()):
            for parked in list(parks.values()):
                count, oldest = summary.get(parked.account, (0, 0.0))
                summary[parked.account] = (count + 1, max(oldest, now - parked.since))
        return summary


def park_of(parked: ParkedShipments, park: ParkedShipment, partition: int) -> None:
    """Make ``park``, in retry partition ``partition``, known to ``parked``."""
    if park.input_offset is None:
        return  # parked with no position: nothing to order behind it
    parked.add(
        park.shipment,
        park.result_id,
        origin=Origin(partition, park.input_offset),
        due=park.due_at.timestamp(),
        since=park.first_parked_at.timestamp(),
    )
