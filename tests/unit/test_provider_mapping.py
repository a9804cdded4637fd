"""How provider answers map to the error categories of ``consumer.core.errors`` (pure, no HTTP)."""

from __future__ import annotations

import pytest

from consumer.core.errors import (
    AuthError,
    CancelError,
    ConflictError,
    InternalError,
    NotFoundError,
    ProviderTimeoutError,
    RateLimitedError,
    RejectedError,
    UnavailableError,
)
from consumer.providers.shipstation import (
    ERROR_CODE_CLASSES,
    STATE_REFUSAL_CODES,
    error_class,
    is_state_refusal,
)

# ShipStation v2's documented ``error_code`` enum (the cancel's 400 and 404 bodies), restated
# here so that a code added to or dropped from the table is a deliberate, reviewed change.
SHIPSTATION_ERROR_CODES = frozenset(
    {
        "auto_fund_not_supported", "batch_cannot_be_modified", "carrier_conflict",
        "carrier_disconnected", "carrier_not_connected", "carrier_not_supported",
        "confirmation_not_supported", "default_warehouse_cannot_be_deleted", "field_conflict",
        "field_value_required", "forbidden", "identifier_conflict", "identifiers_must_match",
        "insufficient_funds", "invalid_address", "invalid_billing_plan", "invalid_field_value",
        "invalid_identifier", "invalid_status", "invalid_string_length",
        "label_images_not_supported", "meter_failure", "order_source_not_active",
        "rate_limit_exceeded", "refresh_not_supported", "request_body_required",
        "return_label_not_supported", "settings_not_supported", "subscription_inactive",
        "terms_not_accepted", "tracking_not_supported", "trial_expired", "unauthorized",
        "unknown", "unspecified", "verification_failure", "warehouse_conflict",
        "webhook_event_type_conflict", "customs_items_required", "incompatible_paired_labels",
        "invalid_charge_event", "invalid_object", "no_rates_returned",
    }
)  # fmt: skip

AUTH_CODES = {
    "unauthorized", "forbidden", "subscription_inactive", "trial_expired",
    "terms_not_accepted", "invalid_billing_plan",
}  # fmt: skip
CONFLICT_CODES = {
    "invalid_status", "batch_cannot_be_modified", "carrier_conflict", "field_conflict",
    "identifier_conflict", "warehouse_conflict", "webhook_event_type_conflict",
}  # fmt: skip
SPECIAL_CODES = {"rate_limit_exceeded": RateLimitedError, "meter_failure": UnavailableError}
# Codes that add nothing to the status: a 400 stays rejected, a 404 stays not_found.
STATUS_DECIDES_CODES = SHIPSTATION_ERROR_CODES - AUTH_CODES - CONFLICT_CODES - set(SPECIAL_CODES)


def expected_for_400(code: str) -> type[CancelError]:
    if code in AUTH_CODES:
        return AuthError
    if code in CONFLICT_CODES:
        return ConflictError
    return SPECIAL_CODES.get(code, RejectedError)


def test_table_covers_exactly_the_documented_error_codes() -> None:
    assert set(ERROR_CODE_CLASSES) == SHIPSTATION_ERROR_CODES


@pytest.mark.parametrize("code", sorted(SHIPSTATION_ERROR_CODES))
def test_every_error_code_on_a_400_has_its_category(code: str) -> None:
    assert error_class(400, code, "validation") is expected_for_400(code)


@pytest.mark.parametrize("code", sorted(STATUS_DECIDES_CODES))
def test_codes_that_add_nothing_leave_a_404_not_found(code: str) -> None:
    assert error_class(404, code, "validation") is NotFoundError


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, RejectedError),
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (408, ProviderTimeoutError),
        (409, ConflictError),
        (418, InternalError),
        (422, RejectedError),
        (429, RateLimitedError),
        (500, UnavailableError),
        (501, UnavailableError),
        (502, UnavailableError),
        (503, UnavailableError),
        (504, ProviderTimeoutError),
        (599, UnavailableError),
    ],
)
def test_every_status_without_a_body_has_its_category(
    status: int, expected: type[CancelError]
) -> None:
    assert error_class(status, None, None) is expected


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        # Statuses that speak for themselves are never overruled by a body.
        (500, "unauthorized", UnavailableError),
        (503, "invalid_field_value", UnavailableError),
        (429, "invalid_status", RateLimitedError),
        (401, "field_conflict", AuthError),
        (403, "rate_limit_exceeded", AuthError),
    ],
)
def test_only_generic_statuses_are_refined_by_the_code(
    status: int, code: str, expected: type[CancelError]
) -> None:
    assert error_class(status, code, "system") is expected


@pytest.mark.parametrize(
    ("code", "error_type", "expected"),
    [
        ("unknown", "system", UnavailableError),
        ("unspecified", "system", UnavailableError),
        ("unknown", "security", AuthError),
        ("unknown", "validation", RejectedError),
        ("unspecified", "business_rules", RejectedError),
        ("unknown", None, RejectedError),
        # A code ShipStation adds later still gets the type's reading...
        ("brand_new_code", "system", UnavailableError),
        (None, "security", AuthError),
        # ...but a documented code outranks the type.
        ("invalid_field_value", "system", RejectedError),
        ("invalid_status", "system", ConflictError),
    ],
)
def test_error_type_decides_when_the_code_says_nothing(
    code: str | None, error_type: str | None, expected: type[CancelError]
) -> None:
    assert error_class(400, code, error_type) is expected


def test_a_system_fault_is_retryable_and_a_refusal_is_not() -> None:
    assert error_class(400, "unknown", "system").retryable
    assert not error_class(400, "invalid_status", "business_rules").retryable


def test_state_refusal_codes_are_conflicts_in_the_table() -> None:
    assert {"invalid_status", "batch_cannot_be_modified"} == STATE_REFUSAL_CODES
    assert all(ERROR_CODE_CLASSES[code] is ConflictError for code in STATE_REFUSAL_CODES)


@pytest.mark.parametrize(
    ("status", "code", "refusal"),
    [
        (400, "invalid_status", True),
        (400, "batch_cannot_be_modified", True),
        (409, None, True),
        (409, "identifier_conflict", True),
        (400, "identifier_conflict", False),
        (400, "invalid_identifier", False),
        (404, "invalid_status", False),
        (500, "invalid_status", False),
        (400, None, False),
    ],
)
def test_state_refusals_are_recognised(status: int, code: str | None, refusal: bool) -> None:
    assert is_state_refusal(status, code) is refusal
