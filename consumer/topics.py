"""Creating the four topics when they are missing (demo, tests, first deployments)."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.config import KafkaSettings
from consumer.kafka_client import client_options

_TOPIC_ALREADY_EXISTS = 36


def topic_names(kafka: KafkaSettings) -> list[str]:
    return [kafka.input_topic, kafka.cancelled_topic, kafka.failed_topic, kafka.dlq_topic]


async def ensure_topics(
    kafka: KafkaSettings, partitions: int = 3, replication_factor: int = 1
) -> None:
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication_factor) for name in topic_names(kafka)]
        )
        for topic, code, message in _topic_errors(response):
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"cannot create topic {topic}: error {code} {message or ''}")
    finally:
        await admin.close()


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    errors = getattr(response, "topic_errors", [])
    return [(e[0], e[1], e[2] if len(e) > 2 else None) for e in errors]
