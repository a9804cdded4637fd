"""The one invariant checker every fault scenario ends with.

- **lost**: an input event without a result for one of its shipments, or an unreadable
  input record without its DLQ copy;
- **duplicates**: result records beyond the first per result event_id, plus DLQ copies
  beyond the first per source record;
- **order violations**: for one shipment, a result of a later input event that appeared
  before the result of an earlier one; and within an order none of whose shipments was ever
  parked, a result of a later event before one of an earlier event (a parked shipment lets
  the order's other shipments go ahead: that is the point of parking). First appearances;
  same partition of the same topic compares offsets, otherwise broker timestamps;
- **committed offsets** must equal one past the last offset produced to each partition;
- **provider calls** per shipment, as the simulator counted them;
- **id mismatches**: results whose event_id is not the uuid5 of their source event,
  account and shipment (so a repeat could not be deduped); must be 0 everywhere.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import orjson

from consumer.core.events import result_event_id
from tests.faults.harness import Input, OutputReader
from tests.integration.kafka_helpers import Record


@dataclass
class Report:
    scenario: str
    events: int
    lost: int
    duplicates: int
    order_violations: int
    provider_calls: int
    max_calls_per_shipment: int
    committed_equals_end: bool
    id_mismatches: int = 0
    # Shipments parked in the retry topic (each park counted once per record).
    parks: int = 0
    wall_seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    # Evidence, not printed in the table.
    lost_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    committed: dict[int, int | None] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        for evidence in ("lost_ids", "duplicate_ids"):
            data[evidence] = data[evidence][:20]
        return data


def expected_results(record: Input) -> list[tuple[str, str, str]]:
    """(result event_id, provider, shipment_id) per distinct shipment of a valid event."""
    assert record.event is not None
    event_id = uuid.UUID(record.event["event_id"])
    seen: dict[tuple[str, str], str] = {}
    for shipment in record.event["shipments"]:
        key = (shipment["provider"], shipment["shipment_id"])
        seen.setdefault(key, str(result_event_id(event_id, *key)))
    return [(rid, provider, shipment) for (provider, shipment), rid in seen.items()]


def _position(record: Record) -> tuple[str, int, int, int]:
    return (record.topic, record.partition, record.offset, record.timestamp)


def _before(a: tuple[str, int, int, int], b: tuple[str, int, int, int]) -> bool:
    """Did output ``a`` certainly appear before output ``b``?"""
    if a[:2] == b[:2]:
        return a[2] < b[2]
    return a[3] < b[3]


def check(
    scenario: str,
    sent: list[Input],
    reader: OutputReader,
    committed: dict[int, int | None],
    cancel_calls: dict[tuple[str, str], int],
) -> Report:
    # Results: first appearance and count per event_id.
    first_seen: dict[str, tuple[str, int, int, int]] = {}
    counts: Counter[str] = Counter()
    mismatches = 0
    for record in reader.results:
        if record.value is None:
            continue
        value = orjson.loads(record.value)
        rid = str(value["event_id"])
        counts[rid] += 1
        first_seen.setdefault(rid, _position(record))
        if value["shipment_id"] is not None:
            source = uuid.UUID(value["source_event_id"])
            expected = result_event_id(source, value["provider"], value["shipment_id"])
            mismatches += rid != str(expected)
    dlq_counts: Counter[tuple[int, int]] = Counter()
    for record in reader.dead_letters:
        headers = dict(record.headers)
        dlq_counts[(int(headers["dlq-source-partition"]), int(headers["dlq-source-offset"]))] += 1

    parked_orders = {
        str(orjson.loads(record.value)["event"]["order_id"])
        for record in reader.parks
        if record.value is not None
    }
    lost: list[str] = []
    by_order: dict[str, list[list[str]]] = defaultdict(list)
    by_shipment: dict[tuple[str, str], list[list[str]]] = defaultdict(list)
    for record in sorted(sent, key=lambda r: (r.partition, r.offset)):
        if record.event is None:
            if dlq_counts[(record.partition, record.offset)] == 0:
                lost.append(f"dlq:{record.partition}:{record.offset}")
            continue
        wanted = expected_results(record)
        ids = [rid for rid, _, _ in wanted]
        lost += [rid for rid in ids if rid not in counts]
        if str(record.event["order_id"]) not in parked_orders:
            by_order[str(record.event["order_id"])].append(ids)
        for rid, provider, shipment_id in wanted:
            by_shipment[(provider, shipment_id)].append([rid])

    violations = 0
    for events in [*by_order.values(), *by_shipment.values()]:
        for earlier, later in pairwise(events):
            seen_earlier = [first_seen[rid] for rid in earlier if rid in first_seen]
            seen_later = [first_seen[rid] for rid in later if rid in first_seen]
            if any(_before(b, a) for a in seen_earlier for b in seen_later):
                violations += 1

    duplicate_ids = [rid for rid, n in counts.items() if n > 1]
    duplicates = sum(n - 1 for n in counts.values()) + sum(
        n - 1 for n in dlq_counts.values() if n > 1
    )
    ends: dict[int, int] = {}
    for record in sent:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return Report(
        scenario=scenario,
        events=len(sent),
        lost=len(lost),
        duplicates=duplicates,
        order_violations=violations,
        provider_calls=sum(cancel_calls.values()),
        max_calls_per_shipment=max(cancel_calls.values(), default=0),
        committed_equals_end=all(committed.get(p) == end for p, end in ends.items()),
        id_mismatches=mismatches,
        parks=len(reader.parks),
        lost_ids=lost,
        duplicate_ids=duplicate_ids,
        committed=dict(committed),
        ends=ends,
    )
