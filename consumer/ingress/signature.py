"""Webhook signatures: ``X-Cancel-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]``.

``v1`` is the hex HMAC-SHA256 of ``b"<t>." + raw body`` under the source's secret. Several
``v1`` entries are allowed so a sender can sign with the old and the new secret while a
rotation is under way; one match is enough. Unknown schemes (``v0=...``) are ignored, so the
format can grow. Pure functions (the clock is passed in), called in the server's order:
``resolve_secret``, ``parse_signature_header`` and ``check_timestamp`` before the body is
read, ``check_signature`` after.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

SIGNATURE_HEADER: Final = "X-Cancel-Signature"
SOURCE_HEADER: Final = "X-Cancel-Source"
# A signature is valid this long either side of its timestamp (replay protection).
TOLERANCE_SECONDS: Final = 300
SCHEME: Final = "v1"

# Bounds on what we parse: the header comes from anyone who can reach the port.
_MAX_HEADER_CHARS: Final = 2048
_MAX_SIGNATURES: Final = 8
_MAX_TIMESTAMP_DIGITS: Final = 12
_HEX_DIGEST_CHARS: Final = hashlib.sha256().digest_size * 2


class SignatureFailure(StrEnum):
    """Why a request is refused with 401; the value is the ``error`` of the JSON body."""

    MISSING_SOURCE = "missing_source"
    UNKNOWN_SOURCE = "unknown_source"
    MISSING_SIGNATURE = "missing_signature"
    MALFORMED_SIGNATURE = "malformed_signature"
    EXPIRED_SIGNATURE = "expired_signature"
    INVALID_SIGNATURE = "invalid_signature"


class SignatureError(Exception):
    def __init__(self, failure: SignatureFailure, message: str) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    timestamp: int
    signatures: tuple[bytes, ...]


def compute_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``b"<timestamp>." + body``."""
    return _mac(secret, timestamp, body).hexdigest()


def sign(secrets: bytes | list[bytes], body: bytes, timestamp: int) -> str:
    """The header value a sender puts on a request (one ``v1`` per secret)."""
    keys = [secrets] if isinstance(secrets, bytes) else secrets
    entries = ",".join(f"{SCHEME}={compute_signature(k, timestamp, body)}" for k in keys)
    return f"t={timestamp},{entries}"


def resolve_secret(source: str | None, secrets: Mapping[str, bytes]) -> bytes:
    """The secret of the source named in ``X-Cancel-Source``."""
    if not source:
        raise SignatureError(
            SignatureFailure.MISSING_SOURCE, f"the {SOURCE_HEADER} header is missing"
        )
    secret = secrets.get(source)
    if secret is None:
        # Truncated: the name is attacker-controlled and goes into the response.
        raise SignatureError(
            SignatureFailure.UNKNOWN_SOURCE, f"source {source[:64]!r} is not configured here"
        )
    return secret


def parse_signature_header(value: str | None) -> SignatureHeader:
    if not value or not value.strip():
        raise SignatureError(
            SignatureFailure.MISSING_SIGNATURE, f"the {SIGNATURE_HEADER} header is missing"
        )
    if len(value) > _MAX_HEADER_CHARS:
        raise _malformed(f"longer than {_MAX_HEADER_CHARS} characters")
    timestamp: int | None = None
    signatures: list[bytes] = []
    for item in value.split(","):
        name, sep, text = item.strip().partition("=")
        if not sep:
            raise _malformed("expected comma-separated key=value pairs")
        if name == "t":
            if timestamp is not None:
                raise _malformed("more than one t=")
            if not (text.isascii() and text.isdigit()) or len(text) > _MAX_TIMESTAMP_DIGITS:
                raise _malformed("t= must be a unix time in whole seconds")
            timestamp = int(text)
        elif name == SCHEME:
            if len(text) != _HEX_DIGEST_CHARS:
                raise _malformed(f"{SCHEME}= must be {_HEX_DIGEST_CHARS} hex characters")
            try:
                signatures.append(bytes.fromhex(text))
            except ValueError:
                raise _malformed(f"{SCHEME}= must be hex") from None
            if len(signatures) > _MAX_SIGNATURES:
                raise _malformed(f"more than {_MAX_SIGNATURES} {SCHEME}= entries")
    if timestamp is None:
        raise _malformed("no t= timestamp")
    if not signatures:
        raise _malformed(f"no {SCHEME}= signature")
    return SignatureHeader(timestamp, tuple(signatures))


def check_timestamp(
    header: SignatureHeader, now: float, tolerance: int = TOLERANCE_SECONDS
) -> None:
    """Replay protection: refuse a timestamp more than ``tolerance`` seconds from ``now``."""
    skew = now - header.timestamp
    if skew > tolerance:
        raise SignatureError(
            SignatureFailure.EXPIRED_SIGNATURE,
            f"signature timestamp is {int(skew)} s old; at most {tolerance} s is accepted",
        )
    if -skew > tolerance:
        raise SignatureError(
            SignatureFailure.EXPIRED_SIGNATURE,
            f"signature timestamp is {int(-skew)} s in the future; "
            f"at most {tolerance} s is accepted (check the sender's clock)",
        )


def check_signature(header: SignatureHeader, secret: bytes, body: bytes) -> None:
    """Constant-time: one HMAC, compared with every ``v1`` entry by ``hmac.compare_digest``."""
    expected = _mac(secret, header.timestamp, body).digest()
    # No early exit: the time taken does not say which entry (if any) matched.
    matched = False
    for candidate in header.signatures:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError(
            SignatureFailure.INVALID_SIGNATURE,
            "no v1 signature matches the body and timestamp for this source",
        )


def _mac(secret: bytes, timestamp: int, body: bytes) -> hmac.HMAC:
    # Fed in two parts: the body is not copied into a joined buffer.
    mac = hmac.new(secret, f"{timestamp}.".encode("ascii"), hashlib.sha256)
    mac.update(body)
    return mac


def _malformed(why: str) -> SignatureError:
    return SignatureError(
        SignatureFailure.MALFORMED_SIGNATURE, f"the {SIGNATURE_HEADER} header is malformed: {why}"
    )
