"""The bench's broker-alone reader (``bench.load.broker_alone``) against a real broker: it
must read back every event it paced, and time each from its send."""

from __future__ import annotations

import uuid

from bench import load


async def test_every_paced_event_is_read_back_and_timed_from_its_send(
    bootstrap_servers: str,
) -> None:
    kafka = load.Topics(f"alone-{uuid.uuid4().hex[:6]}").kafka(bootstrap_servers)
    await load.create_topics(kafka)

    measured = await load.broker_alone(
        kafka, rate=200, seconds=1.0, orders=50, prefix="t", fetch_max_wait_ms=10
    )

    assert measured.events == 200
    assert (measured.missing, measured.duplicates) == (0, 0)
    assert 0 < measured.p50_ms <= measured.p99_ms
