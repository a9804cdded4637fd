"""The real Kafka of the test suites (kafka_local/broker.py) does what the fault tests rely on:
idempotent acks=all produce and consume, records surviving a SIGKILL and a restart on the
same data and ports, a 3-node cluster that survives losing a partition leader, pause and
resume, a clear error when a node cannot start."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kafka_local.broker import (
    LIB_DIR_ENV,
    KafkaCluster,
    KafkaNode,
    KafkaSetupError,
    KafkaStartError,
    Listener,
    classpath,
    metadata_brokers,
)

Record = tuple[bytes | None, bytes | None]


def _topic() -> str:
    return f"broker-test-{uuid.uuid4().hex[:8]}"


async def create_topic(bootstrap: str, topic: str, partitions: int, replication: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(topic, partitions, replication)])
        errors = response.to_object()["topic_errors"]
        assert [e["error_code"] for e in errors] == [0], errors
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, records: Sequence[Record]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", request_timeout_ms=30000
    )
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=0)
    finally:
        await producer.stop()


async def consume(
    bootstrap: str, topic: str, count: int, group: str | None = None, timeout: float = 60
) -> list[Record]:
    """``count`` records of partition 0 from the start (as a group member if ``group``)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest"
    )
    if group is None:
        consumer.assign([TopicPartition(topic, 0)])
    else:
        consumer.subscribe([topic])
    await consumer.start()
    got: list[Record] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < count:
                batches = await consumer.getmany(timeout_ms=500)
                got.extend((m.key, m.value) for batch in batches.values() for m in batch)
        if group is not None:
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


def records(prefix: str, count: int) -> list[Record]:
    return [(f"k{i}".encode(), f"{prefix}-{i}".encode()) for i in range(count)]


# --- no broker needed ---------------------------------------------------------------------


def test_missing_jars_say_to_run_make_kafka(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LIB_DIR_ENV, str(tmp_path))
    with pytest.raises(KafkaSetupError, match=r"run `make kafka`"):
        classpath()


def test_properties_take_listeners_and_overrides(tmp_path: Path) -> None:
    node = KafkaNode(
        data_dir=tmp_path,
        listeners=[Listener("SASL", "SASL_PLAINTEXT")],
        overrides={"auto.create.topics.enable": True, "num.partitions": 3},
    )
    props = node.properties
    sasl = node.listener_ports["SASL"]
    assert len({node.port, node.controller_port, sasl}) == 3
    assert f"SASL://127.0.0.1:{sasl}" in props["listeners"]
    assert f"SASL://127.0.0.1:{sasl}" in props["advertised.listeners"]
    assert "CONTROLLER" not in props["advertised.listeners"]
    assert "SASL:SASL_PLAINTEXT" in props["listener.security.protocol.map"]
    assert props["auto.create.topics.enable"] == "true"
    assert props["num.partitions"] == "3"
    assert props["controller.quorum.voters"] == f"1@127.0.0.1:{node.controller_port}"
    assert node.address("SASL") == f"127.0.0.1:{sasl}"


# --- one node -----------------------------------------------------------------------------


@pytest.mark.integration
async def test_node_produce_consume_survive_kill_and_restart() -> None:
    topic = _topic()
    first, second = records("before", 50), records("after", 10)
    async with KafkaNode() as node:
        await create_topic(node.bootstrap_servers, topic, partitions=3, replication=1)
        await produce(node.bootstrap_servers, topic, first)
        assert await consume(node.bootstrap_servers, topic, 50, group="g1") == first

        port, data = node.port, node.data_dir
        node.kill()
        assert not node.running
        assert await metadata_brokers(node.bootstrap_servers) is None
        await node.restart()
        assert (node.port, node.data_dir, node.starts) == (port, data, 2)

        assert await consume(node.bootstrap_servers, topic, 50) == first
        await produce(node.bootstrap_servers, topic, second)
        assert await consume(node.bootstrap_servers, topic, 60) == first + second


@pytest.mark.integration
async def test_node_pause_resume_and_graceful_stop() -> None:
    async with KafkaNode() as node:
        node.pause()
        assert await metadata_brokers(node.bootstrap_servers) is None  # no answer in 2 s
        node.resume()
        assert await metadata_brokers(node.bootstrap_servers) == {1}
        seconds = await node.stop()
        assert not node.running
        assert node.returncode in (0, 143)  # exited by itself, not SIGKILLed
        assert seconds < 30
    assert not node.data_dir.exists()


@pytest.mark.integration
async def test_start_failure_raises_with_the_broker_log() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        node = KafkaNode(port=taken.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(KafkaStartError, match=r"(?s)exited with .*Address already in use"):
            async with node:
                pass
    assert time.monotonic() - started < 30
    assert not node.running
    assert not node.data_dir.exists()


@pytest.mark.integration
async def test_bad_settings_fail_at_format_with_the_reason() -> None:
    with pytest.raises(KafkaStartError, match=r"(?s)format.*not-a-number.*num\.io\.threads"):
        async with KafkaNode(overrides={"num.io.threads": "not-a-number"}):
            pass


# --- three nodes --------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_cluster_survives_killing_the_partition_leader() -> None:
    topic = _topic()
    first, second = records("before", 30), records("after", 30)
    async with KafkaCluster(3) as cluster:
        assert {n.node_id for n in cluster.running_nodes()} == {1, 2, 3}
        await create_topic(cluster.bootstrap_servers, topic, partitions=1, replication=3)
        state = await cluster.wait_partition(topic, isr=3)
        assert sorted(state.replicas) == [1, 2, 3]
        await produce(cluster.bootstrap_servers, topic, first)

        killed = await cluster.kill_leader(topic)
        assert killed.node_id == state.leader
        assert not killed.running

        # acks=all with min.insync.replicas=2: the two survivors are enough.
        await produce(cluster.bootstrap_servers, topic, second)
        assert await consume(cluster.bootstrap_servers, topic, 60) == first + second
        moved = await cluster.wait_partition(topic, leader_not=killed.node_id)
        assert moved.leader != killed.node_id
        assert killed.node_id not in moved.isr

        # The killed node comes back on its data and catches up.
        await killed.restart()
        await cluster.wait_ready()
        back = await cluster.wait_partition(topic, isr=3)
        assert killed.node_id in back.isr
