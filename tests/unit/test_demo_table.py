"""The demo's result table without a broker: rows fit 100 columns, details wrap at word
boundaries, and a sample passes only with the results it should produce."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import ConsumerRecord

from consumer.core import headers as h
from consumer.core.errors import ErrorCategory
from consumer.tools.demo import samples
from consumer.tools.demo_table import (
    DEAD_LETTERED,
    WIDTH,
    Expected,
    Result,
    header,
    problem,
    read_result,
    rows,
)

DLQ = "orders.cancelled.dlq"
# More than two lines' worth, like the simulator's message for a label not voided.
LONG_DETAIL = (
    "label not voided: the shipment has an active label and void_labels is off for this "
    "account (shipstation cancel: HTTP 400 Bad Request: Shipment se-labeled-1007 has an active "
    "label; void it first or enable void_labels for the account named shipstation)"
)


def record(
    topic: str, value: bytes, headers: list[tuple[str, bytes]] | None = None
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, 0, 0, 0, b"SO-1007", value, None, 0, 0, tuple(headers or []))


def failed(category: str, message: str, *, retryable: bool = False) -> bytes:
    return orjson.dumps(
        {
            "provider": "shipstation",
            "shipment_id": "se-labeled-1007",
            "attempts": 1,
            "error": {"category": category, "message": message, "retryable": retryable},
        }
    )


def test_every_sample_outcome_renders_within_the_width_with_aligned_columns() -> None:
    # Each expected result with the samples' longest provider and shipment id.
    results = [
        (
            sample.title,
            Result(
                sample.key,
                want.result,
                "shipstation",
                "SHP-delivered-1006",
                None if want.result == DEAD_LETTERED else 3,
                LONG_DETAIL,
            ),
        )
        for sample in samples()
        for want in sample.expected
    ]
    results += [
        ("unknown provider", Result("SO-1011", f"failed: {c}", "mvmnt", "x", 1, LONG_DETAIL))
        for c in ErrorCategory
    ]
    lines = header() + [line for case, result in results for line in rows(case, result)]

    assert max(len(line) for line in lines) <= WIDTH
    tries_at = header()[0].index("tries")
    for case, result in results:
        assert rows(case, result)[0][tries_at - 2 : tries_at] == "  ", "a cell overflowed"


def test_the_detail_wraps_at_word_boundaries_under_the_case_column_and_is_shortened() -> None:
    result = Result("SO-1007", "failed: conflict", "shipstation", "se-labeled-1007", 1, LONG_DETAIL)

    row, *detail = rows("label not voided", result)

    case_at = header()[0].index("case")
    assert row.startswith("SO-1007  label not voided")
    assert len(detail) == 2
    assert all(line.startswith(" " * case_at) and line[case_at] != " " for line in detail)
    assert detail[-1].endswith(" …"), "shortened past two lines"
    words = LONG_DETAIL.split()
    shown = " ".join(line.strip() for line in detail).removesuffix(" …").split()
    assert shown == words[: len(shown)], "whole words only, in order"


def test_a_short_detail_takes_one_line_and_no_detail_none() -> None:
    assert len(rows("not found", Result("SO-1", "failed: not_found", detail="gone"))) == 2
    assert len(rows("cancelled", Result("SO-1", "cancelled", "mvmnt", "SHP-1", 1))) == 1


def test_result_records_are_read_as_rows() -> None:
    cancelled = orjson.dumps(
        {"provider": "mvmnt", "shipment_id": "SHP-1", "attempts": 2, "outcome": "cancelled"}
    )
    assert read_result(record("shipments.cancelled", cancelled), DLQ) == Result(
        "SO-1007", "cancelled", "mvmnt", "SHP-1", 2
    )
    retryable = read_result(record("failed", failed("unavailable", "503", retryable=True)), DLQ)
    assert retryable.result == "failed: unavailable"
    assert retryable.detail == "503 (retryable)"
    invalid = orjson.dumps(
        {
            "provider": None,
            "shipment_id": None,
            "attempts": 0,
            "error": {"category": "invalid_event", "message": "bad"},
        }
    )
    assert read_result(record("failed", invalid), DLQ) == Result(
        "SO-1007", "failed: invalid_event", "-", "-", 0, "bad"
    )
    dead = record(DLQ, b"{not json", [(h.DLQ_ERROR_MESSAGE, b"record value is not JSON")])
    assert read_result(dead, DLQ) == Result(
        "SO-1007", DEAD_LETTERED, detail="record value is not JSON"
    )


CANCELLED = Result("SO-1", "cancelled", "mvmnt", "SHP-1", 1)


@pytest.mark.parametrize(
    ("expected", "got"),
    [
        ((Expected("cancelled"),), [CANCELLED]),
        ((Expected("cancelled", 1),), [CANCELLED]),
        (
            (Expected(DEAD_LETTERED), Expected("failed: invalid_event")),
            [Result("SO-1", "failed: invalid_event", tries=0), Result("SO-1", DEAD_LETTERED)],
        ),
        # The exact expectation gets the result with 3 tries, whatever the order.
        (
            (Expected("cancelled"), Expected("cancelled", 3)),
            [Result("SO-1", "cancelled", tries=3), Result("SO-1", "cancelled", tries=1)],
        ),
    ],
)
def test_a_sample_with_its_expected_results_passes(
    expected: tuple[Expected, ...], got: list[Result]
) -> None:
    assert problem(expected, got) is None


@pytest.mark.parametrize(
    ("expected", "got", "said"),
    [
        ((Expected("cancelled", 3),), [], "nothing arrived (expected cancelled after 3 tries)"),
        (
            (Expected("cancelled"), Expected("cancelled")),
            [CANCELLED],
            "1 of 2 results arrived: cancelled after 1 try (expected cancelled, cancelled)",
        ),
        (
            (Expected("failed: not_found"),),
            [CANCELLED],
            "got cancelled after 1 try, expected failed: not_found",
        ),
        (
            (Expected("cancelled", 3),),
            [CANCELLED],
            "got cancelled after 1 try, expected cancelled after 3 tries",
        ),
        (
            (Expected(DEAD_LETTERED),),
            [Result("SO-1", DEAD_LETTERED)] * 2,
            "got dead-lettered, dead-lettered, expected dead-lettered",
        ),
    ],
)
def test_a_sample_missing_or_differing_says_how(
    expected: tuple[Expected, ...], got: list[Result], said: str
) -> None:
    assert problem(expected, got) == said
