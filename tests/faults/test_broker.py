"""Scenarios 5, 12 and 13: the broker unreachable at start, paused for longer than a request
timeout, killed with ``kill -9`` and restarted on its data; in a 3-node cluster, the leader
of the input and result partitions killed, then in-sync replicas below
``min.insync.replicas``. Brokers of the scenario's own, so hurting them hurts no one."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from consumer.config import Settings
from consumer.kafka.clients import client_options
from kafka_local.broker import KafkaCluster, KafkaNode
from tests.faults.conftest import FaultEnv
from tests.faults.harness import (
    Input,
    OutputReader,
    Process,
    ProcessorProcess,
    cluster_for,
    produce,
    produce_steadily,
    result_ids,
    wait_committed,
)
from tests.faults.streams import expected_ids, order_stream

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

GRACE = 5
# The processor's waiting loops may wake a few times a second, never spin.
MAX_IDLE_CPU = 0.15


async def cpu_share(process: Process, seconds: float) -> float:
    """The share of one core ``process`` used over the next ``seconds``."""
    before, started = process.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return (process.cpu_seconds() - before) / (time.monotonic() - started)


def warnings_since(processor: ProcessorProcess, start: int) -> list[dict[str, Any]]:
    return [e for e in processor.logs()[start:] if e["level"] in ("warning", "error")]


def assert_clean(processor: ProcessorProcess) -> None:
    assert processor.returncode == 0, processor.stderr()
    assert "Traceback" not in processor.stderr()
    assert "Unclosed" not in processor.stderr()


async def stop_while_paused(
    processor: ProcessorProcess, broker: KafkaNode, reader: OutputReader
) -> float:
    """Pause the broker with work in flight, SIGTERM: the seconds the exit took."""
    seen = len(result_ids(reader))
    await reader.wait_for(lambda r: len(result_ids(r)) >= seen + 20, timeout=60)
    broker.pause()
    await asyncio.sleep(1)
    exit_seconds = await processor.stop(timeout=60)
    broker.resume()
    return exit_seconds


async def test_5_broker_unreachable_at_start_then_paused_mid_stream(
    faults: FaultEnv,
) -> None:
    broker = faults.own_broker(KafkaNode())  # its ports are chosen; it starts later
    sim = faults.simulator(latency_ms=20)
    async with sim:
        config = faults.config(
            sim,
            {
                "kafka": {"request_timeout_ms": 5000},
                "processing": {"drain_grace_seconds": GRACE},
            },
        )
        env = sim.secrets_env()
        settings = faults.settings(config, env)
        processor = faults.processor(config, env)

        # 1. No broker yet: one clear line, a quiet wait, and it connects by itself.
        waiting = await processor.wait_for_log("kafka broker unreachable, retrying", timeout=30)
        assert waiting["level"] == "warning"
        assert waiting["bootstrap_servers"] == broker.bootstrap_servers
        idle_cpu = await cpu_share(processor, 5)
        await broker.start()
        await faults.topology.create_topics(config, env)
        await processor.wait_for_log("partitions assigned", timeout=60)

        records = order_stream(events=600, orders=60)
        more = order_stream(events=300, orders=30)
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            sent = await produce(cluster, records)
            await reader.wait_for(lambda r: len(result_ids(r)) >= 0.3 * len(records), 120)

            # 2. The broker freezes for 20 s, four request timeouts (no connection error,
            # just silence).
            before_pause = len(processor.logs())
            broker.pause()
            paused_cpu = await cpu_share(processor, 20)
            broker.resume()
            during_pause = warnings_since(processor, before_pause)
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=180)
            await wait_committed(cluster, sent, timeout=60)
            after_pause = processor.logs()[before_pause:]

            # 3. Frozen again with work in flight, and asked to stop: it leaves within the
            # grace period; what it could not commit, the next run redoes.
            sent += await produce(cluster, more)
            exit_seconds = await stop_while_paused(processor, broker, reader)
            wanted = expected_ids(sent)
            successor = faults.processor(config, env)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=180)
            await wait_committed(cluster, sent, timeout=60)
            await successor.stop()
            report = await faults.finish(
                "5 broker down, then paused 20s", sent, reader, cluster, sim
            )

    assert idle_cpu < MAX_IDLE_CPU, f"{idle_cpu:.0%} of a core while the broker is away"
    assert during_pause, "the pause went unreported"
    assert len(during_pause) <= 3, "reported in a line or two, not once per event and retry"
    assert paused_cpu < MAX_IDLE_CPU, f"{paused_cpu:.0%} of a core while the broker was paused"
    assert report.lost == 0, report.lost_ids
    assert report.order_violations == 0
    assert report.committed_equals_end, (report.committed, report.ends)
    assert_clean(processor)
    assert "kafka broker answering again" in [e["msg"] for e in after_pause]
    assert exit_seconds < GRACE + 3, f"stop took {exit_seconds:.1f}s with the broker down"
    report.notes.update(
        idle_cpu=round(idle_cpu, 3),
        paused_cpu=round(paused_cpu, 3),
        stop_seconds_broker_down=round(exit_seconds, 2),
        pause_log=sorted({e["msg"] for e in during_pause}),
    )


async def test_12_the_broker_killed_and_restarted_on_its_data(faults: FaultEnv) -> None:
    broker = faults.own_broker(KafkaNode())
    await broker.start()
    sim = faults.simulator(latency_ms=20)
    async with sim:
        config = faults.config(sim, {"kafka": {"request_timeout_ms": 5000}})
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        records = order_stream(events=900, orders=90)
        more = order_stream(events=300, orders=30)
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            sent = await produce(cluster, records)
            await reader.wait_for(lambda r: len(result_ids(r)) >= 0.3 * len(records), 120)
            before = len(processor.logs())
            broker.kill()
            down_at = time.monotonic()
            await asyncio.sleep(5)
            await broker.start()
            restarted_seconds = time.monotonic() - down_at
            sent += await produce(cluster, more)
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=180)
            await wait_committed(cluster, sent, timeout=60)
            outage = warnings_since(processor, before)
            await processor.stop()
            report = await faults.finish("12 broker kill -9, restarted", sent, reader, cluster, sim)

    assert report.lost == 0, report.lost_ids
    assert report.order_violations == 0
    assert report.committed_equals_end, (report.committed, report.ends)
    assert outage, "the broker's crash went unreported"
    assert len(outage) <= 6, [e["msg"] for e in outage]
    assert_clean(processor)
    report.notes.update(
        broker_down_seconds=round(restarted_seconds, 1),
        outage_log=sorted({e["msg"] for e in outage}),
    )


async def create_led_by(settings: Settings, leader: int, others: Iterable[int]) -> None:
    """The scenario's topics, 3 replicas each, every partition led by node ``leader``."""
    kafka = settings.kafka
    replicas = [leader, *others]
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topic, -1, -1, replica_assignments=dict.fromkeys(range(3), replicas))
                for topic in (
                    kafka.input_topic,
                    kafka.retry_topic,
                    kafka.cancelled_topic,
                    kafka.failed_topic,
                    kafka.dlq_topic,
                )
            ]
        )
    finally:
        await admin.close()


async def restart_with_processor_frozen(
    cluster3: KafkaCluster, processor: ProcessorProcess, reader: OutputReader, settings: Settings
) -> dict[TopicPartition, int]:
    """Nodes 2 and 3 started again while the processor is frozen (SIGSTOP), so that it
    produces nothing meanwhile; the result topics' ends then, once every partition has a
    leader. Every result the processor had acknowledged lies below them. (Not read while
    the two are down: the result partitions may have no leader, and the reader may not have
    caught up with what was acknowledged before.) A record a leader appended but did not
    acknowledge (too few replicas after the append) is below them too: the check cannot
    tell a commit made on such a record from one made on an acknowledged one."""
    processor.signal(signal.SIGSTOP)
    try:
        await asyncio.gather(cluster3.node(2).start(), cluster3.node(3).start())
        await cluster3.wait_ready()
        kafka = settings.kafka
        for topic in (kafka.cancelled_topic, kafka.failed_topic):
            for partition in range(3):
                await cluster3.wait_partition(topic, partition)
        return await reader.result_ends()
    finally:
        processor.signal(signal.SIGCONT)


def inputs_with_results(sent: list[Input], seen: set[str]) -> dict[int, int]:
    """Per partition, one past the last input offset up to which every input has all its
    results among ``seen``: the furthest a commit may go."""
    done: dict[int, int] = {}
    for record in sorted(sent, key=lambda r: (r.partition, r.offset)):
        if done.get(record.partition, record.offset) != record.offset:
            continue  # an earlier input of this partition is not done
        if expected_ids([record]) <= seen:
            done[record.partition] = record.offset + 1
    return done


async def test_13_leader_killed_then_in_sync_replicas_below_the_minimum(
    faults: FaultEnv,
) -> None:
    # One controller (node 1) and two more brokers: with nodes 2 and 3 down the quorum
    # stands, so the in-sync replicas shrink to node 1 alone, below min.insync.replicas 2.
    cluster3 = faults.own_broker(KafkaCluster(3, controllers=1, min_insync_replicas=2))
    await cluster3.start()
    # A slow provider and a small window: a backlog still in flight when brokers stop.
    sim = faults.simulator(latency_ms=200)
    async with sim:
        config = faults.config(
            sim,
            {
                # The processor is frozen for a while below: its group must outlast that.
                "kafka": {
                    "request_timeout_ms": 5000,
                    "session_timeout_ms": 120_000,
                    "heartbeat_interval_ms": 3000,
                },
                "processing": {"max_in_flight": 8},
            },
        )
        env = sim.secrets_env()
        settings = faults.settings(config, env)
        await create_led_by(settings, 2, (3, 1))
        records = order_stream(events=1500, orders=150)
        more = order_stream(events=300, orders=30)
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            sent = await produce(cluster, records)
            await reader.wait_for(lambda r: len(result_ids(r)) >= 0.2 * len(records), 120)

            # 1. The leader of every input and result partition dies mid-stream.
            killed = await cluster3.kill_leader(settings.kafka.input_topic)
            assert killed.node_id == 2
            await reader.wait_for(lambda r: len(result_ids(r)) >= 0.5 * len(records), 120)
            await killed.start()
            await cluster3.wait_ready()

            # 2. Two brokers stop: produce fails with NotEnoughReplicas. The processor
            # waits, says so once, and commits nothing it could not produce.
            before = len(processor.logs())
            await asyncio.gather(cluster3.node(2).stop(), cluster3.node(3).stop())
            await asyncio.sleep(15)
            committed = await cluster.committed()
            stalled = warnings_since(processor, before)
            acknowledged_ends = await restart_with_processor_frozen(
                cluster3, processor, reader, settings
            )

            # 3. Recovered by itself.
            sent += await produce_steadily(cluster, more, per_second=100)
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=240)
            await wait_committed(cluster, sent, timeout=90)
            recovered = [e["msg"] for e in processor.logs()[before:]]
            await processor.stop()
            report = await faults.finish(
                "13 leader killed, ISR below min", sent, reader, cluster, sim
            )

    assert report.lost == 0, report.lost_ids
    assert report.order_violations == 0
    assert report.committed_equals_end, (report.committed, report.ends)
    allowed = inputs_with_results(sent, reader.result_ids_below(acknowledged_ends))
    for partition, offset in committed.items():
        assert offset is None or offset <= allowed.get(partition, 0), (
            f"partition {partition} committed {offset} past its produced results "
            f"({allowed.get(partition, 0)})"
        )
    # The idempotent producer retries NotEnoughReplicas by itself: the processor sees
    # acknowledgements and commits that do not come, and says so once, whichever first.
    waiting = [e["msg"] for e in stalled if e["msg"].startswith("kafka broker not a")]
    assert waiting, [e["msg"] for e in stalled]
    assert len(waiting) == len(set(waiting)), "each said once, not once per record and retry"
    assert len(stalled) <= 3, [e["msg"] for e in stalled]
    assert "kafka broker answering again" in recovered
    assert "partitions revoked" not in recovered, "it recovered in place, not by a rebalance"
    assert_clean(processor)
    report.notes.update(
        killed_leader=killed.node_id,
        stall_log=sorted({e["msg"] for e in stalled}),
    )
