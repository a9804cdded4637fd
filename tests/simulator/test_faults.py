from __future__ import annotations

import pytest

from consumer.simulator.faults import NO_FAULT, FaultSpec, parse_fault


@pytest.mark.parametrize("shipment_id", ["se-28529731", "SHP-12345", "", "se-1-2-3"])
def test_an_id_without_fault_words_has_no_fault(shipment_id: str) -> None:
    assert parse_fault(shipment_id) == NO_FAULT


@pytest.mark.parametrize(
    ("shipment_id", "expected"),
    [
        ("se-notfound-1", FaultSpec(not_found=True)),
        ("se-delivered-1", FaultSpec(delivered=True)),
        ("se-labeled-1", FaultSpec(labeled=True)),
        ("se-labelled-1", FaultSpec(labeled=True)),
        ("se-cancelled-1", FaultSpec(cancelled=True)),
        ("SHP-CANCELED-1", FaultSpec(cancelled=True)),
        ("se-ratelimit3-1", FaultSpec(rate_limited_calls=3)),
        ("se-flaky2-1", FaultSpec(failing_calls=2)),
        ("se-slow250-1", FaultSpec(slow_ms=250)),
        ("se-hang", FaultSpec(hang=True)),
        ("se-reject-1", FaultSpec(reject=True)),
        ("se-authfail-1", FaultSpec(auth_fail=True)),
    ],
)
def test_each_fault_word_is_read(shipment_id: str, expected: FaultSpec) -> None:
    assert parse_fault(shipment_id) == expected


def test_fault_words_combine_and_ignore_case() -> None:
    assert parse_fault("SE-RateLimit2-Slow100-7") == FaultSpec(rate_limited_calls=2, slow_ms=100)


def test_counts_default_to_one_and_slow_to_a_second() -> None:
    assert parse_fault("se-ratelimit-flaky-slow") == FaultSpec(
        rate_limited_calls=1, failing_calls=1, slow_ms=1000
    )


@pytest.mark.parametrize("shipment_id", ["se-exchange-1", "se-slowly", "uncancelledx", "xhang"])
def test_a_word_glued_to_other_letters_is_not_a_fault(shipment_id: str) -> None:
    assert parse_fault(shipment_id) == NO_FAULT


def test_fault_spec_serialises_for_the_admin_api() -> None:
    assert parse_fault("flaky2").to_json()["failing_calls"] == 2
