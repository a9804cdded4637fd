"""Scenarios 8-9: poison records and hostile headers among ordinary input."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import orjson
import pytest

from tests.faults.conftest import FaultEnv
from tests.faults.harness import (
    Input,
    OutputReader,
    cluster_for,
    dlq_sources,
    event_record,
    poison_record,
    produce,
    result_ids,
)
from tests.faults.streams import expected_ids, order_stream
from tests.integration.kafka_helpers import order_event

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

MB = 1024 * 1024


def poison_round(tag: str) -> list[Input]:
    """One of every kind of unreadable record, plus an unknown provider (readable, but no
    account to call). Shipment ids say "poison": no provider may ever see them."""
    schema_invalid = {
        "order_id": f"SO-{tag}-schema",
        "event_type": "order.cancelled",
        "shipments": [{"provider": "shipstation", "shipment_id": f"se-poison-{tag}-schema"}],
    }
    version_2 = order_event(f"SO-{tag}-v2", ("shipstation", f"se-poison-{tag}-v2"))
    version_2["schema_version"] = 2
    return [
        poison_record(f"SO-{tag}-json", b'{"event_id": "not closed", "order_id": '),
        poison_record(f"SO-{tag}-utf8", b'{"order_id": "\xff\xfe\xfd"}'),
        poison_record(f"SO-{tag}-null", None),
        poison_record(f"SO-{tag}-big", b'{"order_id": "big", "pad": "' + b"x" * (2 * MB) + b'"}'),
        poison_record(f"SO-{tag}-schema", orjson.dumps(schema_invalid)),
        poison_record(f"SO-{tag}-v2", orjson.dumps(version_2)),
        event_record(order_event(f"SO-{tag}-unknown", ("fedex", f"FX-poison-{tag}"))),
    ]


def interleave(poison: list[Input], ordinary: list[Input]) -> list[Input]:
    mixed: list[Input] = []
    step = max(1, len(ordinary) // len(poison))
    for index, record in enumerate(poison):
        mixed += ordinary[index * step : (index + 1) * step]
        mixed.append(record)
    return mixed + ordinary[len(poison) * step :]


def has_all(results: set[str], dead: set[tuple[int, int]], reader: OutputReader) -> bool:
    return results <= result_ids(reader) and dead <= dlq_sources(reader)


async def test_8_poison_input_goes_to_the_dlq_once_and_memory_stays_flat(
    faults: FaultEnv,
) -> None:
    sim = faults.simulator()
    rounds = 6
    async with sim:
        config = faults.config(sim)
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        sent: list[Input] = []
        rss: list[int] = []
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            await processor.wait_for_log("partitions assigned", timeout=60)
            for number in range(rounds):
                batch = interleave(poison_round(f"r{number}"), order_stream(60, 12))
                sent += await produce(cluster, batch)
                wanted = expected_ids(sent)
                dead = {(r.partition, r.offset) for r in sent if r.poison}
                await reader.wait_for(partial(has_all, wanted, dead), timeout=60)
                rss.append(processor.rss_bytes())
            await processor.stop()
            requests = await sim.requests()
            report = await faults.finish("8 poison input", sent, reader, cluster, sim)

    assert report.lost == 0, report.lost_ids
    assert report.duplicates == 0, report.duplicate_ids
    assert report.committed_equals_end
    assert not [r["path"] for r in requests if "poison" in r["path"]], "poison reached a provider"
    by_source = {
        (int(dict(r.headers)["dlq-source-partition"]), int(dict(r.headers)["dlq-source-offset"])): r
        for r in reader.dead_letters
    }
    for record in sent:
        if not record.poison:
            continue
        dead = by_source[(record.partition, record.offset)]
        headers = dict(dead.headers)
        assert headers["dlq-source-topic"] == settings.kafka.input_topic.encode()
        assert headers["dlq-error-category"] == b"invalid_event"
        assert dead.key == record.key, "the original key, untouched"
        if record.value is not None:
            assert dead.value == record.value, "the original bytes, untouched"
    unknown = [v for v in reader.result_values() if v.get("provider") == "fedex"]
    assert len(unknown) == rounds
    assert {v["error"]["category"] for v in unknown} == {"unknown_provider"}
    # 12 MB of oversize records went through; the process did not keep them.
    growth = rss[-1] - rss[1]
    assert growth < 25 * MB, [round(r / MB, 1) for r in rss]
    report.notes.update(
        rss_mb=[round(r / MB, 1) for r in rss], dead_letters=len(reader.dead_letters)
    )


HOSTILE_TRACEPARENT = b"00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-b7ad6b7169203331-01"
VALID_TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def hostile_headers(index: int) -> list[tuple[str, bytes]]:
    headers = [
        ("tracestate", b"vendor=" + b"a" * 10_240),
        ("Authorization", b"Bearer hostile-inbound-token"),
        ("API-Key", b"hostile-inbound-key"),
        ("Cookie", b"session=hostile"),
        ("X-Hostile-Header", b"\xff\xfe not utf-8"),
        ("Idempotency-Key", b"hostile-idempotency-key"),
    ]
    traceparent = HOSTILE_TRACEPARENT if index % 2 == 0 else VALID_TRACEPARENT
    return [("traceparent", traceparent), *headers]


async def test_9_hostile_headers_are_ignored_and_never_reach_a_provider(
    faults: FaultEnv,
) -> None:
    sim = faults.simulator()
    async with sim:
        config = faults.config(sim)
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        records = [
            Input(r.key, r.value, hostile_headers(i), r.event)
            for i, r in enumerate(order_stream(80, 20))
        ]
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            sent = await produce(cluster, records)
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=120)
            await processor.stop()
            requests = await sim.requests()
            report = await faults.finish("9 hostile headers", sent, reader, cluster, sim)

    assert report.lost == 0
    assert report.duplicates == 0
    assert report.order_violations == 0
    assert {v["outcome"] for v in reader.result_values()} == {"cancelled"}
    # Header names only are recorded; a leaked value would also have broken auth above.
    seen = {name.lower() for request in requests for name in request["headers"]}
    assert not seen & {"cookie", "x-hostile-header"}, seen
    for request in requests:
        names = {name.lower() for name in request["headers"]}
        if request["path"].startswith("/shipstation/"):
            assert "authorization" not in names, request
        else:
            assert "api-key" not in names, request
    idempotency = [r["idempotency_key"] for r in requests if r["idempotency_key"]]
    assert idempotency
    assert "hostile-idempotency-key" not in idempotency
    by_event = {str(r.event["event_id"]): i for i, r in enumerate(sent) if r.event}
    for record in reader.results:
        value: dict[str, Any] = orjson.loads(record.value or b"{}")
        headers = dict(record.headers)
        assert len(headers.get("tracestate", b"")) <= 512
        index = by_event[value["source_event_id"]]
        if index % 2:
            assert value["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        else:
            assert len(value["trace_id"]) == 32
            assert value["trace_id"] != "0" * 32
            assert uuid.UUID(value["event_id"])
    assert "Traceback" not in processor.stderr()
