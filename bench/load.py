"""Input the benchmark produces and the results it reads back, with their timestamps."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumer.config import KafkaSettings
from consumer.core import headers as h
from consumer.core.examples import order_cancelled_example
from consumer.tools.topics import ensure_topics

PARTITIONS = 6
PROVIDERS = ("shipstation", "mvmnt")


@dataclass(frozen=True, slots=True)
class Topics:
    """One scenario's four topics and consumer group, named apart from every other run."""

    tag: str

    def kafka(self, bootstrap_servers: str, group: str = "processor") -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=bootstrap_servers,
            group_id=f"bench-{self.tag}-{group}",
            input_topic=f"orders.cancelled.{self.tag}",
            cancelled_topic=f"shipments.cancelled.{self.tag}",
            failed_topic=f"shipments.cancel-failed.{self.tag}",
            dlq_topic=f"orders.cancelled.dlq.{self.tag}",
            retry_topic=f"orders.cancelled.retry.{self.tag}",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )


async def create_topics(kafka: KafkaSettings) -> None:
    await ensure_topics(kafka, partitions=PARTITIONS)


def events(
    count: int, orders: int, prefix: str, providers: tuple[str, ...] = PROVIDERS
) -> Iterator[tuple[bytes, bytes, str]]:
    """``count`` order-cancelled events over ``orders`` orders: (key, value, event_id).

    One shipment each, ``providers`` taking turns, every shipment id new (a plain 204/200
    cancel). Orders take turns (round r holds event r of every order), as cancellations of
    many orders arrive interleaved; events of one order still share a key and a partition.
    """
    for n in range(count):
        order = n % orders
        event_id = str(uuid.uuid4())
        order_id = f"SO-{prefix}-{order}"
        provider = providers[n % len(providers)]
        shipment = f"{'se' if provider == 'shipstation' else 'SHP'}-{prefix}-{n}"
        value = orjson.dumps(
            order_cancelled_example(
                event_id=event_id,
                order_id=order_id,
                shipments=[{"provider": provider, "shipment_id": shipment}],
            )
        )
        yield order_id.encode(), value, event_id


def traceparent() -> bytes:
    # An ERP-side trace, as a traced producer would send it; the processor continues it.
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01".encode()


async def send_event(
    client: AIOKafkaProducer,
    kafka: KafkaSettings,
    key: bytes,
    value: bytes,
    timestamp_ms: int | None = None,
) -> asyncio.Future[object]:
    """Queue one input event with an ERP-side ``traceparent``; returns its ack future."""
    ack: asyncio.Future[object] = await client.send(
        kafka.input_topic,
        value,
        key=key,
        headers=[(h.TRACEPARENT, traceparent())],
        timestamp_ms=timestamp_ms,
    )
    return ack


@contextlib.asynccontextmanager
async def producer(kafka: KafkaSettings, linger_ms: int = 5) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
    )
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def preload(
    kafka: KafkaSettings,
    count: int,
    orders: int,
    prefix: str,
    *,
    keep: bool = True,
    providers: tuple[str, ...] = PROVIDERS,
) -> dict[str, float]:
    """Produce ``count`` events as fast as acks allow; returns event_id -> produce time (ms),
    or nothing when ``keep`` is false (a million ids are a lot of memory for nothing)."""
    sent: dict[str, float] = {}
    async with producer(kafka) as client:
        pending: list[asyncio.Future[object]] = []
        for key, value, event_id in events(count, orders, prefix, providers):
            if keep:
                sent[event_id] = time.time() * 1000
            pending.append(await send_event(client, kafka, key, value))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    return sent


async def paced(
    kafka: KafkaSettings,
    rate: float,
    seconds: float,
    orders: int,
    prefix: str,
    *,
    providers: tuple[str, ...] = PROVIDERS,
    until: asyncio.Event | None = None,
) -> dict[str, float]:
    """Produce at ``rate`` events per second for ``seconds``, or until ``until`` is set if
    that comes first; returns event_id -> send time."""
    sent: dict[str, float] = {}
    total = int(rate * seconds)
    pending: list[asyncio.Future[object]] = []
    # Each tick sends the events that fell due since the last one, in one produce request:
    # a request per event costs the broker and this process CPU the processor under test
    # needs (two cores for all of them).
    # An event's input time is taken when it is sent, so the tick adds nothing to latency.
    tick = 0.02
    due = iter(events(total, orders, prefix, providers))
    async with producer(kafka, linger_ms=0) as client, driver_collector_off():
        start = time.monotonic()
        while len(sent) < total and not (until is not None and until.is_set()):
            elapsed = time.monotonic() - start
            for key, value, event_id in itertools.islice(
                due, min(total, int(elapsed * rate) + 1) - len(sent)
            ):
                now_ms = time.time() * 1000
                sent[event_id] = now_ms
                pending.append(await send_event(client, kafka, key, value, int(now_ms)))
            await asyncio.sleep(tick)
        await asyncio.gather(*pending)
    return sent


@contextlib.asynccontextmanager
async def driver_collector_off() -> AsyncIterator[None]:
    """This process's cyclic garbage collector off while it stamps and sends timed events.

    The driver holds every event id and result of the scenario (tens of thousands of
    containers); a full collection of them paused it for 40-70 ms between stamping an
    event and sending it, which the figures then counted as processor latency. Reference
    counting still frees what a paced run drops; the collector resumes afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class Results:
    """Result records seen so far: per source event, the result's produce time (ms)."""

    at: dict[str, list[float]] = field(default_factory=dict)
    failed: int = 0
    # Source events with a cancel-failed result.
    failed_events: set[str] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def count_of(self, event_ids: dict[str, float]) -> int:
        return sum(1 for event_id in event_ids if event_id in self.at)

    async def wait_for(self, event_ids: dict[str, float], timeout: float) -> bool:
        """True once every event has arrived (its result, or itself read back); False when
        ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while self.count_of(event_ids) < len(event_ids):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout=min(remaining, 1.0))
        return True


class Collector:
    """Reads both result topics from the start, without a group, in the background."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self.results = Results()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        await self._consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in (self._kafka.cancelled_topic, self._kafka.failed_topic)
            for p in range(PARTITIONS)
        ]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _collect(self) -> None:
        results = self.results
        failed_topic = self._kafka.failed_topic
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, records in batches.items():
                for record in records:
                    source = dict(record.headers).get(h.SOURCE_EVENT_ID)
                    if source is None:
                        continue
                    event_id = source.decode()
                    results.at.setdefault(event_id, []).append(float(record.timestamp))
                    if tp.topic == failed_topic:
                        results.failed += 1
                        results.failed_events.add(event_id)
            if batches:
                results.arrived.set()

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No fetching of results inside the block; they are read after it.

        The results' own timestamps give the latencies, so reading them while the load is
        paced would only load the broker and this process on the cores the processor uses.
        """
        partitions = self._consumer.assignment()
        self._consumer.pause(*partitions)
        try:
            yield
        finally:
            self._consumer.resume(*partitions)

    async def first_result(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.results.at:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def wait_for(self, event_ids: dict[str, float], timeout: float) -> bool:
        """True once every event has a result; False when ``timeout`` passes first."""
        return await self.results.wait_for(event_ids, timeout)


async def parks(kafka: KafkaSettings, timeout: float = 30.0) -> Counter[str]:
    """The records in the retry topic now, by park reason (``?``: a record not read)."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    partitions = [TopicPartition(kafka.retry_topic, p) for p in range(PARTITIONS)]
    reasons: Counter[str] = Counter()
    await reader.start()
    try:
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        ends = await reader.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = [await reader.position(tp) for tp in partitions]
            if all(at >= ends[tp] for at, tp in zip(positions, partitions, strict=True)):
                break
            batches = await reader.getmany(timeout_ms=200, max_records=10_000)
            for records in batches.values():
                for record in records:
                    reasons[_park_reason(record.value)] += 1
        else:
            raise RuntimeError(f"{kafka.retry_topic}: not read to its end in {timeout:.0f}s")
    finally:
        await reader.stop()
    return reasons


def _park_reason(value: bytes | None) -> str:
    try:
        reason = orjson.loads(value or b"")["reason"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "?"
    return str(reason)


async def broker_alone(
    kafka: KafkaSettings,
    rate: float,
    seconds: float,
    orders: int,
    prefix: str,
    *,
    fetch_max_wait_ms: int,
) -> Measured:
    """The latency runs' paced load read back by a bare consumer, with no processor: the
    broker's own share of their latency (produce, store, the fetch's wait and walk).

    Latency here ends when a fetched record reaches the reader, where the processor's
    handling would begin. Fetches wait as long as the processor's do.
    """
    arrived = Results()
    reader = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    partitions = [TopicPartition(kafka.input_topic, p) for p in range(PARTITIONS)]
    await reader.start()
    try:
        reader.assign(partitions)
        await reader.seek_to_end(*partitions)
        for partition in partitions:
            await reader.position(partition)  # the end now, before the load starts
        reading = asyncio.create_task(_read_arrivals(reader, arrived))
        try:
            sent = await paced(kafka, rate, seconds, orders, prefix)
            await arrived.wait_for(sent, timeout=30)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    finally:
        await reader.stop()
    return measure(sent, arrived)


async def _read_arrivals(reader: AIOKafkaConsumer, arrived: Results) -> None:
    while True:
        batches = await reader.getmany(timeout_ms=200, max_records=10_000)
        now_ms = time.time() * 1000
        for records in batches.values():
            for record in records:
                if record.value is not None:
                    event_id = orjson.loads(record.value)["event_id"]
                    arrived.at.setdefault(event_id, []).append(now_ms)
        if batches:
            arrived.arrived.set()


@dataclass(frozen=True, slots=True)
class Measured:
    events: int
    results: int
    duplicates: int
    missing: int
    failed: int
    events_per_s: float
    p50_ms: float
    p99_ms: float


def measure(sent: dict[str, float], results: Results) -> Measured:
    """Throughput from the first to the last result; latency from input to first result."""
    firsts: list[float] = []
    latencies: list[float] = []
    duplicates = 0
    for event_id, produced in sent.items():
        seen = results.at.get(event_id)
        if not seen:
            continue
        duplicates += len(seen) - 1
        first = min(seen)
        firsts.append(first)
        latencies.append(first - produced)
    span_s = (max(firsts) - min(firsts)) / 1000 if len(firsts) > 1 else 0.0
    latencies.sort()
    return Measured(
        events=len(sent),
        results=len(firsts),
        duplicates=duplicates,
        missing=len(sent) - len(firsts),
        failed=results.failed,
        events_per_s=(len(firsts) - 1) / span_s if span_s > 0 else 0.0,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
    )


def percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]
