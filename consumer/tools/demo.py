"""``cancel-processor demo``: the whole product on one machine, results printed as they arrive.

Starts the embedded broker (or uses the cluster ``KAFKA_BOOTSTRAP_SERVERS`` names, with topics
of its own that it deletes at the end), the provider simulator and the processor in this
process, publishes sample events covering every kind of outcome and prints one row per
result (``demo_table``), saying what it is doing while the broker and the processor's group
come up. Exits 0 when every sample produced the results it should, 1 when one is missing or
differs (each named on its own line) or the broker is unreachable, 130 on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, for_code

from consumer.app import run_service
from consumer.config import BOOTSTRAP_ENV, KafkaSettings, Settings, settings_from_mapping
from consumer.core.examples import order_cancelled_example
from consumer.kafka.clients import client_options, started, topic_partitions
from consumer.observability.logs import configure_logging
from consumer.simulator import Simulator
from consumer.tools.demo_table import (
    DEAD_LETTERED,
    WIDTH,
    Expected,
    Result,
    complete,
    header,
    problem,
    read_result,
    rows,
)
from consumer.tools.embedded_broker import EmbeddedBroker
from consumer.tools.topics import TopicsError, ensure_topics, topic_names

# An unreachable address must fail in seconds, not after the clients' 30 s request timeout.
_CONNECT_SECONDS = 5.0
_SETUP_SECONDS = 20.0
_CLEANUP_SECONDS = 10.0
# UNKNOWN_TOPIC_OR_PARTITION on delete: the topic was never created, nothing is left behind.
_UNKNOWN_TOPIC = 3


class DemoError(Exception):
    """Why the demo cannot run: one line for stderr."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One input record and the results it must produce (result events and DLQ copies)."""

    title: str
    value: bytes
    key: str
    expected: tuple[Expected, ...]


def _event(order_id: str, *shipments: dict[str, str], **extra: Any) -> bytes:
    return orjson.dumps(
        order_cancelled_example(
            event_id=str(uuid.uuid4()), order_id=order_id, shipments=list(shipments), **extra
        )
    )


def _ss(shipment_id: str) -> dict[str, str]:
    return {"provider": "shipstation", "shipment_id": shipment_id}


def _mv(shipment_id: str) -> dict[str, str]:
    return {"provider": "mvmnt", "shipment_id": shipment_id, "lookup": "key"}


def samples() -> list[Sample]:
    def one(title: str, order: str, shipment: dict[str, str], *expected: Expected) -> Sample:
        return Sample(title, _event(order, shipment), order, expected)

    cancelled = Expected("cancelled")
    already = Expected("already_cancelled")
    invalid = Expected("failed: invalid_event")
    bad_event = orjson.dumps({"event_type": "order.cancelled", "order_id": "SO-1012"})
    return [
        one("cancelled", "SO-1001", _ss("se-1001"), cancelled),
        one("cancelled", "SO-1002", _mv("SHP-1002"), cancelled),
        one("already cancelled", "SO-1003", _ss("se-cancelled-1003"), already),
        one("already cancelled", "SO-1004", _mv("SHP-cancelled-1004"), already),
        one("not found", "SO-1005", _ss("se-notfound-1005"), Expected("failed: not_found")),
        one("delivered", "SO-1006", _mv("SHP-delivered-1006"), Expected("failed: conflict")),
        one("label not voided", "SO-1007", _ss("se-labeled-1007"), Expected("failed: conflict")),
        # The simulator answers 429 twice, then cancels: the third call succeeds.
        one("two 429s first", "SO-1008", _ss("se-ratelimit2-1008"), Expected("cancelled", 3)),
        one("one 503 first", "SO-1009", _mv("SHP-flaky1-1009"), Expected("cancelled", 2)),
        Sample(
            "two providers",
            _event("SO-1010", _ss("se-1010"), _mv("SHP-1010")),
            "SO-1010",
            (cancelled, cancelled),
        ),
        one(
            "unknown provider",
            "SO-1011",
            {"provider": "fedex", "shipment_id": "FX-1011"},
            Expected("failed: unknown_provider"),
        ),
        # Dead-lettered, and its order still gets a cancel-failed.
        Sample("invalid event", bad_event, "SO-1012", (Expected(DEAD_LETTERED), invalid)),
        Sample("not JSON", b"{not json", "SO-1013", (Expected(DEAD_LETTERED),)),
    ]


def demo_settings(bootstrap: str, simulator: Simulator, suffix: str) -> Settings:
    return settings_from_mapping(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "group_id": f"demo-processor{suffix}",
                "input_topic": f"orders.cancelled{suffix}",
                "cancelled_topic": f"shipments.cancelled{suffix}",
                "failed_topic": f"shipments.cancel-failed{suffix}",
                "dlq_topic": f"orders.cancelled.dlq{suffix}",
                "retry_topic": f"orders.cancelled.retry{suffix}",
                # The private embedded broker (no suffix) has no idempotent producer; an
                # external cluster (KAFKA_BOOTSTRAP_SERVERS) is Kafka.
                "enable_idempotence": bool(suffix),
                "commit_interval_seconds": 0.5,
                # Tansu holds a group's first join for half the session timeout.
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
            },
            # A stop (Ctrl-C) must not wait out production's drain grace: when the terminal's
            # Ctrl-C also stopped the embedded broker, nothing in flight can finish anyway.
            "processing": {"drain_grace_seconds": 1.0, "retry": {"backoff_initial_seconds": 0.1}},
            "telemetry": {"log_level": "ERROR", "log_format": "text"},
            "providers": simulator.provider_accounts(),
        },
        {},
        source="demo",
    )


# Exit codes of a demo stopped by a signal, as a shell reports them (128 + the signal).
_SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


async def run_demo(timeout: float = 60.0) -> int:
    """0 when every sample produced its expected results, 1 when not, 130 on Ctrl-C (143 on
    SIGTERM); the embedded broker, the simulator and an external cluster's demo topics are
    cleaned up in every case."""
    configure_logging("ERROR", "text")
    interrupted = asyncio.Event()
    stopped_by: list[int] = []
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()

    def on_signal(code: int) -> None:
        # A flag besides the cancellation: a library call that swallows the cancellation
        # must not let the demo carry on and exit 0.
        if not interrupted.is_set():
            print("stopping…", file=sys.stderr, flush=True)
        stopped_by.append(code)
        interrupted.set()
        main.cancel()

    for sig, code in _SIGNAL_EXIT_CODES.items():
        loop.add_signal_handler(sig, on_signal, code)
    try:
        code = await _run_demo(timeout, interrupted)
    except asyncio.CancelledError:
        if not interrupted.is_set():
            raise
        return stopped_by[0]
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in _SIGNAL_EXIT_CODES:
            loop.remove_signal_handler(sig)
    return stopped_by[0] if stopped_by else code


def _say(line: str) -> None:
    # Progress lines must show while the demo waits, also when stdout is a pipe.
    print(line, flush=True)


async def _run_demo(timeout: float, interrupted: asyncio.Event) -> int:
    async with _bootstrap() as (bootstrap, suffix), Simulator() as simulator:
        settings = demo_settings(bootstrap, simulator, suffix)
        try:
            await _create_topics(settings.kafka)
            return await _run_processor(settings, timeout, interrupted)
        except KafkaError as exc:
            raise DemoError(f"kafka broker at {bootstrap}: {exc}") from None
        finally:
            # Last, once no client of ours is left to auto-create them again.
            if suffix:
                await _delete_topics(settings.kafka)


async def _create_topics(kafka: KafkaSettings) -> None:
    try:
        async with asyncio.timeout(_SETUP_SECONDS):
            await ensure_topics(kafka, partitions=3)
    except TimeoutError:
        raise DemoError(
            f"the Kafka broker at {kafka.bootstrap_servers} did not create the topics "
            f"within {_SETUP_SECONDS:g}s"
        ) from None
    except (TopicsError, RuntimeError) as exc:  # unreachable, refused, cannot create
        raise DemoError(str(exc)) from None


@contextlib.asynccontextmanager
async def _bootstrap() -> AsyncIterator[tuple[str, str]]:
    """The broker to use and a topic suffix (empty on the private embedded broker)."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        suffix = f".demo-{uuid.uuid4().hex[:8]}"
        _say(f"using the Kafka cluster at {external} ({BOOTSTRAP_ENV}), topics *{suffix}")
        await _check_broker(external)
        yield external, suffix
        return
    _say("starting the embedded broker…")
    async with EmbeddedBroker() as broker:
        _say(f"broker ready at {broker.bootstrap_servers}")
        yield broker.bootstrap_servers, ""


async def _check_broker(bootstrap: str) -> None:
    """Fail within seconds, in one line, when no Kafka broker answers: an address that drops
    packets would hold every client for its whole request timeout."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        async with asyncio.timeout(_CONNECT_SECONDS):
            await admin.start()
    except (KafkaError, OSError, TimeoutError):
        raise DemoError(
            f"no Kafka broker answers at {bootstrap}; start one there, or unset "
            f"{BOOTSTRAP_ENV} to use the embedded broker"
        ) from None
    finally:
        await admin.close()


async def _delete_topics(kafka: KafkaSettings) -> None:
    """Delete the demo's topics from the external cluster; a failure is one warning line."""
    names = topic_names(kafka)
    admin = AIOKafkaAdminClient(**client_options(kafka), request_timeout_ms=5000)
    reason = ""
    try:
        async with asyncio.timeout(_CLEANUP_SECONDS):
            await admin.start()
            response = await admin.delete_topics(names)
        codes = response.topic_error_codes
        reason = ", ".join(
            f"{topic}: {for_code(code).__name__}"
            for topic, code in codes
            if code not in (0, _UNKNOWN_TOPIC)
        )
    except (KafkaError, OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
    finally:
        await admin.close()
    if reason:
        print(f"warning: demo topics {', '.join(names)} not deleted: {reason}", file=sys.stderr)


async def _run_processor(settings: Settings, timeout: float, interrupted: asyncio.Event) -> int:
    stop = asyncio.Event()
    processor = asyncio.create_task(run_service(settings, stop))
    try:
        code = await _publish_and_watch(settings, samples(), timeout, interrupted, processor)
    finally:
        stop.set()
        await asyncio.wait({processor})  # its error, if any, is reported below
    if not processor.cancelled() and (error := processor.exception()) is not None:
        # Its own error says more than "rerun with a longer --timeout" would.
        raise DemoError(f"the processor stopped: {error}")
    if code is None:
        raise DemoError("the processor stopped before every result arrived")
    return code


async def _publish_and_watch(
    settings: Settings,
    batch: list[Sample],
    timeout: float,
    interrupted: asyncio.Event,
    processor: asyncio.Task[None],
) -> int | None:
    kafka = settings.kafka
    watcher = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False)
    async with started(watcher):
        partitions = await topic_partitions(
            kafka, (kafka.cancelled_topic, kafka.failed_topic, kafka.dlq_topic)
        )
        watcher.assign(partitions)
        await watcher.seek_to_beginning(*partitions)
        await _publish(settings, batch)
        _say(f"published {len(batch)} sample events; waiting for the processor to join its group…")
        deadline = asyncio.get_running_loop().time() + timeout

        def ended() -> bool:
            # A processor that stopped on its own will produce nothing more.
            now = asyncio.get_running_loop().time()
            return interrupted.is_set() or processor.done() or now >= deadline

        got = await _watch(watcher, kafka.dlq_topic, batch, ended)
    if interrupted.is_set():
        return 130
    if processor.done():
        return None  # _run_processor says why
    return _verdict(batch, got, timeout)


async def _watch(
    watcher: AIOKafkaConsumer, dlq_topic: str, batch: list[Sample], ended: Callable[[], bool]
) -> dict[str, list[Result]]:
    """Print results as they arrive until every sample has its share or ``ended()``."""
    cases = {s.key: s.title for s in batch}
    got: dict[str, list[Result]] = {s.key: [] for s in batch}
    while not all(complete(s.expected, got[s.key]) for s in batch) and not ended():
        for records in (await watcher.getmany(timeout_ms=250)).values():
            for record in records:
                result = read_result(record, dlq_topic)
                if not any(got.values()):
                    _say("")
                    for line in header():
                        _say(line)
                for line in rows(cases.get(result.order, "?"), result):
                    _say(line)
                got.setdefault(result.order, []).append(result)
    return got


def _verdict(batch: list[Sample], got: dict[str, list[Result]], timeout: float) -> int:
    problems = [
        f"{s.key} {s.title}: {found}"
        for s in batch
        if (found := problem(s.expected, got[s.key])) is not None
    ]
    records = sum(len(results) for results in got.values())
    if not problems:
        _say(f"\nall {len(batch)} samples gave the expected results ({records} records)")
        return 0
    lines = [
        f"error: {len(problems)} of {len(batch)} samples did not give the expected results "
        f"within {timeout:g}s:",
        *("  " + textwrap.shorten(line, WIDTH - 2, placeholder=" …") for line in problems),
    ]
    if records == 0:
        lines.append(
            "hint: the processor needs a few seconds to join its group: "
            "rerun with a longer --timeout"
        )
    elif not all(complete(s.expected, got[s.key]) for s in batch):
        lines.append("hint: rerun with a longer --timeout")
    print("\n" + "\n".join(lines), file=sys.stderr)
    return 1


async def _publish(settings: Settings, batch: list[Sample]) -> None:
    producer = AIOKafkaProducer(
        **client_options(settings.kafka),
        acks="all",
        enable_idempotence=settings.kafka.enable_idempotence,
    )
    async with started(producer):
        for sample in batch:
            await producer.send_and_wait(
                settings.kafka.input_topic, sample.value, key=sample.key.encode()
            )
