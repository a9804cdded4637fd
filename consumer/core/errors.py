"""The error taxonomy of a shipment cancel.

Every failure that reaches a result event is a ``CancelError``; the runner and the retry
loop decide from the class (``retryable``), never from message strings::

    CancelError                      category, retryable, provider details
    ├── PermanentError               retryable = False: replaying will not help
    │   ├── InvalidEventError        invalid_event     the input event itself is bad
    │   ├── UnknownProviderError     unknown_provider  no such provider account configured
    │   ├── RejectedError            rejected          400 / 422
    │   ├── NotFoundError            not_found         404
    │   ├── ConflictError            conflict          409, delivered, label not voided
    │   ├── AuthError                auth              401 / 403, bad credentials
    │   └── InternalError            internal          a bug or an unreadable response
    └── TransientError               retryable = True: a later attempt may succeed
        ├── RateLimitedError         rate_limited      429
        ├── UnavailableError         unavailable       5xx
        ├── ProviderTimeoutError     timeout           the call did not answer in time
        └── NetworkError             network           connect / read / protocol errors
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class ErrorCategory(StrEnum):
    INVALID_EVENT = "invalid_event"
    UNKNOWN_PROVIDER = "unknown_provider"
    REJECTED = "rejected"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    NETWORK = "network"
    INTERNAL = "internal"


class CancelError(Exception):
    """A failed cancel, with everything the provider told us about it."""

    category: ClassVar[ErrorCategory] = ErrorCategory.INTERNAL
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        provider_code: str | None = None,
        provider_request_id: str | None = None,
        provider_errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.provider_code = provider_code
        self.provider_request_id = provider_request_id
        self.provider_errors = provider_errors or []
        # Seconds the provider asked us to wait before the next attempt, if it said so.
        self.retry_after = retry_after


class PermanentError(CancelError):
    retryable = False


class InvalidEventError(PermanentError):
    category = ErrorCategory.INVALID_EVENT


class UnknownProviderError(PermanentError):
    category = ErrorCategory.UNKNOWN_PROVIDER


class RejectedError(PermanentError):
    category = ErrorCategory.REJECTED


class NotFoundError(PermanentError):
    category = ErrorCategory.NOT_FOUND


class ConflictError(PermanentError):
    category = ErrorCategory.CONFLICT


class AuthError(PermanentError):
    category = ErrorCategory.AUTH


class InternalError(PermanentError):
    category = ErrorCategory.INTERNAL


class TransientError(CancelError):
    retryable = True


class RateLimitedError(TransientError):
    category = ErrorCategory.RATE_LIMITED


class UnavailableError(TransientError):
    category = ErrorCategory.UNAVAILABLE


class ProviderTimeoutError(TransientError):
    category = ErrorCategory.TIMEOUT


class NetworkError(TransientError):
    category = ErrorCategory.NETWORK


class ConfigError(Exception):
    """A configuration problem, reported to the operator as one line."""
