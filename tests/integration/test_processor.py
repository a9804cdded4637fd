"""The processor end to end: real broker, real simulator, real HTTP."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from consumer.core import headers as h
from consumer.core.events import CancelFailed, ShipmentCancelled, result_event_id
from consumer.kafka.clients import client_options
from consumer.simulator import Simulator
from tests.integration.kafka_helpers import Cluster, end_offsets, order_event, running_processor

TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_happy_path_cancels_at_both_providers_and_publishes_one_result_each(
    cluster: Cluster, simulator: Simulator
) -> None:
    event = order_event("SO-1001", ("shipstation", "se-28529731"), ("mvmnt", "SHP-12345"))
    event["shipments"][1]["lookup"] = "key"
    sent = [await cluster.send(event, headers=[("traceparent", TRACEPARENT)])]

    async with running_processor(cluster.settings):
        records = await cluster.collect([cluster.kafka.cancelled_topic], count=2)

    assert len(records) == 2, "exactly one result per shipment"
    by_provider = {}
    for record in records:
        result = ShipmentCancelled.model_validate(orjson.loads(record.value))
        by_provider[result.provider] = (record, result)
        assert record.key == b"SO-1001"
        headers = dict(record.headers)
        assert headers[h.CONTENT_TYPE] == b"application/json"
        assert headers[h.EVENT_TYPE] == b"shipment.cancelled"
        assert headers[h.SOURCE_EVENT_ID] == event["event_id"].encode()
        assert headers[h.TRACEPARENT].startswith(b"00-0af7651916cd43dd8448eb211c80319c-")
        assert result.trace_id == "0af7651916cd43dd8448eb211c80319c", "the ERP's trace continues"
        assert result.event_id == result_event_id(
            uuid.UUID(event["event_id"]), result.provider, result.shipment_id
        )
    assert by_provider["shipstation"][1].outcome == "cancelled"
    assert by_provider["mvmnt"][1].provider_status == "CANCELED"
    assert simulator.calls("shipstation", "se-28529731") == 1
    assert simulator.calls("mvmnt", "SHP-12345") == 1
    committed = await cluster.committed()
    for partition, end in end_offsets(sent).items():
        assert committed[partition] == end, "the input offset is committed after the results"


async def test_requests_conform_to_the_provider_contracts(
    cluster: Cluster, simulator: Simulator
) -> None:
    event = order_event("SO-7", ("shipstation", "se-7"), ("mvmnt", "SHP-7"))
    event["shipments"][1]["lookup"] = "key"
    await cluster.send(event)
    async with running_processor(cluster.settings):
        await cluster.collect([cluster.kafka.cancelled_topic], count=2)

    requests = simulator.recent_requests()
    cancels = [r for r in requests if r["path"].endswith("/cancel")]
    [ss] = [r for r in cancels if r["path"] == "/shipstation/v2/shipments/se-7/cancel"]
    assert ss["method"] == "PUT"
    assert "api-key" in [name.lower() for name in ss["headers"]]
    assert "idempotency-key" in [name.lower() for name in ss["headers"]]
    [mv] = [r for r in cancels if r["path"] == "/mvmnt/v1/shipments/SHP-7/cancel"]
    assert mv["method"] == "POST"
    assert mv["query"] == {"by": "key"}
    assert mv["json"] == {"reason": "Customer changed their mind"}
    assert "authorization" in [name.lower() for name in mv["headers"]]
    tokens = [r for r in requests if r["path"] == "/mvmnt/oauth2/token"]
    assert len(tokens) == 1, "the OAuth token is fetched once and reused"


async def test_failures_become_cancel_failed_events_with_their_category(
    cluster: Cluster, simulator: Simulator
) -> None:
    await cluster.send(order_event("SO-1", ("shipstation", "se-notfound-1")))
    await cluster.send(order_event("SO-2", ("mvmnt", "SHP-delivered-2")))
    await cluster.send(order_event("SO-3", ("fedex", "FX-3")))
    await cluster.send(order_event("SO-4", ("mvmnt", "SHP-cancelled-4")))
    await cluster.send(order_event("SO-5", ("shipstation", "se-ratelimit1-5")))

    async with running_processor(cluster.settings):
        results = await cluster.results(count=5)

    by_order = {r["order_id"]: r for r in results}
    assert len(results) == 5
    assert by_order["SO-1"]["error"]["category"] == "not_found"
    assert by_order["SO-2"]["error"]["category"] == "conflict"
    assert by_order["SO-3"]["error"]["category"] == "unknown_provider"
    assert by_order["SO-4"]["outcome"] == "already_cancelled"
    assert by_order["SO-5"]["outcome"] == "cancelled"
    assert by_order["SO-5"]["attempts"] == 2
    for failed in (by_order["SO-1"], by_order["SO-2"], by_order["SO-3"]):
        CancelFailed.model_validate(failed)
        assert failed["error"]["retryable"] is False
    assert simulator.calls("shipstation", "se-notfound-1") == 1, "permanent errors not retried"


async def test_an_invalid_record_goes_to_the_dlq_and_the_partition_keeps_flowing(
    cluster: Cluster, simulator: Simulator
) -> None:
    sent = [
        await cluster.send(order_event("SO-A", ("shipstation", "se-a")), partition=0),
        await cluster.send(b"{not json", key="SO-B", partition=0),
        await cluster.send(None, key="SO-C", partition=0),
        await cluster.send(
            orjson.dumps({"order_id": "SO-D", "event_type": "order.cancelled"}),
            key="SO-D",
            partition=0,
        ),
        await cluster.send(order_event("SO-E", ("shipstation", "se-e")), partition=0),
    ]

    async with running_processor(cluster.settings):
        dead = await cluster.collect([cluster.kafka.dlq_topic], count=3)
        results = await cluster.results(count=3)

    # Dead letters keep the original key, so they spread over the DLQ's partitions.
    dead.sort(key=lambda record: int(dict(record.headers)[h.DLQ_SOURCE_OFFSET]))
    assert [r.value for r in dead] == [
        b"{not json",
        None,
        orjson.dumps({"order_id": "SO-D", "event_type": "order.cancelled"}),
    ], "original bytes, untouched"
    for record, meta in zip(dead, sent[1:4], strict=True):
        headers = dict(record.headers)
        assert headers[h.DLQ_SOURCE_TOPIC] == cluster.kafka.input_topic.encode()
        assert headers[h.DLQ_SOURCE_PARTITION] == b"0"
        assert headers[h.DLQ_SOURCE_OFFSET] == str(meta.offset).encode()
        assert headers[h.DLQ_ERROR_CATEGORY] == b"invalid_event"
        assert headers[h.DLQ_ERROR_MESSAGE]
    assert [record.key for record in dead] == [b"SO-B", b"SO-C", b"SO-D"]
    outcomes = {(r["order_id"], r.get("outcome") or r["error"]["category"]) for r in results}
    assert outcomes == {("SO-A", "cancelled"), ("SO-E", "cancelled"), ("SO-D", "invalid_event")}
    assert (await cluster.committed())[0] == end_offsets(sent)[0]


async def test_events_of_one_order_are_handled_in_order_while_orders_run_concurrently(
    cluster: Cluster, simulator: Simulator
) -> None:
    # Earlier events of each order are slower, so any overtaking would show.
    expected: dict[str, list[str]] = defaultdict(list)
    for order in range(12):
        for step in range(4):
            event = order_event(
                f"SO-{order}", ("shipstation", f"se-{order}-{step}-slow{(4 - step) * 40}")
            )
            expected[f"SO-{order}"].append(event["event_id"])
            await cluster.send(event, partition=0)

    started = asyncio.get_running_loop().time()
    async with running_processor(cluster.settings):
        results = await cluster.results(count=48)
    elapsed = asyncio.get_running_loop().time() - started

    seen: dict[str, list[str]] = defaultdict(list)
    for result in results:
        seen[result["order_id"]].append(result["source_event_id"])
    assert seen == expected
    # Sequentially this is 12 x (160+120+80+40) ms = 4.8 s of provider latency alone.
    assert elapsed < 4.8, "orders on one partition must run concurrently"


async def test_a_restart_resumes_from_the_committed_offsets_without_losing_input(
    cluster: Cluster, simulator: Simulator
) -> None:
    first = [
        await cluster.send(order_event(f"SO-{i}", ("shipstation", f"se-{i}-slow100")))
        for i in range(30)
    ]
    async with running_processor(cluster.settings):
        await cluster.results(count=5)
    # Stopped mid-stream with work in flight; more input arrives while it is down.
    second = [
        await cluster.send(order_event(f"SO-{i}", ("mvmnt", f"SHP-{i}"))) for i in range(30, 40)
    ]
    async with running_processor(cluster.settings):
        results = await cluster.results(count=40)

    orders = {r["order_id"] for r in results}
    assert orders == {f"SO-{i}" for i in range(40)}, "no input lost"
    assert len(results) == 40, "a graceful stop repeats no work"
    for i in range(30):
        assert simulator.calls("shipstation", f"se-{i}-slow100") == 1
    committed = await cluster.committed()
    for partition, end in end_offsets(first + second).items():
        assert committed[partition] == end


async def test_a_member_joining_mid_stream_takes_over_partitions_without_losing_input(
    cluster: Cluster, simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consumer.kafka")
    sent = [
        await cluster.send(order_event(f"SO-{i}", ("shipstation", f"se-{i}-slow50")))
        for i in range(90)
    ]
    async with running_processor(cluster.settings):
        await cluster.results(count=10)
        # The rebalance revokes partitions with work in flight: it is drained and committed.
        async with running_processor(cluster.settings):
            results = await cluster.results(count=90, timeout=60)

    messages = [record.getMessage() for record in caplog.records]
    assert "partitions revoked" in messages, "the second member really joined"
    assert {r["order_id"] for r in results} == {f"SO-{i}" for i in range(90)}
    by_id: dict[str, list[dict[str, object]]] = defaultdict(list)
    for result in results:
        by_id[str(result["event_id"])].append(result)
    assert len(by_id) == 90
    repeated = [i for i in range(90) if simulator.calls("shipstation", f"se-{i}-slow50") != 1]
    assert repeated == [], "drained revocation repeats no work"
    committed = await cluster.committed()
    for partition, end in end_offsets(sent).items():
        assert committed[partition] == end


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_records_compressed_with_any_kafka_codec_are_processed(
    cluster: Cluster, codec: str
) -> None:
    producer = AIOKafkaProducer(
        **client_options(cluster.kafka),
        acks="all",
        enable_idempotence=cluster.kafka.enable_idempotence,
        compression_type=codec,
    )
    await producer.start()
    try:
        event = order_event(f"SO-{codec}", ("shipstation", f"se-{codec}"))
        await producer.send_and_wait(
            cluster.kafka.input_topic, orjson.dumps(event), key=event["order_id"].encode()
        )
    finally:
        await producer.stop()

    async with running_processor(cluster.settings):
        results = await cluster.results(count=1)

    assert [(r["order_id"], r["outcome"]) for r in results] == [(f"SO-{codec}", "cancelled")]
