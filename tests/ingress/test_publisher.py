"""How broker errors reach the webhook caller (the broker path itself is in test_kafka)."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    CorruptRecordException,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    NotLeaderForPartitionError,
    ProducerClosed,
    TopicAuthorizationFailedError,
)

from consumer.ingress.publisher import PublishError, RecordRejected, classify


@pytest.mark.parametrize(
    "error",
    [
        KafkaTimeoutError(),  # an expired batch: its retriable flag says False
        KafkaConnectionError(),
        NotEnoughReplicasError(),
        NotLeaderForPartitionError(),
        ProducerClosed(),
    ],
)
def test_broker_trouble_is_a_publish_error_worth_retrying(error: KafkaError) -> None:
    assert isinstance(classify(error), PublishError)


def test_record_over_the_size_limit_is_rejected_as_too_large() -> None:
    failure = classify(MessageSizeTooLargeError())
    assert isinstance(failure, RecordRejected)
    assert failure.too_large


@pytest.mark.parametrize("error", [TopicAuthorizationFailedError(), CorruptRecordException()])
def test_record_the_broker_refuses_for_good_is_rejected(error: KafkaError) -> None:
    failure = classify(error)
    assert isinstance(failure, RecordRejected)
    assert not failure.too_large
    assert type(error).__name__ in str(failure)
