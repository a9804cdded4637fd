"""``cancel-processor redrive``: put failed work back on the input topic after a fix.

Two sources, read by partition assignment (no consumer group, nothing committed):

- **DLQ records** go back byte for byte: the original key and value.
- **Retryable cancel-failed results** (rate_limited, unavailable, timeout, network) become
  an order-cancelled event again, for just the shipments that failed. It keeps the
  original ``event_id`` (the result's ``source_event_id``), order, reason and each
  shipment's ``lookup`` (read from the original input event), so the results it yields
  carry the *same* deterministic event_ids as the failures they replace, and the provider
  sees the same Idempotency-Key. Only the latest failure per result id counts, and none
  whose shipment has since been cancelled (a result with its id on the cancelled topic).

Every re-published record carries a ``redriven-from`` header per source record
(``topic/partition/offset``); a later run skips sources it finds there. So running redrive
twice publishes nothing twice, and should two runs race anyway, the duplicate inputs yield
results with identical event_ids, which downstream dedupes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from consumer.config import KafkaSettings
from consumer.core import headers as h
from consumer.core.events import CancelFailed, OrderCancelled
from consumer.kafka.clients import client_options, started, topic_partitions

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Source = Literal["dlq", "failed"]
SOURCES: tuple[Source, ...] = ("dlq", "failed")
# The header naming, per source record, where a redriven record came from.
REDRIVEN_FROM = "redriven-from"
# How far before the oldest failure to look for the input events that failed.
DEFAULT_INPUT_LOOKBACK = timedelta(hours=24)
_IDLE_SECONDS = 2.0
_POLL_MS = 500


@dataclass(frozen=True, slots=True)
class RedriveFilter:
    sources: frozenset[Source] = frozenset(SOURCES)
    # Error categories to take; empty: all (the DLQ's, and the retryable failures').
    categories: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    # Redrive sources even when an earlier run already did.
    again: bool = False

    def takes(self, category: str, timestamp_ms: int) -> bool:
        if self.categories and category not in self.categories:
            return False
        at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        if self.since is not None and at < self.since:
            return False
        return self.until is None or at < self.until


@dataclass(frozen=True, slots=True)
class Redrive:
    """One record to publish to the input topic."""

    kind: Source
    key: bytes | None
    value: bytes
    origins: tuple[str, ...]
    category: str
    order_id: str
    traceparent: bytes | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        found = [(REDRIVEN_FROM, origin.encode()) for origin in self.origins]
        if self.traceparent is not None:
            found.append((h.TRACEPARENT, self.traceparent))
        return found

    def line(self, verb: str) -> str:
        return (
            f"{verb} {self.kind} {','.join(self.origins)} order={self.order_id}"
            f" category={self.category}"
        )


@dataclass
class Plan:
    redrives: list[Redrive] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def origin_of(record: Record) -> str:
    return f"{record.topic}/{record.partition}/{record.offset}"


def _header(record: Record, name: str) -> bytes | None:
    for key, value in record.headers:
        if key == name:
            return value if isinstance(value, bytes) else None
    return None


def already_redriven(inputs: Iterable[Record]) -> set[str]:
    """Source records an earlier run published again, from the input's headers."""
    return {
        value.decode()
        for record in inputs
        for key, value in record.headers
        if key == REDRIVEN_FROM and value
    }


def plan_dead_letters(
    records: Iterable[Record], chosen: RedriveFilter, done: set[str], plan: Plan
) -> None:
    for record in records:
        category = (_header(record, h.DLQ_ERROR_CATEGORY) or b"unknown").decode()
        if not chosen.takes(category, record.timestamp):
            continue
        origin = origin_of(record)
        if origin in done and not chosen.again:
            plan.skipped["already redriven"] += 1
        elif _header(record, h.DLQ_VALUE_DROPPED) is not None or record.value is None:
            plan.skipped["original value not kept (null or too large)"] += 1
        else:
            order = (record.key or b"").decode("utf-8", "replace")
            plan.redrives.append(
                Redrive("dlq", record.key, record.value, (origin,), category, order)
            )


@dataclass(frozen=True, slots=True)
class _Failure:
    record: Record
    result: CancelFailed


def latest_failures(records: Iterable[Record]) -> list[_Failure]:
    """The latest cancel-failed per result event_id (a redrive may have failed again)."""
    latest: dict[uuid.UUID, _Failure] = {}
    for record in records:
        try:
            result = CancelFailed.model_validate_json(record.value or b"")
        except ValidationError:
            continue
        known = latest.get(result.event_id)
        if known is None or record.timestamp >= known.record.timestamp:
            latest[result.event_id] = _Failure(record, result)
    return list(latest.values())


def plan_failures(
    failures: Iterable[_Failure],
    *,
    cancelled_ids: set[uuid.UUID],
    originals: Mapping[uuid.UUID, OrderCancelled],
    chosen: RedriveFilter,
    done: set[str],
    plan: Plan,
) -> None:
    """One order-cancelled event per source event, with the shipments to try again."""
    groups: dict[uuid.UUID, list[_Failure]] = {}
    for failure in failures:
        result, error = failure.result, failure.result.error
        if not error.retryable:
            continue
        if not chosen.takes(str(error.category), failure.record.timestamp):
            continue
        if result.event_id in cancelled_ids:
            plan.skipped["cancelled since"] += 1
        elif origin_of(failure.record) in done and not chosen.again:
            plan.skipped["already redriven"] += 1
        elif result.source_event_id is None or result.shipment_id is None:
            plan.skipped["no source event"] += 1
        elif result.source_event_id not in originals:
            plan.skipped["original input event not found (widen --input-lookback)"] += 1
        else:
            groups.setdefault(result.source_event_id, []).append(failure)
    for source_event_id, group in groups.items():
        original = originals[source_event_id]
        wanted = {(f.result.provider, f.result.shipment_id) for f in group}
        shipments = [
            shipment.model_dump(mode="json", exclude_none=True)
            for shipment in original.shipments
            if (shipment.provider, shipment.shipment_id) in wanted
        ]
        event = {
            "event_id": str(source_event_id),
            "event_type": "order.cancelled",
            "schema_version": 1,
            "occurred_at": original.occurred_at.isoformat(),
            "order_id": original.order_id,
            "shipments": shipments,
        }
        if original.reason is not None:
            event["reason"] = original.reason
        first = group[0].result
        plan.redrives.append(
            Redrive(
                "failed",
                original.order_id.encode(),
                orjson.dumps(event),
                tuple(origin_of(f.record) for f in group),
                ",".join(sorted({str(f.result.error.category) for f in group})),
                original.order_id,
                # The redriven work continues the failed attempt's trace.
                f"00-{first.trace_id}-{first.span_id}-01".encode(),
            )
        )


def parse_originals(
    records: Iterable[Record], wanted: set[uuid.UUID]
) -> dict[uuid.UUID, OrderCancelled]:
    found: dict[uuid.UUID, OrderCancelled] = {}
    for record in records:
        if not record.value:
            continue
        try:
            event_id = uuid.UUID(str(orjson.loads(record.value).get("event_id")))
        except (orjson.JSONDecodeError, ValueError, AttributeError):
            continue
        if event_id in wanted and event_id not in found:
            try:
                found[event_id] = OrderCancelled.model_validate_json(record.value)
            except ValidationError:
                continue
    return found


def cancelled_ids(records: Iterable[Record]) -> set[uuid.UUID]:
    ids = set()
    for record in records:
        try:
            ids.add(uuid.UUID(str(orjson.loads(record.value or b"{}").get("event_id"))))
        except (orjson.JSONDecodeError, ValueError, AttributeError):
            continue
    return ids


async def read_topic(
    kafka: KafkaSettings,
    topic: str,
    since_ms: int | None = None,
    idle_seconds: float = _IDLE_SECONDS,
) -> list[Record]:
    """Every record of ``topic`` (from ``since_ms`` when given) up to its current end."""
    # "earliest": an offset deleted by retention under our feet must not skip to the end.
    consumer = AIOKafkaConsumer(
        **client_options(kafka), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    async with started(consumer):
        partitions = await topic_partitions(kafka, [topic])
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        if since_ms is not None:
            found = await consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
            for tp, at in found.items():
                if at is not None:
                    consumer.seek(tp, at.offset)
        ends = await consumer.end_offsets(partitions)
        return await read_to_end(consumer, ends, idle_seconds)


class TopicReadIncomplete(Exception):
    """A topic could not be read to its end: planning on part of it could redrive twice."""


async def read_to_end(
    consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int], idle_seconds: float
) -> list[Record]:
    """Until a fetch brings nothing more and every partition is at its end; a partition
    still short of its end after ``idle_seconds`` without records is an error."""
    records: list[Record] = []
    idle = 0.0
    while True:
        batches = await consumer.getmany(timeout_ms=_POLL_MS)
        got = [record for batch in batches.values() for record in batch]
        records += got
        if got:
            idle = 0.0
            continue
        behind = []
        for tp, listed_end in ends.items():
            # Some brokers (the embedded Tansu) list inexact end offsets; the high watermark
            # of a fetch response is exact, so it wins once a fetch has brought one.
            highwater = consumer.highwater(tp)
            end = listed_end if highwater is None else highwater
            position = await consumer.position(tp)
            if position < end:
                behind.append(f"partition {tp.partition} at offset {position} of {end}")
        if not behind:
            return records
        idle += _POLL_MS / 1000
        if idle >= idle_seconds:
            topic = next(iter(ends)).topic
            raise TopicReadIncomplete(
                f"{topic} could not be read to its end ({', '.join(behind)}); "
                "nothing was redriven, run it again"
            )


@dataclass(frozen=True, slots=True)
class Options:
    chosen: RedriveFilter = RedriveFilter()
    dry_run: bool = False
    input_lookback: timedelta = DEFAULT_INPUT_LOOKBACK
    idle_seconds: float = _IDLE_SECONDS


async def build_plan(kafka: KafkaSettings, options: Options) -> Plan:
    chosen = options.chosen
    since_ms = int(chosen.since.timestamp() * 1000) if chosen.since is not None else None
    dead = (
        await read_topic(kafka, kafka.dlq_topic, since_ms, options.idle_seconds)
        if "dlq" in chosen.sources
        else []
    )
    failures: list[_Failure] = []
    cancelled: set[uuid.UUID] = set()
    if "failed" in chosen.sources:
        failures = latest_failures(
            await read_topic(kafka, kafka.failed_topic, since_ms, options.idle_seconds)
        )
        cancelled = cancelled_ids(
            await read_topic(kafka, kafka.cancelled_topic, since_ms, options.idle_seconds)
        )
    stamps = [r.timestamp for r in dead] + [f.record.timestamp for f in failures]
    if not stamps:
        return Plan()
    # The input topic holds the originals of the failures and what earlier runs redrove.
    lookback_ms = int(options.input_lookback.total_seconds() * 1000)
    inputs = await read_topic(
        kafka, kafka.input_topic, min(stamps) - lookback_ms, options.idle_seconds
    )
    done = already_redriven(inputs)
    plan = Plan()
    plan_dead_letters(dead, chosen, done, plan)
    wanted = {f.result.source_event_id for f in failures if f.result.source_event_id is not None}
    originals = parse_originals(inputs, wanted)
    plan_failures(
        failures, cancelled_ids=cancelled, originals=originals, chosen=chosen, done=done, plan=plan
    )
    return plan


async def run_redrive(kafka: KafkaSettings, options: Options, out: Callable[[str], None]) -> Plan:
    """Plan, print and (unless a dry run) publish; returns the plan."""
    plan = await build_plan(kafka, options)
    verb = "would redrive" if options.dry_run else "redriven"
    if plan.redrives and not options.dry_run:
        producer = AIOKafkaProducer(
            **client_options(kafka),
            acks="all",
            enable_idempotence=kafka.enable_idempotence,
            max_request_size=kafka.max_request_bytes,
        )
        async with started(producer):
            for redrive in plan.redrives:
                await producer.send_and_wait(
                    kafka.input_topic, redrive.value, key=redrive.key, headers=redrive.headers()
                )
                out(redrive.line(verb))
    else:
        for redrive in plan.redrives:
            out(redrive.line(verb))
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(plan.skipped.items()))
    out(f"{len(plan.redrives)} {verb}" + (f"; skipped: {skipped}" if skipped else ""))
    return plan


_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_age(text: str) -> timedelta:
    """``90m``, ``6h``, ``2d``: an age."""
    if text[:-1].isdigit() and text[-1:] in _UNITS:
        return timedelta(**{_UNITS[text[-1]]: int(text[:-1])})
    raise ValueError(f"{text!r} is not an age like 90m, 6h or 2d")


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or an age, counted back from now."""
    with contextlib.suppress(ValueError):
        return (now or datetime.now(UTC)) - parse_age(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time nor an age like 6h") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_sources(values: Sequence[str] | None) -> frozenset[Source]:
    return frozenset(v for v in SOURCES if not values or v in values)
