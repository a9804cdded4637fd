"""The signature functions the server calls, in its order: ``resolve_secret``,
``parse_signature_header`` and ``check_timestamp`` before the body is read,
``check_signature`` after (the HTTP path is in test_app)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from consumer.ingress.signature import (
    TOLERANCE_SECONDS,
    SignatureError,
    SignatureFailure,
    SignatureHeader,
    check_signature,
    check_timestamp,
    compute_signature,
    parse_signature_header,
    resolve_secret,
    sign,
)

SECRET = b"erp-webhook-secret-0123456789"
NEW_SECRET = b"erp-webhook-secret-rotated-9876"
BODY = b'{"event_id": "0f8c3c2e-6a1b-4a7e-9d0f-2d1b6f5a9e11"}'
T = 1_795_255_200


def refused(check: object, *args: object) -> SignatureError:
    assert callable(check)
    with pytest.raises(SignatureError) as info:
        check(*args)
    assert "\n" not in info.value.message
    return info.value


def matches(header: str, secret: bytes = SECRET, body: bytes = BODY) -> bool:
    try:
        check_signature(parse_signature_header(header), secret, body)
    except SignatureError as exc:
        failure = exc.failure
    else:
        return True
    assert failure is SignatureFailure.INVALID_SIGNATURE
    return False


# --- the MAC ----------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET, f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert compute_signature(SECRET, T, BODY) == expected
    assert sign(SECRET, BODY, T) == f"t={T},v1={expected}"


def test_valid_signature_matches() -> None:
    assert matches(sign(SECRET, BODY, T))


def test_signature_under_another_secret_does_not_match() -> None:
    assert not matches(sign(b"someone-elses-secret-000", BODY, T))


def test_changed_body_does_not_match() -> None:
    assert not matches(sign(SECRET, BODY, T), body=BODY + b" ")


def test_changed_timestamp_does_not_match() -> None:
    # Replaying a body with a fresh t= does not work: t is inside the MAC.
    assert not matches(f"t={T + 1},v1={compute_signature(SECRET, T, BODY)}")


def test_rotation_with_two_v1_entries_matches_either_secret() -> None:
    # The sender signs with the old and the new secret while receivers switch over.
    header = sign([SECRET, NEW_SECRET], BODY, T)
    assert len(parse_signature_header(header).signatures) == 2
    assert matches(header, SECRET)
    assert matches(header, NEW_SECRET)
    assert not matches(header, b"a-third-secret-nobody-uses")


def test_rotation_order_does_not_matter() -> None:
    assert matches(sign([NEW_SECRET, SECRET], BODY, T))


def test_error_messages_never_contain_the_secret_or_the_expected_mac() -> None:
    expected = compute_signature(SECRET, T, BODY)
    errors = [
        refused(
            check_signature,
            parse_signature_header(sign(b"wrong-0000000000", BODY, T)),
            SECRET,
            BODY,
        ),
        refused(parse_signature_header, "garbage"),
        refused(parse_signature_header, None),
    ]
    for error in errors:
        assert SECRET.decode() not in error.message
        assert expected not in error.message


# --- the header -------------------------------------------------------------------------------


def test_header_is_parsed_into_timestamp_and_digests() -> None:
    header = parse_signature_header(sign(SECRET, BODY, T))
    assert header == SignatureHeader(T, (bytes.fromhex(compute_signature(SECRET, T, BODY)),))


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("t={t}, v1={v1}", id="space after the comma"),
        pytest.param("v1={v1},t={t}", id="v1 before t"),
        pytest.param(" v1={V1} , t={t} ", id="uppercase hex and spaces around"),
    ],
)
def test_items_in_any_order_with_spaces_and_uppercase_hex_are_accepted(template: str) -> None:
    digest = compute_signature(SECRET, T, BODY)
    assert matches(template.format(t=T, v1=digest, V1=digest.upper()))


def test_unknown_schemes_next_to_v1_are_ignored() -> None:
    assert matches(f"{sign(SECRET, BODY, T)},v0=deadbeef,v2=whatever")


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_signature_is_refused(header: str | None) -> None:
    failure = refused(parse_signature_header, header).failure
    assert failure is SignatureFailure.MISSING_SIGNATURE


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("garbage", id="no pairs"),
        pytest.param(f"v1={'0' * 64}", id="no timestamp"),
        pytest.param(f"t={T}", id="no v1"),
        pytest.param(f"t={T},v0={'0' * 64}", id="only an unknown scheme"),
        pytest.param(f"t=-5,v1={'0' * 64}", id="negative timestamp"),
        pytest.param(f"t=1.5,v1={'0' * 64}", id="fractional timestamp"),
        pytest.param(f"t={'9' * 40},v1={'0' * 64}", id="huge timestamp"),
        pytest.param(f"t={T},t={T},v1={'0' * 64}", id="two timestamps"),
        pytest.param(f"t={T},v1={'0' * 63}", id="short digest"),
        pytest.param(f"t={T},v1={'z' * 64}", id="not hex"),
        pytest.param(f"t={T}," + ",".join([f"v1={'0' * 64}"] * 9), id="too many v1"),
        pytest.param(f"t={T},v1={'0' * 64}," + "x" * 3000, id="too long"),
    ],
)
def test_malformed_header_is_refused(header: str) -> None:
    failure = refused(parse_signature_header, header).failure
    assert failure is SignatureFailure.MALFORMED_SIGNATURE


# --- the timestamp ----------------------------------------------------------------------------

SIGNED_AT = SignatureHeader(T, (b"",))


@pytest.mark.parametrize("skew", [TOLERANCE_SECONDS, -TOLERANCE_SECONDS, 0])
def test_timestamp_within_tolerance_is_accepted(skew: int) -> None:
    check_timestamp(SIGNED_AT, now=T + skew)


def test_expired_timestamp_is_refused() -> None:
    error = refused(check_timestamp, SIGNED_AT, T + TOLERANCE_SECONDS + 1)
    assert error.failure is SignatureFailure.EXPIRED_SIGNATURE
    assert "301 s old" in error.message


def test_timestamp_from_the_future_is_refused() -> None:
    error = refused(check_timestamp, SIGNED_AT, T - TOLERANCE_SECONDS - 1)
    assert error.failure is SignatureFailure.EXPIRED_SIGNATURE
    assert "in the future" in error.message


# --- the source -------------------------------------------------------------------------------

SECRETS = {"erp": SECRET, "tms": NEW_SECRET}


def test_known_source_resolves_to_its_secret() -> None:
    assert resolve_secret("erp", SECRETS) == SECRET
    assert resolve_secret("tms", SECRETS) == NEW_SECRET


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(None, SignatureFailure.MISSING_SOURCE, id="missing"),
        pytest.param("", SignatureFailure.MISSING_SOURCE, id="empty"),
        pytest.param("crm", SignatureFailure.UNKNOWN_SOURCE, id="unknown"),
        pytest.param("ERP", SignatureFailure.UNKNOWN_SOURCE, id="names are case-sensitive"),
    ],
)
def test_missing_or_unknown_source_is_refused(
    source: str | None, expected: SignatureFailure
) -> None:
    with pytest.raises(SignatureError) as info:
        resolve_secret(source, SECRETS)
    assert info.value.failure is expected


def test_unknown_source_name_is_truncated_in_the_message() -> None:
    with pytest.raises(SignatureError) as info:
        resolve_secret("x" * 5000, SECRETS)
    assert len(info.value.message) < 200
