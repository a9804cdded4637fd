"""What every provider adapter offers, and the HTTP facts they share.

A provider adapter makes *one* cancel attempt per ``cancel`` call (including whatever
confirmation read or token refresh that attempt needs) and either returns a
``CancelOutcome`` or raises a ``CancelError``. Retrying, rate limiting and time-boxing are
done around it (``consumer.core.retry``), the same way for every provider.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from consumer.core.errors import (
    AuthError,
    CancelError,
    ConflictError,
    InternalError,
    NetworkError,
    NotFoundError,
    ProviderTimeoutError,
    RateLimitedError,
    RejectedError,
    UnavailableError,
)

Lookup = Literal["id", "key"]
Outcome = Literal["cancelled", "already_cancelled"]


@dataclass(frozen=True, slots=True)
class CancelRequest:
    shipment_id: str
    idempotency_key: str
    reason: str | None = None
    lookup: Lookup | None = None


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    outcome: Outcome
    provider_status: str | None = None
    provider_request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """What a provider's error answer says, as that provider's module reads its body.

    Any part may be missing: a body may be empty, not JSON, or another shape altogether.
    """

    # The provider's error code (its enum value, an OAuth error, ...).
    code: str | None = None
    # Its human-readable explanation.
    message: str | None = None
    # The provider's id of the request; the ``x-request-id`` header when the body has none.
    request_id: str | None = None
    # The provider's error objects as they came, kept whole on the error.
    errors: tuple[dict[str, Any], ...] = ()


# How one provider reads the JSON object of its error answers. Each provider module has
# one, hands it to ``providers.http.send`` (the call's span) and reads its errors with it.
ErrorBodyReader = Callable[[dict[str, Any]], ErrorBody]


class Provider(Protocol):
    """One configured provider account."""

    @property
    def kind(self) -> str: ...

    async def cancel(self, request: CancelRequest) -> CancelOutcome:
        """Make one cancel attempt; raise a ``CancelError`` subclass on failure."""
        ...


def error_class_for_status(status: int) -> type[CancelError]:
    """The error category (``consumer.core.errors``) of an HTTP status, before any
    provider-specific refinement."""
    if status in (400, 422):
        return RejectedError
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFoundError
    if status == 409:
        return ConflictError
    if status == 429:
        return RateLimitedError
    if status in (408, 504):
        return ProviderTimeoutError
    if status >= 500:
        return UnavailableError
    return InternalError


# A provider's wait longer than this (or not a number at all) is taken as this: a garbled
# header must not park a shipment for a century, and an hour is long enough for any limit.
MAX_RETRY_AFTER_SECONDS = 3600.0


def parse_retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds to wait, from ``Retry-After`` (seconds or HTTP date) or ``X-RateLimit-Reset``,
    at most ``MAX_RETRY_AFTER_SECONDS``.

    ``X-RateLimit-Reset`` is a unix timestamp (MVMNT). Garbage yields ``None``: the
    backoff schedule then decides.
    """
    current = time.time() if now is None else now
    raw = headers.get("retry-after")
    if raw is not None:
        raw = raw.strip()
        try:
            return _bounded(float(raw))
        except ValueError:
            parsed = _parse_http_date(raw)
            if parsed is not None:
                return _bounded(parsed - current)
    reset = headers.get("x-ratelimit-reset")
    if reset is not None:
        try:
            return _bounded(float(reset) - current)
        except ValueError:
            return None
    return None


def _bounded(seconds: float) -> float | None:
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER_SECONDS, max(0.0, seconds))


def _parse_http_date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def transport_error(exc: httpx.TransportError, what: str) -> CancelError:
    """Map an httpx transport failure to our taxonomy (never leaking request headers)."""
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeoutError(f"{what}: no answer in time ({type(exc).__name__})")
    return NetworkError(f"{what}: {type(exc).__name__}")


# What a secret of only whitespace is told: never a usable credential, and what "${VAR}"
# gives when VAR is set to "" (config adds the variable's name to the message).
BLANK_SECRET = "must not be empty"


def refuse_blank_secret(value: Any) -> Any:
    """The check of every settings model's ``"*"`` field validator: only secrets are looked at."""
    if isinstance(value, SecretStr) and not value.get_secret_value().strip():
        raise ValueError(BLANK_SECRET)
    return value


class ProviderSettingsBase(BaseModel):
    """[providers.NAME]: the keys every provider account has; each kind adds its own."""

    # Each field's docstring is its description: what the configuration reference shows.
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    base_url: str = Field(pattern=r"^https?://")
    """Root URL of the provider's API, which request paths are appended to; http:// or
    https://."""
    timeout_seconds: float = Field(default=10.0, gt=0)
    """Time box of one HTTP call (connect and read), in seconds."""
    max_concurrency: int = Field(default=64, ge=1)
    """Calls in flight at once for this account, shared by all events."""
    rate_limit_per_minute: float | None = Field(default=None, gt=0)
    """Requests per minute this account sends at most, paced evenly and shared by all events;
    unset, no limit of our own (the provider's 429s are still honoured)."""

    @field_validator("*")
    @classmethod
    def _secrets_not_blank(cls, value: Any) -> Any:
        return refuse_blank_secret(value)
