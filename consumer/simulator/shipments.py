"""Shipment state of both simulated providers: created on first reference, kept in dicts.

Nothing here knows HTTP; the route modules turn these results into each provider's bodies.
A shipment's initial state and fault budget come from its fault spec (``faults.py``): the
admin override if one is set, else the words in its id.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from consumer.simulator.faults import FaultSpec, parse_fault

Lookup = Literal["id", "key"]
# Namespace of the MVMNT ids derived from client keys, so a key always maps to the same id.
_MVMNT_ID_NAMESPACE = uuid.UUID("6f1d3c0e-3f5e-4b8f-9a51-0c3a1f6b2d7e")


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class FaultBudget:
    """What is left of a shipment's ``ratelimit<N>`` and ``flaky<N>`` faults."""

    rate_limited: int
    failing: int

    @classmethod
    def of(cls, fault: FaultSpec) -> FaultBudget:
        return cls(rate_limited=fault.rate_limited_calls, failing=fault.failing_calls)

    def take_rate_limited(self) -> bool:
        if self.rate_limited > 0:
            self.rate_limited -= 1
            return True
        return False

    def take_failing(self) -> bool:
        if self.failing > 0:
            self.failing -= 1
            return True
        return False


# --- ShipStation ----------------------------------------------------------------------

ShipStationStatus = Literal["pending", "processing", "label_purchased", "cancelled"]


@dataclass(slots=True)
class Label:
    label_id: str
    shipment_id: str
    tracking_number: str
    created_at: str
    voided_at: str | None = None

    @property
    def voided(self) -> bool:
        return self.voided_at is not None


@dataclass(slots=True)
class ShipStationShipment:
    shipment_id: str
    fault: FaultSpec
    status: ShipStationStatus
    created_at: str
    modified_at: str
    budget: FaultBudget
    labels: list[Label] = field(default_factory=list)

    def active_label(self) -> Label | None:
        return next((label for label in self.labels if not label.voided), None)

    def cancel(self) -> str | None:
        """Cancel; a refusal comes back as ShipStation's message for it."""
        if self.status == "cancelled":
            return f"Shipment {self.shipment_id} is already cancelled."
        label = self.active_label()
        if label is not None:
            return (
                f"Shipment {self.shipment_id} has an active label ({label.label_id}); "
                "void the label before cancelling the shipment."
            )
        self.status = "cancelled"
        self.modified_at = iso_now()
        return None


@dataclass(frozen=True, slots=True)
class VoidResult:
    approved: bool
    message: str
    reason_code: str | None = None


class ShipStationStore:
    def __init__(self) -> None:
        self._shipments: dict[str, ShipStationShipment] = {}
        self._labels: dict[str, Label] = {}
        self._overrides: dict[str, FaultSpec] = {}
        self._label_numbers = itertools.count(1)

    def fault_for(self, shipment_id: str) -> FaultSpec:
        shipment = self._shipments.get(shipment_id)
        if shipment is not None:
            return shipment.fault
        override = self._overrides.get(shipment_id)
        return override if override is not None else parse_fault(shipment_id)

    def get(self, shipment_id: str) -> ShipStationShipment | None:
        """The shipment, created on first reference; None when its fault says not found."""
        shipment = self._shipments.get(shipment_id)
        if shipment is None:
            fault = self.fault_for(shipment_id)
            if fault.not_found:
                return None
            shipment = self._create(shipment_id, fault)
        return shipment

    def _create(self, shipment_id: str, fault: FaultSpec) -> ShipStationShipment:
        now = iso_now()
        status: ShipStationStatus = "pending"
        if fault.cancelled:
            status = "cancelled"
        elif fault.labeled or fault.delivered:
            # ShipStation has no "delivered": a shipped parcel is one with a live label.
            status = "label_purchased"
        shipment = ShipStationShipment(
            shipment_id=shipment_id,
            fault=fault,
            status=status,
            created_at=now,
            modified_at=now,
            budget=FaultBudget.of(fault),
        )
        if status == "label_purchased":
            number = next(self._label_numbers)
            label = Label(
                label_id=f"se-lbl-{number}",
                shipment_id=shipment_id,
                tracking_number=f"9400111{number:015d}",
                created_at=now,
            )
            shipment.labels.append(label)
            self._labels[label.label_id] = label
        self._shipments[shipment_id] = shipment
        return shipment

    def label(self, label_id: str) -> Label | None:
        return self._labels.get(label_id)

    def labels(self, shipment_id: str | None, status: str | None) -> list[Label]:
        if shipment_id is None:
            found = list(self._labels.values())
        else:
            shipment = self.get(shipment_id)
            found = list(shipment.labels) if shipment is not None else []
        if status is not None:
            found = [label for label in found if label_status(label) == status]
        return found

    def void(self, label: Label) -> VoidResult:
        if label.voided:
            return VoidResult(
                approved=False,
                message=f"Label {label.label_id} has already been voided.",
                reason_code="label_already_voided",
            )
        label.voided_at = iso_now()
        shipment = self._shipments.get(label.shipment_id)
        if shipment is not None:
            if shipment.status == "label_purchased" and shipment.active_label() is None:
                shipment.status = "pending"
            shipment.modified_at = label.voided_at
        return VoidResult(
            approved=True, message="Request for refund submitted.  This label has been voided."
        )

    def set_fault(self, shipment_id: str, fault: FaultSpec) -> None:
        """Override the id's fault; the shipment is rebuilt from it on next reference."""
        self._overrides[shipment_id] = fault
        shipment = self._shipments.pop(shipment_id, None)
        if shipment is not None:
            for label in shipment.labels:
                self._labels.pop(label.label_id, None)

    def reset(self) -> None:
        self._shipments.clear()
        self._labels.clear()
        self._overrides.clear()
        self._label_numbers = itertools.count(1)


def label_status(label: Label) -> str:
    return "voided" if label.voided else "completed"


# --- MVMNT ----------------------------------------------------------------------------

MvmntStatus = Literal["BOOKED", "IN_TRANSIT", "DELIVERED", "CANCELED"]


@dataclass(slots=True)
class MvmntShipment:
    id: str
    key: str
    fault: FaultSpec
    status: MvmntStatus
    created_at: str
    updated_at: str
    delivered_at: str | None
    budget: FaultBudget

    def cancel(self) -> str | None:
        """Cancel; a refusal comes back as MVMNT's 409 message."""
        if self.status in ("CANCELED", "DELIVERED"):
            return "Shipment is delivered or already canceled"
        if self.status == "IN_TRANSIT":
            return "Shipment is in transit and can no longer be canceled"
        self.status = "CANCELED"
        self.updated_at = iso_now()
        return None


def canonical_uuid(text: str) -> str | None:
    if len(text) not in (32, 36):
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


class MvmntStore:
    """MVMNT shipments, reachable by their UUID ``id`` and by their client ``key``."""

    def __init__(self) -> None:
        self._by_id: dict[str, MvmntShipment] = {}
        self._by_key: dict[str, MvmntShipment] = {}
        self._overrides: dict[str, FaultSpec] = {}

    def fault_for(self, ref: str) -> FaultSpec:
        shipment = self._by_key.get(ref) or self._by_id.get(ref)
        if shipment is not None:
            return shipment.fault
        override = self._overrides.get(ref)
        return override if override is not None else parse_fault(ref)

    def get(self, ref: str, by: Lookup | None) -> MvmntShipment | None:
        """The shipment ``ref`` names, created on first reference.

        Without ``by``, a UUID is an id and anything else a key (MVMNT tries the id first,
        then the key). ``by=id`` with a non-UUID finds nothing, as at MVMNT.
        """
        as_uuid = canonical_uuid(ref)
        if by == "id" or (by is None and as_uuid is not None):
            if as_uuid is None:
                return None
            shipment = self._by_id.get(as_uuid)
        else:
            shipment = self._by_key.get(ref)
        if shipment is not None:
            return shipment
        fault = self.fault_for(ref)
        if fault.not_found:
            return None
        return self._create(ref, by, as_uuid, fault)

    def _create(
        self, ref: str, by: Lookup | None, as_uuid: str | None, fault: FaultSpec
    ) -> MvmntShipment:
        if as_uuid is not None and by != "key":
            shipment_id = as_uuid
            key = f"SHP-{uuid.UUID(as_uuid).int % 100000:05d}"
        else:
            shipment_id = str(uuid.uuid5(_MVMNT_ID_NAMESPACE, ref))
            key = ref
        now = iso_now()
        status: MvmntStatus = "BOOKED"
        if fault.cancelled:
            status = "CANCELED"
        elif fault.delivered:
            status = "DELIVERED"
        elif fault.labeled:
            status = "IN_TRANSIT"
        shipment = MvmntShipment(
            id=shipment_id,
            key=key,
            fault=fault,
            status=status,
            created_at=now,
            updated_at=now,
            delivered_at=now if status == "DELIVERED" else None,
            budget=FaultBudget.of(fault),
        )
        self._by_id.setdefault(shipment_id, shipment)
        self._by_key.setdefault(key, shipment)
        return shipment

    def set_fault(self, ref: str, fault: FaultSpec) -> None:
        """Override the ref's fault; the shipment is rebuilt from it on next reference."""
        self._overrides[ref] = fault
        shipment = self._by_key.get(ref) or self._by_id.get(canonical_uuid(ref) or "")
        if shipment is not None:
            self._by_id.pop(shipment.id, None)
            self._by_key.pop(shipment.key, None)

    def reset(self) -> None:
        self._by_id.clear()
        self._by_key.clear()
        self._overrides.clear()
